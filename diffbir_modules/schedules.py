"""DiffBIR's noise schedules, computed the way the official code computes them (float64 numpy).

Pure numpy/torch (no ComfyUI): the training betas of every version, the zero-terminal-SNR rescale of
v2.1, IDDPM respacing with the posterior coefficients of the official ``spaced`` sampler, and the
timestep/sigma table of the official ``edm_*`` samplers.

Facts (DiffBIR's ``diffbir/model/gaussian_diffusion.py``, ``sampler/spaced_sampler.py``,
``sampler/edm_sampler.py``, v2.0's ``utils/sampler.py``):
- betas: ldm "linear" = ``linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2``;
- v1 / v2: eps-prediction on those betas; v2.1: v-prediction on the zero-terminal-SNR rescale
  (Lin et al. 2023): alphas_cumprod[999] == 0 exactly, so sigma(999) is infinite;
- ``spaced``: the used timesteps from ``space_timesteps(1000, str(steps))``, respaced betas
  ``1 - acp[t_i] / acp[t_{i-1}]``, "fixed_small" posterior variance; the official code stores all of
  its coefficient tables as float32 buffers (computed in float64 first);
- EDM: timesteps ``linspace(999, 0, steps, endpoint=False).astype(int)``, ``acp`` at those timesteps
  with the first one forced to 1e-8 (sigma 1e4, for every version), ``sigma = sqrt((1 - acp) / acp)``,
  then 0 appended (with timestep 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012
EDM_FIRST_ALPHA_CUMPROD = 1e-8  # the official EDM sampler forces acp of its first timestep to this

# version -> (prediction type, zero terminal SNR)
VERSIONS = {
    "v1": ("eps", False),
    "v2": ("eps", False),
    "v2.1": ("v", True),
}


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown DiffBIR version {version!r}; expected one of {', '.join(VERSIONS)}")
    return version


def linear_betas(num_timesteps: int = NUM_TIMESTEPS, linear_start: float = LINEAR_START,
                 linear_end: float = LINEAR_END) -> np.ndarray:
    """ldm's "linear" schedule (linear in sqrt(beta)), float64."""
    return np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2


def enforce_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shifts and rescales sqrt(alphas_cumprod) so that the last one is exactly 0 and the first one
    is unchanged (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed");
    returns the new betas (float64, the last one 1.0)."""
    # torch float64, in the order the reference notebook (and DiffBIR) compute it: bit-identical
    sqrt_acp = torch.cumprod(1.0 - torch.as_tensor(np.asarray(betas, dtype=np.float64)), dim=0).sqrt()
    first, last = sqrt_acp[0].clone(), sqrt_acp[-1].clone()
    sqrt_acp = (sqrt_acp - last) * (first / (first - last))
    acp = sqrt_acp**2
    alphas = torch.cat([acp[0:1], acp[1:] / acp[:-1]])
    return (1.0 - alphas).numpy()


def official_betas(version: str) -> np.ndarray:
    prediction, zsnr = VERSIONS[check_version(version)]
    betas = linear_betas()
    return enforce_zero_terminal_snr(betas) if zsnr else betas


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64), axis=0)


def official_alphas_cumprod(version: str) -> np.ndarray:
    """The 1000 training alphas_cumprod of ``version`` (float64; exactly 0 at t=999 for v2.1)."""
    return alphas_cumprod_from_betas(official_betas(version))


def sigmas_from_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    """k-diffusion sigmas sqrt((1 - acp) / acp) (inf where acp == 0)."""
    acp = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - acp) / acp)


def alphas_cumprod_from_sigmas(sigmas) -> np.ndarray:
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return 1.0 / (sigmas * sigmas + 1.0)


# -- IDDPM respacing (the official "spaced" sampler) ------------------------------------------------
def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """The timesteps IDDPM's respacing keeps (sorted): ``section_counts`` is a step count, a
    comma-separated string of counts per equal section, or "ddimN" (DDIM's integer stride)."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {wanted} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start = 0
    kept = set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} timesteps into {count} steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))  # Python's round, as in IDDPM
            position += stride
        start += size
    return sorted(kept)


@dataclass(frozen=True)
class SpacedSchedule:
    """The official respaced DDPM schedule; arrays are float64, index i <-> model timestep
    ``timesteps[i]`` (ascending; the sampler walks i = n-1 .. 0)."""

    timesteps: np.ndarray  # int64, ascending
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    posterior_variance: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.sqrt(1.0 / self.alphas_cumprod)

    @property
    def sqrt_recipm1_alphas_cumprod(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.sqrt(1.0 / self.alphas_cumprod - 1.0)

    def __len__(self) -> int:
        return len(self.timesteps)


def respaced_schedule(training_alphas_cumprod, timesteps) -> SpacedSchedule:
    """The respaced DDPM schedule over ``timesteps`` (any subset of the training timesteps):
    respaced betas, cumulative products and the "fixed_small" posterior q(x_{t-1} | x_t, x_0)."""
    acp_train = np.asarray(training_alphas_cumprod, dtype=np.float64)
    used = sorted({int(t) for t in timesteps})
    if not used or used[0] < 0 or used[-1] >= len(acp_train):
        raise ValueError(f"timesteps must lie in [0, {len(acp_train) - 1}], got {used[:3]}...{used[-3:]}")
    betas = []
    last = 1.0
    for t in used:  # the official loop walks the training table in order
        betas.append(1.0 - acp_train[t] / last)
        last = acp_train[t]
    betas = np.array(betas, dtype=np.float64)
    alphas = 1.0 - betas
    acp = np.cumprod(alphas, axis=0)
    acp_prev = np.append(1.0, acp[:-1])
    posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
    coef1 = betas * np.sqrt(acp_prev) / (1.0 - acp)
    coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
    return SpacedSchedule(np.array(used, dtype=np.int64), betas, acp, acp_prev, posterior_variance, coef1, coef2)


def official_spaced_schedule(version: str, steps: int) -> SpacedSchedule:
    return respaced_schedule(official_alphas_cumprod(version), space_timesteps(NUM_TIMESTEPS, str(steps)))


# -- the official EDM table -----------------------------------------------------------------------
def edm_timesteps(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """``linspace(999, 0, steps, endpoint=False).astype(int)``: e.g. 10 -> [999, 899, ..., 99]."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return np.linspace(num_timesteps - 1, 0, steps, endpoint=False).astype(int)


def edm_schedule(training_alphas_cumprod, steps: int, first_alpha_cumprod: float | None = EDM_FIRST_ALPHA_CUMPROD
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas, timesteps) of the official EDM sampler, both with ``steps + 1`` entries: the first
    acp forced to ``first_alpha_cumprod`` (official: 1e-8, sigma 1e4; None keeps the table's own),
    the last entry sigma 0 / timestep 0. float64 / int64."""
    acp_train = np.asarray(training_alphas_cumprod, dtype=np.float64)
    timesteps = edm_timesteps(steps, len(acp_train))
    acp = acp_train[timesteps].copy()
    if first_alpha_cumprod is not None:
        acp[0] = first_alpha_cumprod
    with np.errstate(divide="ignore"):
        sigmas = ((1.0 - acp) / acp) ** 0.5
    return np.append(sigmas, 0.0), np.append(timesteps, 0).astype(np.int64)


def official_edm_schedule(version: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    return edm_schedule(official_alphas_cumprod(version), steps)


# -- condition noise augmentation -----------------------------------------------------------------
def q_sample(x_start: torch.Tensor, t: int, noise: torch.Tensor, training_alphas_cumprod) -> torch.Tensor:
    """x_t = sqrt(acp[t]) x_0 + sqrt(1 - acp[t]) noise, with the coefficients rounded to float32
    first as the official ``Diffusion`` buffers are (``--noise_aug``: the condition latent)."""
    acp = float(np.asarray(training_alphas_cumprod, dtype=np.float64)[int(t)])
    a = torch.tensor(np.sqrt(acp), dtype=torch.float32).to(x_start)
    b = torch.tensor(np.sqrt(1.0 - acp), dtype=torch.float32).to(x_start)
    return a * x_start + b * noise.to(x_start)
