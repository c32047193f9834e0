"""The pack's ComfyUI nodes: thin V3 node classes that read inputs, call diffbir_modules, and return
ComfyUI types. Node ids are what saved workflows store: never rename one once published."""

from .color_fix import DiffBIRColorFix
from .guidance import DiffBIRGuidanceScales, DiffBIRImageGrid, DiffBIRRestorationGuidance

NODES = [
    DiffBIRColorFix,
    DiffBIRRestorationGuidance,
    DiffBIRGuidanceScales,
    DiffBIRImageGrid,
]
