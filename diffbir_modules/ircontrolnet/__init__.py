"""DiffBIR's IRControlNet: conditions a stock ComfyUI SD 2.x UNet (KSampler, KSamplerAdvanced,
SamplerCustomAdvanced) on a stage-1 image. One job per file:

- ``network``: the network (a ControlNet without a hint encoder) and its size read from the weights;
- ``loading``: reading a published file, telling the release, the loaded control object template;
- ``condition``: the stage-1 image encoded by the SD VAE as the network's condition;
- ``control``: the ComfyUI control object and finding it inside CONDITIONING.

The names below are the package's API; the nodes and the other modules use them.
"""

from .condition import PADDINGS, encode_condition, pad_bottom_right
from .control import (
    IRControlNetControl,
    control_chain_rebuilder,
    find_ircontrolnets,
    replace_ircontrolnets,
)
from .loading import (
    KNOWN_FINGERPRINTS,
    VERSIONS,
    extract_state_dict,
    fingerprint,
    identify_version,
    load_ircontrolnet,
    read_checkpoint,
)
from .network import (
    LATENT_CHANNELS,
    LATENT_SCALE,
    IRControlNet,
    IRControlNetConfig,
    IRControlNetError,
    config_from_state_dict,
)

__all__ = [
    "KNOWN_FINGERPRINTS", "LATENT_CHANNELS", "LATENT_SCALE", "PADDINGS", "VERSIONS", "IRControlNet",
    "IRControlNetConfig", "IRControlNetControl", "IRControlNetError", "config_from_state_dict",
    "control_chain_rebuilder",
    "encode_condition", "extract_state_dict", "find_ircontrolnets", "fingerprint",
    "identify_version", "load_ircontrolnet", "pad_bottom_right", "read_checkpoint", "replace_ircontrolnets",
]
