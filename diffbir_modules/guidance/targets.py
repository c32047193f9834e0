"""What the guidance pulls toward: the stage-1 image zero-padded to the sampled size, its pixel
weight map and (latent space) its VAE posterior, cached per VAE for a sweep over scales."""

from __future__ import annotations

import hashlib
import weakref

import torch
import torch.nn.functional as F

from .maths import PAD_MULTIPLE, GuidanceError, official_weight_map

# VAE posteriors of recent targets (a sweep runs the guidance node once per scale with the same image),
# per VAE. Keyed on the VAE's module object, held weakly: entries go with their VAE, and a new VAE
# that happens to reuse a freed one's memory address never sees its posteriors (as an id() key could).
_POSTERIORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
POSTERIORS_KEPT = 4  # per VAE


def pad_to(rgb: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero padding at the bottom and right (the official pad_to_multiples_of)."""
    h, w = rgb.shape[-2:]
    if (h, w) == (height, width):
        return rgb.clone()
    return F.pad(rgb, (0, width - w, 0, height - h), mode="constant", value=0)


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


class Target:
    """The stage-1 image as a guidance target for one padded pixel size: the [-1,1] image, its pixel
    weight map, and (latent space) the VAE posterior (mean, std) of the padded image. Kept on the CPU;
    ``on`` hands out copies on the sampling device for one sampling run (``forget_devices`` after it)."""

    def __init__(self, rgb01: torch.Tensor, height: int, width: int):
        self.height, self.width = height, width
        self.padded01 = pad_to(rgb01, height, width)
        self.pixels = self.padded01 * 2 - 1  # official cond_fn.target = pad_clean * 2 - 1
        self.pixel_weight = official_weight_map((self.pixels + 1) / 2)  # official: _get_weight((target + 1) / 2)
        self.mean = self.std = None
        self._device_cache = {}

    def on(self, device, name: str, make):
        key = (name, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = make().to(device)
        return self._device_cache[key]

    def forget_devices(self) -> None:
        """Drops the copies ``on`` made: a patched MODEL outlives its prompt in ComfyUI's cache, and GPU
        memory it held would be outside ComfyUI's model management."""
        self._device_cache.clear()


def vae_posterior(vae, target: Target, latent_target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior (mean, std) of the target's padded image, float32 on the CPU (unscaled latent),
    through the exact tiled encoder: untiled where it fits, exact tiles where it does not, ComfyUI's
    memory management either way."""
    from .. import tiled_vae

    fsm = vae.first_stage_model
    image = target.padded01.movedim(1, -1)
    if not (hasattr(fsm, "encoder") and hasattr(fsm, "quant_conv")):
        if latent_target == "posterior_sample":
            raise GuidanceError("this VAE does not expose its posterior (encoder + quant_conv): use "
                                "latent_target 'mode'")
        mean = vae.encode(image).float().cpu()
        return mean, torch.zeros_like(mean)
    mean, logvar = torch.chunk(tiled_vae.encode(vae, image, moments=True).float().cpu(), 2, dim=1)
    return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))


def image_digest(image: torch.Tensor) -> str:
    """A content key of a target image: its bytes' sha1 and shape."""
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest() + str(tuple(image.shape))


def cached_posterior(vae, digest: str, target: Target, latent_target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``vae_posterior`` of ``target``'s pixels, computed once per VAE, image and size."""
    per_vae = _POSTERIORS.setdefault(vae.first_stage_model, {})
    key = (digest, target.height, target.width, latent_target)
    if key not in per_vae:
        per_vae[key] = vae_posterior(vae, target, latent_target)
        while len(per_vae) > POSTERIORS_KEPT:
            per_vae.pop(next(iter(per_vae)))
    return per_vae[key]
