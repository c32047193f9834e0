"""Back-propagating the guidance step through ComfyUI's VAE decoder (rgb space): weights made
usable by autograd, gradient checkpointing or a tiled decode to bound memory, and room made on a GPU."""

from __future__ import annotations

import contextlib
import math

import torch

from .maths import LATENT_FACTOR, guidance_delta

# Peak memory of one rgb-space gradient per decoded pixel (fp32; measured on the CPU with
# scripts/benchmark_guidance.py, see docs/guidance.md), and the temporary copy of the decoder weights.
RGB_BYTES_PER_PIXEL = {"full": 25e3, "checkpoint": 9.5e3, "tiled": 8e3}
DECODER_WEIGHTS_BYTES = 200e6


@contextlib.contextmanager
def autograd_usable(*modules: torch.nn.Module):
    """ComfyUI creates weights under torch.inference_mode, and inference tensors cannot be saved for
    backward. For the duration of the block, every inference parameter/buffer of ``modules`` is
    replaced by a normal copy (a temporary copy of those weights; the originals are put back)."""
    swapped = []
    try:
        with torch.inference_mode(False):
            for root in modules:
                for module in root.modules():
                    for store in (module._parameters, module._buffers):
                        for name, value in list(store.items()):
                            if value is not None and value.is_inference():
                                copy = value.detach().clone()
                                if isinstance(value, torch.nn.Parameter):
                                    copy = torch.nn.Parameter(copy, requires_grad=False)
                                swapped.append((store, name, value))
                                store[name] = copy
        yield
    finally:
        for store, name, value in reversed(swapped):
            store[name] = value


_CHECKPOINT_CLASSES = ("ResnetBlock", "AttnBlock", "Upsample", "MemoryEfficientAttnBlock", "SDPAttnBlock")


@contextlib.contextmanager
def checkpointed(decoder: torch.nn.Module):
    """Gradient checkpointing of the decoder's residual, attention and upsampling blocks for the
    duration of the block: only each block's input is kept for backward and the block is recomputed
    during backward (same values, less memory). Keep backward inside the block."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    for module in decoder.modules():
        if type(module).__name__ not in _CHECKPOINT_CLASSES:
            continue
        original = module.forward

        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        had_own = "forward" in module.__dict__
        patched.append((module, had_own, original))
        module.forward = forward
    try:
        yield
    finally:
        for module, had_own, original in reversed(patched):
            if had_own:
                module.forward = original
            else:
                del module.forward


def tile_spans(size: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping cores of length <= core covering [0, size), each with its context window
    (start, end) extended by margin: [(core_start, core_end, window_start, window_end)]."""
    spans = []
    count = max(1, math.ceil(size / core))
    bounds = [round(i * size / count) for i in range(count + 1)]
    for a, b in zip(bounds, bounds[1:]):
        spans.append((a, b, max(0, a - margin), min(size, b + margin)))
    return spans


def make_room(vae, config, batch: int, height: int, width: int):
    """On a GPU, asks ComfyUI to offload models that this sampling run does not use (e.g. the text
    encoder) until the decoder back-propagation is likely to fit; models in use stay loaded."""
    import comfy.model_management as mm

    device = torch.device(vae.device)
    if device.type == "cpu":
        return
    memory = config.rgb_memory
    pixels = height * width
    if memory == "tiled":
        side = (config.rgb_tile + 2 * config.rgb_tile_margin) * LATENT_FACTOR
        pixels = min(pixels, side * side)
    dtype_size = torch.tensor([], dtype=vae.vae_dtype).element_size()
    need = batch * pixels * RGB_BYTES_PER_PIXEL[memory] * dtype_size / 4 + DECODER_WEIGHTS_BYTES * dtype_size / 4
    keep = [m for m in mm.current_loaded_models if getattr(m, "currently_used", False)]
    mm.free_memory(need, device, keep_loaded=keep)


def decoder_parts(fsm):
    parts = [fsm.decoder]
    for name in ("post_quant_conv", "bn"):
        part = getattr(fsm, name, None)
        if isinstance(part, torch.nn.Module):
            parts.append(part)
    return parts


def backward(pixels: torch.Tensor, delta: torch.Tensor):
    """pixels.backward(delta), rescaled for low-precision VAEs so small deltas do not underflow."""
    if pixels.dtype == torch.float32:
        pixels.backward(delta)
        return 1.0
    peak = float(delta.abs().max())
    norm = peak if peak > 0 else 1.0
    pixels.backward((delta / norm).to(pixels.dtype))
    return norm


def full_vjp(x0, model, fsm, goal, weight, scale, device, dtype):
    with torch.enable_grad():
        z = x0.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        pixels = fsm.decode(model.latent_format.process_out(z))
        delta, loss = guidance_delta(pixels.detach().float(), goal.to(device), None if weight is None
                                     else weight.to(device), scale)
        norm = backward(pixels, delta.to(device))
    return z.grad.float() * norm, loss


def tiled_vjp(x0, model, fsm, goal, weight, scale, device, dtype, tile: int, margin: int):
    """Decode-with-grad per tile: each tile's core pixels get the official per-pixel gradient
    (normalised by the whole image), the tile's margin gives the decoder its context. Cancel is checked
    per tile: a step may run many decoder passes."""
    import comfy.model_management

    h, w = x0.shape[-2:]
    f = LATENT_FACTOR
    grad = torch.zeros(x0.shape, dtype=torch.float32, device=device)
    numel = goal.shape[1] * goal.shape[2] * goal.shape[3]
    total = 0.0
    for cy0, cy1, wy0, wy1 in tile_spans(h, tile, margin):
        for cx0, cx1, wx0, wx1 in tile_spans(w, tile, margin):
            comfy.model_management.throw_exception_if_processing_interrupted()
            with torch.enable_grad():
                z = x0[..., wy0:wy1, wx0:wx1].detach().to(device=device, dtype=dtype).clone()
                z.requires_grad_(True)
                pixels = fsm.decode(model.latent_format.process_out(z))
                core = (slice(None), slice(None), slice((cy0 - wy0) * f, (cy1 - wy0) * f),
                        slice((cx0 - wx0) * f, (cx1 - wx0) * f))
                img = (slice(None), slice(None), slice(cy0 * f, cy1 * f), slice(cx0 * f, cx1 * f))
                pred = pixels.detach().float()[core].clone().requires_grad_(True)
                err = (pred - goal[img].to(device)).pow(2)
                if weight is not None:
                    err = err * weight[img].to(device)
                loss = err.sum() / numel
                delta = -torch.autograd.grad(loss, pred)[0] * scale
                full = torch.zeros_like(pixels, dtype=torch.float32)
                full[core] = delta
                norm = backward(pixels, full)
            total += float(loss.detach())
            grad[..., wy0:wy1, wx0:wx1] += z.grad.float() * norm
    return grad, total


def gradient(vae, config, x0, model, goal, weight, scale) -> tuple[torch.Tensor, float]:
    """-scale * dL/dx0 through the decoder (L: the official loss of the decoded x0 against ``goal``,
    the [-1,1] target pixels, weighted by ``weight`` or not), and the loss; memory bounded as
    ``config.rgb_memory`` says."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([vae.patcher])
    fsm = vae.first_stage_model
    device, dtype = vae.device, vae.vae_dtype
    memory = config.rgb_memory
    f = LATENT_FACTOR
    make_room(vae, config, x0.shape[0], x0.shape[-2] * f, x0.shape[-1] * f)
    with torch.inference_mode(False), autograd_usable(*decoder_parts(fsm)), \
            (checkpointed(fsm.decoder) if memory != "full" else contextlib.nullcontext()):
        goal = goal.clone()  # normal tensors (the cached target may have been made in inference mode)
        weight = None if weight is None else weight.clone()
        if memory == "tiled":
            return tiled_vjp(x0, model, fsm, goal, weight, scale, device, dtype, config.rgb_tile,
                             config.rgb_tile_margin)
        return full_vjp(x0, model, fsm, goal, weight, scale, device, dtype)
