"""Region-adaptive restoration guidance (DiffBIR v2.0, "RG"; v1's "latent image guidance").

During sampling the predicted clean latent x0 is pulled toward the stage-1 result: with ``w_mse`` the
pull is weighted by a map that is ~1 where the stage-1 image is flat and ~0 on edges and texture, so
flat regions follow the stage-1 image while details stay free to be generated.

Official v2.0 (``utils/cond_fn.py``, ``utils/sampler.py::SpacedSampler.apply_cond_fn``), per step of
its respaced DDPM sampler, when ``t_stop < t + 1 < t_start``, ``repeat`` times::

    L     = sum_b mean_chw( W * (pred - target)^2 )   (W = 1 for mse)
    delta = -(g_scale * 3000) * dL/dpred
    x0   += delta / posterior_mean_coef1               (the posterior mean moves by exactly delta)

``latent`` space: pred = x0, target = VAE-encoded stage-1 image (posterior *sample*, re-drawn every
repeat). ``rgb`` space: pred = VAE-decode(x0), target = stage-1 image in [-1, 1], and delta is
back-propagated through the decoder. W (``official_weight_map``): Sobel magnitude of the gray
stage-1 image, summed over 2x2 blocks, ``1 - tanh``.

This module applies the same rule as a ComfyUI MODEL patch (a post-CFG function on the denoised x0):
- under DiffBIR's spaced sampler (``transformer_options["diffbir_step"]`` present) with exactly the
  official ``1 / posterior_mean_coef1``;
- under any k-diffusion sampler with the x0 shift that moves that step's x by the same amount
  (``step_factor``; derivation in docs/guidance.md), so a scale means the same strength everywhere;
- with a step-count normalisation (``reference_steps``) so the total strength does not depend on
  the number of steps (the official rule adds one full shift per step, whatever the step count).

Deliberate differences from the official code, each with a switch (see docs/guidance.md):
``w_mse`` in latent space works (the official code crashes there; W is computed in pixel space and
averaged over each latent cell's 8x8 pixels); the latent target defaults to the posterior mode
(deterministic; ``latent_target="posterior_sample"`` draws as the official code does); rgb space
bounds its memory with gradient checkpointing of the decoder (exact) or a tiled decode.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import uuid

import torch

from . import rgb_backward, targets
from .maths import (
    LATENT_FACTOR,
    PAD_MULTIPLE,
    RUN_KEY,
    SCALE_MULTIPLIER,
    STEP_KEY,
    WINDOW_KEY,
    GuidanceConfig,
    GuidanceError,
    guidance_delta,
    latent_weight_map,
    timestep_bounds,
)
from .steps import OFFICIAL_EDM_KINDS, discrete_timestep, kdiffusion_factor, sampler_kind, step_of, step_weight
from .targets import Target, padded_size

log = logging.getLogger("DiffBIR")


class RestorationGuidance:
    """The guidance of one patched MODEL: the stage-1 target, the VAE and the options. Call
    ``patch(model)`` for the patched clone; the patch is ``post_cfg`` (a sampler_post_cfg_function)
    plus a SAMPLER_SAMPLE wrapper that learns the sampler and seed of every run."""

    def __init__(self, vae, image_rgb01: torch.Tensor, config: GuidanceConfig, noise_source=None):
        config.check()
        if image_rgb01.ndim != 4 or image_rgb01.shape[1] != 3:
            raise GuidanceError(f"the target must be an RGB image batch [B,3,H,W], got {tuple(image_rgb01.shape)}")
        bad = (~torch.isfinite(image_rgb01)).sum().item()
        if bad:
            raise GuidanceError(f"the target (stage-1) image has {bad} NaN or infinite values; fix the node that "
                                "produced it (restoration guidance would spread them into every step)")
        self.vae = vae
        self.config = config
        # not clipped: the official v2.0 target is the stage-1 output as it is (pad_clean * 2 - 1)
        self.image = image_rgb01.detach().float().cpu()
        self.key = uuid.uuid4().hex
        self.noise_source = noise_source  # tests: callable(shape) -> posterior noise
        self._targets: dict[tuple[int, int], Target] = {}
        self._fallback_run = None
        self._digest = None
        self.last_losses: list[tuple[int, float]] = []

    # -- targets ----------------------------------------------------------------------------------
    def target(self, height: int, width: int) -> Target:
        """The target for a sampled image of height x width pixels (the latent size x 8)."""
        h, w = self.image.shape[-2:]
        if height < h or width < w or height - h >= PAD_MULTIPLE or width - w >= PAD_MULTIPLE:
            raise GuidanceError(
                f"restoration guidance: the sampled latent is for a {width}x{height} image but the target (stage-1) "
                f"image is {w}x{h}. Connect the same stage-1 image that DiffBIR Apply IRControlNet encoded and "
                "sample its LATENT output (the image zero-padded to a multiple of 64), or resize the target "
                "to the latent's size x 8.")
        key = (height, width)
        if key not in self._targets:
            self._targets[key] = Target(self.image, height, width)
        target = self._targets[key]
        if self.config.space == "latent" and target.mean is None:
            target.mean, target.std = targets.cached_posterior(self.vae, self._image_digest(), target,
                                                               self.config.latent_target)
        return target

    def _image_digest(self) -> str:
        if self._digest is None:
            self._digest = targets.image_digest(self.image)
        return self._digest

    def prepare(self):
        """Precomputes the target for the official padding (multiple of 64) at node time."""
        h, w = self.image.shape[-2:]
        self.target(*padded_size(h, w))

    # -- the patch --------------------------------------------------------------------------------
    def patch(self, model):
        """A clone of the ModelPatcher ``model`` with this guidance attached (scale 0: a plain clone)."""
        import comfy.patcher_extension

        m = model.clone()
        if self.config.scale == 0:
            return m
        m.set_model_sampler_post_cfg_function(self.post_cfg)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "diffbir_guidance_" + self.key,
                               self.sampler_wrapper)
        if self.config.space == "rgb" or self.config.latent_target == "posterior_sample":
            m.set_additional_models("diffbir_guidance_" + self.key, [self.vae.patcher])
        return m

    def sampler_wrapper(self, executor, guider, sigmas, extra_args, *args, **kwargs):
        """SAMPLER_SAMPLE wrapper: a fresh run state (sampler kind, eta, seed) for every sampling run."""
        sampler = getattr(executor, "class_obj", None)
        function = getattr(sampler, "sampler_function", None)
        options = dict(getattr(sampler, "extra_options", None) or {})
        name = getattr(function, "__name__", "") or ""
        if name == "sample_edm_official" and "solver" in options:
            kind = OFFICIAL_EDM_KINDS.get(options["solver"], "ode")
        else:
            kind = sampler_kind(name)
        eta = options.get("eta")
        if eta is None and function is not None:
            with contextlib.suppress(TypeError, ValueError):
                parameter = inspect.signature(function).parameters.get("eta")
                if parameter is not None and isinstance(parameter.default, (int, float)):
                    eta = parameter.default
        run = self._new_run(kind=kind, eta=1.0 if eta is None else float(eta), seed=extra_args.get("seed"),
                            sampler=name)
        transformer_options = extra_args.setdefault("model_options", {}).setdefault("transformer_options", {})
        runs = dict(transformer_options.get(RUN_KEY) or {})
        runs[self.key] = run
        transformer_options[RUN_KEY] = runs
        try:
            return executor(guider, sigmas, extra_args, *args, **kwargs)
        finally:
            for target in self._targets.values():
                target.forget_devices()

    def _new_run(self, kind="ode", eta=1.0, seed=None, sampler="") -> dict:
        self.last_losses = []
        return {"kind": kind, "eta": eta, "seed": seed, "sampler": sampler, "generator": None, "weight": None,
                "losses": self.last_losses}

    def _run(self, transformer_options: dict) -> dict:
        run = (transformer_options.get(RUN_KEY) or {}).get(self.key)
        if run is None:
            if self._fallback_run is None:
                log.warning("DiffBIR restoration guidance: no sampler information for this run (the model was "
                            "called outside ComfyUI's sampler); assuming a first-order ODE sampler")
                self._fallback_run = self._new_run()
            run = self._fallback_run
        return run

    def step_factor(self, sigma: torch.Tensor, transformer_options: dict, model_sampling, run: dict
                    ) -> tuple[int, torch.Tensor | float]:
        """(model timestep, x0 multiplier of the official delta) for this model evaluation."""
        sample_sigmas = transformer_options.get("sample_sigmas")
        if run["weight"] is None:
            run["weight"] = step_weight(sample_sigmas, model_sampling, self.config.reference_steps)
        weight = run["weight"]
        step = transformer_options.get(STEP_KEY)
        if step is not None:  # DiffBIR's spaced sampler: exactly the official grad_rescale
            rescale = 1 / torch.tensor(step["posterior_mean_coef1"], dtype=torch.float32)
            return int(step["t"]), (rescale if weight == 1.0 else rescale * weight)
        s = sigma.reshape(-1)[:1].float()
        t = int(round(discrete_timestep(model_sampling, s)))
        s = float(s)
        if sample_sigmas is None:
            sigma_next = 0.0
        else:
            sigma_next = float(sample_sigmas[min(step_of(sample_sigmas, s) + 1, len(sample_sigmas) - 1)])
        return t, weight * kdiffusion_factor(s, sigma_next, run["kind"], run["eta"])

    def active(self, t: int) -> bool:
        low, high = timestep_bounds(self.config.start_percent, self.config.end_percent)
        return low <= t <= high

    def post_cfg(self, args: dict) -> torch.Tensor:
        """sampler_post_cfg_function: the guided x0."""
        import comfy.model_management

        denoised = args["denoised"]
        if self.config.scale == 0:
            return denoised
        model = args["model"]
        transformer_options = (args.get("model_options") or {}).get("transformer_options") or {}
        run = self._run(transformer_options)
        t, factor = self.step_factor(args["sigma"], transformer_options, model.model_sampling, run)
        if not self.active(t):
            return denoised
        with torch.inference_mode(False), torch.no_grad():
            x0 = denoised.detach().clone()
            if isinstance(factor, torch.Tensor):
                factor = factor.to(x0.device)
            parts = self._windows(x0, transformer_options)
            losses = []
            for _ in range(self.config.repeat):
                comfy.model_management.throw_exception_if_processing_interrupted()  # repeats of decoder passes
                deltas, loss = [], 0.0
                for rows, window in parts:
                    delta, part_loss = self.delta(x0[rows], model, window, transformer_options, run)
                    deltas.append(delta)
                    loss += part_loss
                losses.append(loss)
                delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas)
                x0 = x0 + delta.to(x0.dtype) * factor
            run["losses"].append((t, sum(losses) / len(losses)))
        return x0

    @staticmethod
    def _windows(x0: torch.Tensor, transformer_options: dict) -> list[tuple[slice, tuple | None]]:
        """(batch rows, latent window) pairs of this evaluation. Normally one pair covering the whole
        latent (guidance runs after CFG on the full latent, also under DiffBIR's tiled sampling). A
        wrapper that calls the sampling function per window passes the pack's tiling convention:
        ``diffbir_window`` = (y0, y1, x0, x1) in latent pixels, or a list of them for windows stacked
        along the batch, with ``diffbir_tiles["latent_shape"]`` the full latent's shape."""
        window = transformer_options.get(WINDOW_KEY)
        if window is None:
            return [(slice(None), None)]
        tiles = transformer_options.get("diffbir_tiles") or {}
        shape = tiles.get("latent_shape")
        if shape is None:
            raise GuidanceError("restoration guidance: diffbir_window without diffbir_tiles['latent_shape'] (the "
                                "full latent's shape); a windowing wrapper must pass both")
        full = (int(shape[-2]), int(shape[-1]))
        windows = [window] if len(window) == 4 and all(isinstance(v, int) for v in window) else list(window)
        if x0.shape[0] % len(windows):
            raise GuidanceError(f"restoration guidance: {len(windows)} windows for a batch of {x0.shape[0]}")
        per = x0.shape[0] // len(windows)
        return [(slice(i * per, (i + 1) * per), (*(int(v) for v in w), *full)) for i, w in enumerate(windows)]

    # -- one gradient step ------------------------------------------------------------------------
    def _locate(self, x0: torch.Tensor, window) -> tuple[Target, tuple[int, int, int, int], float]:
        """The target for x0's full image, x0's latent region inside it and the loss normaliser
        (x0's share of the full image: 1 unless a wrapper evaluates windows)."""
        h, w = x0.shape[-2:]
        if window is not None:
            y0, y1, x_0, x_1, full_h, full_w = window
            if (y1 - y0, x_1 - x_0) != (h, w) or y0 < 0 or x_0 < 0 or y1 > full_h or x_1 > full_w:
                raise GuidanceError(f"restoration guidance: window {window[:4]} of a {full_h}x{full_w} latent does "
                                    f"not match a {h}x{w} evaluation")
            top, left = y0, x_0
        else:
            full_h, full_w, top, left = h, w, 0, 0
        target = self.target(full_h * LATENT_FACTOR, full_w * LATENT_FACTOR)
        return target, (top, left, h, w), (h * w) / (full_h * full_w)

    def _batch(self, tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise GuidanceError(f"restoration guidance: the {what} has a batch of {tensor.shape[0]} and the latent a "
                            f"batch of {batch}; use one target image or one per latent")

    def _posterior_noise(self, x0: torch.Tensor, transformer_options: dict, run: dict) -> torch.Tensor:
        if self.noise_source is not None:
            return self.noise_source(tuple(x0.shape)).to(x0)
        step = transformer_options.get(STEP_KEY) or {}
        sampler_noise = step.get("noise_sampler")
        if callable(sampler_noise):  # the spaced sampler's own stream: the official draw order
            return sampler_noise(None, None).to(x0)
        if run["generator"] is None:
            generator = torch.Generator(device="cpu")
            seed = run["seed"]
            generator.manual_seed((int(seed) if seed is not None else 0) + 0x5EED)
            run["generator"] = generator
        return torch.randn(tuple(x0.shape), generator=run["generator"], dtype=torch.float32).to(x0)

    def delta(self, x0, model, window, transformer_options, run) -> tuple[torch.Tensor, float]:
        """-g_scale * 3000 * dL/dx0 at x0 (latent: direct; rgb: through the VAE decoder)."""
        target, (top, left, h, w), share = self._locate(x0, window)
        scale = self.config.scale * SCALE_MULTIPLIER
        batch = x0.shape[0]
        use_weight = self.config.loss == "w_mse"
        if self.config.space == "latent":
            region = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
            mean = self._batch(target.on(x0.device, "mean", lambda: target.mean), batch, "target image")[region]
            if self.config.latent_target == "posterior_sample":
                std = self._batch(target.on(x0.device, "std", lambda: target.std), batch, "target image")[region]
                # official: vae.encode(target).sample() * scale_factor, one draw per repeat
                latent = mean.float() + std.float() * self._posterior_noise(mean.float(), transformer_options, run)
            else:
                latent = mean.float()
            goal = model.latent_format.process_in(latent)
            weight = None
            if use_weight:
                weight = target.on(x0.device, "latent_weight", lambda: latent_weight_map(target.pixel_weight))
                weight = self._batch(weight, batch, "target image")[region]
            delta, loss = guidance_delta(x0.float(), goal, weight, scale)
            return delta * share, loss
        return self._rgb_delta(x0, model, target, (top, left, h, w), share, scale, batch, use_weight)

    def _rgb_delta(self, x0, model, target, region, share, scale, batch, use_weight):
        top, left, h, w = region
        f = LATENT_FACTOR
        pix_region = (slice(None), slice(None), slice(top * f, (top + h) * f), slice(left * f, (left + w) * f))
        goal = self._batch(target.on(x0.device, "pixels", lambda: target.pixels), batch, "target image")[pix_region]
        weight = None
        if use_weight:
            weight = self._batch(target.on(x0.device, "pixel_weight", lambda: target.pixel_weight), batch,
                                 "target image")[pix_region]
        grad, loss = rgb_backward.gradient(self.vae, self.config, x0, model, goal, weight, scale)
        return grad.to(x0.device, torch.float32) * share, loss
