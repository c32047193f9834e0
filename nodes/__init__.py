"""The pack's ComfyUI nodes: thin V3 node classes that read inputs, call diffbir_modules, and return
ComfyUI types. Node ids are what saved workflows store: never rename one once published."""

from .color_fix import DiffBIRColorFix
from .stage1 import DiffBIRDegradationRemoval, DiffBIRStage1Loader

NODES = [
    DiffBIRColorFix,
    DiffBIRStage1Loader,
    DiffBIRDegradationRemoval,
]
