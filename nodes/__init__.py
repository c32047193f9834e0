"""The pack's ComfyUI nodes: thin V3 node classes that read inputs, call diffbir_modules, and return
ComfyUI types. Node ids are what saved workflows store: never rename one once published."""

from .color_fix import DiffBIRColorFix, DiffBIRResizeToOutputSize
from .compare import DiffBIRBeforeAfter
from .degradation import DiffBIRSynthesizeDegradation
from .faces import DiffBIRFaceDetectAlign, DiffBIRFaceDetectorLoader, DiffBIRFaceParserLoader, DiffBIRFacePasteBack
from .guidance import DiffBIRGuidanceScales, DiffBIRImageGrid, DiffBIRRestorationGuidance
from .ircontrolnet import DiffBIRApplyIRControlNet, DiffBIRCropToStage1, DiffBIRIRControlNetLoader
from .presets import DiffBIRPresetLoader
from .prompts import DiffBIRDefaultPrompts, DiffBIRTextEncode
from .sampling import (
    DiffBIRConditionNoiseAugment,
    DiffBIRDDIMSampler,
    DiffBIRDDIMSigmas,
    DiffBIRDPMSolverSampler,
    DiffBIRDPMSolverSigmas,
    DiffBIREDMSampler,
    DiffBIREDMSigmas,
    DiffBIRModelSampling,
    DiffBIRRescaleCFG,
    DiffBIRSpacedSampler,
    DiffBIRSpacedSigmas,
)
from .stage1 import DiffBIRDegradationRemoval, DiffBIRStage1Loader
from .tiled_vae import DiffBIRVAEDecodeTiled, DiffBIRVAEEncodeTiled
from .tiling import DiffBIRTiledSampling

NODES = [
    # stage 1: degradation removal
    DiffBIRStage1Loader,
    DiffBIRDegradationRemoval,
    # stage 2: IRControlNet
    DiffBIRIRControlNetLoader,
    DiffBIRApplyIRControlNet,
    DiffBIRCropToStage1,
    DiffBIRColorFix,
    DiffBIRResizeToOutputSize,
    DiffBIRBeforeAfter,
    # sampling: official schedules, samplers and prompts
    DiffBIRModelSampling,
    DiffBIRSpacedSigmas,
    DiffBIRSpacedSampler,
    DiffBIREDMSigmas,
    DiffBIREDMSampler,
    DiffBIRDDIMSigmas,
    DiffBIRDDIMSampler,
    DiffBIRDPMSolverSigmas,
    DiffBIRDPMSolverSampler,
    DiffBIRRescaleCFG,
    DiffBIRConditionNoiseAugment,
    DiffBIRDefaultPrompts,
    DiffBIRTextEncode,
    # faces
    DiffBIRFaceDetectorLoader,
    DiffBIRFaceDetectAlign,
    DiffBIRFaceParserLoader,
    DiffBIRFacePasteBack,
    # restoration guidance
    DiffBIRRestorationGuidance,
    DiffBIRGuidanceScales,
    DiffBIRImageGrid,
    # tiling for large images
    DiffBIRTiledSampling,
    DiffBIRVAEEncodeTiled,
    DiffBIRVAEDecodeTiled,
    # convenience
    DiffBIRPresetLoader,
    DiffBIRSynthesizeDegradation,
]
