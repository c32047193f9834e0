"""Developer kit shared by the tests, the scripts and the tools: the in-process ComfyUI test bed, the
random-weight test models and the golden fixtures' helpers. Not part of the pack: nothing under
__init__.py, nodes/ or diffbir_modules/ imports it."""
