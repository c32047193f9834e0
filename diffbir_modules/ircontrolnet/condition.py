"""The IRControlNet's condition: the stage-1 image encoded by the SD VAE (posterior mode x 0.18215),
padded as the official code pads it."""

from __future__ import annotations

import torch

from .network import LATENT_CHANNELS, LATENT_SCALE, IRControlNetError

PADDINGS = {
    "64": "pad the image to a multiple of 64 (official, untiled)",
    "8+latent8": "pad the image to a multiple of 8 and the latent to a multiple of 8 (official, tiled VAE encoder)",
    "8": "pad the image to a multiple of 8, not the latent (official, tiled diffusion)",
}


def pad_bottom_right(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pads NCHW at the bottom/right to a multiple of ``multiple`` (DiffBIR's pad_to_multiples_of)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)


def encode_condition(vae, rgb: torch.Tensor, padding: str = "64", tile_size: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition latent x 0.18215, the same latent unscaled as a LATENT holds it) for a stage-1
    image ``rgb`` (NCHW in [0,1]). ComfyUI's VAE.encode returns the posterior mode (unscaled).
    ``tile_size``: None = ComfyUI's VAE.encode; an int goes to the exact tiled encoder
    (``tiled_vae.encode``: 0 = tiles only when the image does not fit in memory; same result)."""
    if padding not in PADDINGS:
        raise IRControlNetError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    if getattr(vae, "latent_channels", LATENT_CHANNELS) != LATENT_CHANNELS or vae.spacial_compression_encode() != 8:
        raise IRControlNetError(
            f"the VAE has {vae.latent_channels} latent channels and compresses "
            f"{vae.spacial_compression_encode()}x; the IRControlNet needs the SD 2.x VAE (4 channels, 8x). Connect the "
            "VAE output of the SD 2.1 checkpoint loader.")
    pixels = pad_bottom_right(rgb, 64 if padding == "64" else 8)
    if tile_size is None:
        latent = vae.encode(pixels.movedim(1, -1)).float().cpu()
    else:
        from .. import tiled_vae

        latent = tiled_vae.encode(vae, pixels.movedim(1, -1), tile_size).float().cpu()
    if padding == "8+latent8":
        latent = pad_bottom_right(latent, 8)
    return latent * LATENT_SCALE, latent
