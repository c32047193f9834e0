"""The pack's ComfyUI nodes: thin V3 node classes that read inputs, call diffbir_modules, and return
ComfyUI types. Node ids are what saved workflows store: never rename one once published."""

from .color_fix import DiffBIRColorFix
from .degradation import DiffBIRSynthesizeDegradation
from .guidance import DiffBIRGuidanceScales, DiffBIRImageGrid, DiffBIRRestorationGuidance
from .ircontrolnet import DiffBIRApplyIRControlNet, DiffBIRCropToStage1, DiffBIRIRControlNetLoader
from .presets import DiffBIRPresetLoader
from .prompts import DiffBIRDefaultPrompts, DiffBIRTextEncode
from .sampling import (
    DiffBIRConditionNoiseAugment,
    DiffBIREDMSampler,
    DiffBIREDMSigmas,
    DiffBIRModelSampling,
    DiffBIRSpacedSampler,
    DiffBIRSpacedSigmas,
)
from .stage1 import DiffBIRDegradationRemoval, DiffBIRStage1Loader
from .tiling import DiffBIRTiledSampling, DiffBIRVAEDecodeTiled, DiffBIRVAEEncodeTiled

NODES = [
    DiffBIRColorFix,
    DiffBIRPresetLoader,
    DiffBIRSynthesizeDegradation,
    DiffBIRStage1Loader,
    DiffBIRDegradationRemoval,
    DiffBIRIRControlNetLoader,
    DiffBIRApplyIRControlNet,
    DiffBIRCropToStage1,
    # sampling: official schedules and samplers
    DiffBIRModelSampling,
    DiffBIRSpacedSigmas,
    DiffBIRSpacedSampler,
    DiffBIREDMSigmas,
    DiffBIREDMSampler,
    DiffBIRConditionNoiseAugment,
    DiffBIRDefaultPrompts,
    DiffBIRTextEncode,
    # restoration guidance
    DiffBIRRestorationGuidance,
    DiffBIRGuidanceScales,
    DiffBIRImageGrid,
    # tiling for large images
    DiffBIRTiledSampling,
    DiffBIRVAEEncodeTiled,
    DiffBIRVAEDecodeTiled,
]
