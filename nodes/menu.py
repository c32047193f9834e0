"""Where the pack's nodes sit in the web UI's node library and how search finds them: one ``DiffBIR/``
tree ordered by the stages of a restoration, so a user reads it top to bottom as the workflow runs."""

PRESETS = "DiffBIR/0 presets"
STAGE1 = "DiffBIR/1 stage 1"
CONTROL = "DiffBIR/2 control"
SAMPLING = "DiffBIR/3 sampling"
GUIDANCE = "DiffBIR/3 sampling/restoration guidance"
OUTPUT = "DiffBIR/4 colour and output"
FACES = "DiffBIR/faces"
TILING = "DiffBIR/tiling"
TESTING = "DiffBIR/testing"

TREE = (PRESETS, STAGE1, CONTROL, SAMPLING, GUIDANCE, OUTPUT, FACES, TILING, TESTING)

# The words people type for what the pack does; every user-facing node carries them besides its own.
RESTORE = ["diffbir", "restore", "restoration", "upscale", "super resolution", "denoise", "sharpen", "enhance"]


def search(*words: str, restore: bool = False) -> dict:
    """The ``io.Schema`` search-alias field (``**menu.search(...)``), for runtimes that know it; ``restore``
    adds the pack-wide words."""
    from ..diffbir_modules import comfy_compat

    return comfy_compat.schema_fields(search_aliases=[*(RESTORE if restore else []), *words])
