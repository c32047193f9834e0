"""DiffBIR's networks and algorithms, in plain torch.

Nodes call into this package; nothing here imports ``nodes``. Modules that build on ComfyUI's own
blocks (``comfy.ops``, ModelPatcher) import ``comfy`` themselves; the rest is pure torch.
"""
