"""The choices before a tiled pass: a VAE this package knows, valid tile sizes, the automatic tile,
the levels that replay to fit in memory, the devices that compute and park, and a warning where the
VAE's precision is emulated on this CPU."""

from __future__ import annotations

import logging
from collections.abc import Callable

import comfy.model_management
import psutil
import torch

from ..cpu_precision import emulated_on_this_cpu
from .segments import DOWN, UP, Segment, out_step, segment_steps

TILE_MULTIPLE = 64
MIN_TILE = 64
AUTO_TILES = (1024, 768, 512, 256, 128)  # px, largest first
# On a CPU, 1024 px tiles instead of 512 saved 6 % of the VAE's time at 2048 px (2 % of a restore) and
# held twice the memory (+6.4 instead of +3.3 GiB; docs/tiling.md): the automatic choice stops at 512.
# 256 px tiles at every level hold fewer tensors but were 7-9 % slower at 1024 px (0.3-3.6 % faster at 2048 px);
# at the full-resolution level alone they cost no time (CPU_FULL_RESOLUTION_TILE_MAX).
CPU_AUTO_TILE_MAX = 512
CPU_FULL_RESOLUTION_TILE_MAX = 256  # px: the tile of the full-resolution segments on a CPU (full_resolution_tile)
ENCODE_TILES_FROM = 1024  # px, longest side: from there a CPU fp32 encode takes tiles (tiles_beat_untiled)
GIB = 1024 ** 3

log = logging.getLogger("DiffBIR")


class TiledVAEError(ValueError):
    """Invalid tile settings or a VAE this package cannot tile; the message says what to do."""


def validate_tile(tile_size: int) -> None:
    if tile_size < 0:
        raise TiledVAEError("tile_size must be 0 (automatic) or positive")
    if tile_size and (tile_size < MIN_TILE or tile_size % TILE_MULTIPLE):
        raise TiledVAEError(f"VAE tile_size {tile_size} px is not valid: use 0 (automatic) or a multiple of "
                            f"{TILE_MULTIPLE} px, at least {MIN_TILE} (e.g. 256, 512, 1024)")


def warn_if_emulated(vae, what: str) -> None:
    """Warns where ComfyUI runs the VAE on a CPU in a half precision the CPU has no instructions for
    (``--bf16-vae`` or ``--fp16-vae`` without AVX-512 BF16 / AMX or AVX-512 FP16): PyTorch then computes it
    in software, 10-1000x slower than float32 (``cpu_precision.emulated_on_this_cpu``), so a pass that
    takes seconds in float32 can take hours and look hung. The pass still runs as asked."""
    dtype = vae.vae_dtype
    if torch.device(vae.device).type == "cpu" and emulated_on_this_cpu(dtype):
        flag = "--bf16-vae" if dtype == torch.bfloat16 else "--fp16-vae"
        name = str(dtype).removeprefix("torch.")
        log.warning("DiffBIR VAE %s: ComfyUI runs the VAE in %s on this CPU, which has no %s instructions, so "
                    "PyTorch emulates them: 10 to 1000 times slower than float32 (measured on such a CPU). "
                    "Start ComfyUI without %s (or with --fp32-vae).", what, name, name, flag)


def check_supported(vae) -> None:
    fsm = vae.first_stage_model
    dec, enc = getattr(fsm, "decoder", None), getattr(fsm, "encoder", None)
    ok = (dec is not None and enc is not None and hasattr(fsm, "post_quant_conv") and hasattr(fsm, "quant_conv")
          and getattr(fsm, "bn", None) is None and hasattr(dec, "up") and hasattr(enc, "down")
          and getattr(vae, "latent_dim", 2) == 2 and not getattr(dec, "give_pre_end", False))
    if ok:
        ok = all(len(level.attn) == 0 for level in dec.up) and all(len(level.attn) == 0 for level in enc.down)
    if not ok:
        raise TiledVAEError(f"this VAE ({type(fsm).__name__}) is not the SD KL autoencoder the exact tiled VAE knows "
                            "(SD 1.x/2.x/SDXL); use ComfyUI's VAE Decode (Tiled) / VAE Encode (Tiled) for it")



def _park_bytes(segment: Segment, elements: int, element_size: int, replay: bool) -> int:
    """Parked bytes while ``segment`` runs, ``elements`` per channel at its output resolution."""
    c_in, c_out = segment.channels
    if not replay:  # the resampled input at the first GroupNorm, then the block's h and shortcut
        return max(c_in, 2 * c_out) * elements * element_size
    inputs = elements // 4 if segment.resample == UP else elements * 4 if segment.resample == DOWN else elements
    return max(c_in * inputs, c_out * elements) * element_size


def _level_peaks(segments: list[Segment], steps: list[int], height: int, width: int, element_size: int,
                 replay: set[int]) -> dict[int, int]:
    """The largest parked bytes of each level, with the levels in ``replay`` replayed."""
    out: dict[int, int] = {}
    for segment, step in zip(segments, steps):
        size = _park_bytes(segment, (height // step) * (width // step), element_size, segment.level in replay)
        out[segment.level] = max(out.get(segment.level, 0), size)
    return out


def choose_replay(segments: list[Segment], steps: list[int], height: int, width: int, element_size: int,
                  budget: float) -> set[int]:
    """Levels to replay: none when lockstep's parked state fits ``budget`` bytes, else the level with
    the largest parked state, then the next, while that lowers the peak."""
    replay: set[int] = set()
    while True:
        current = _level_peaks(segments, steps, height, width, element_size, replay)
        worst = max(current.values())
        if worst <= budget or any(current[level] == worst for level in replay):
            return replay  # fits, or the largest is a replayed level already: replaying more cannot help
        replay |= {level for level, size in current.items() if size == worst}


def segment_owns(segments: list[Segment], start_step: int, owns: list, height: int, width: int,
                 full_resolution_owns: list | None = None) -> list[list]:
    """The own regions each segment runs with: the whole image as one tile where that segment's whole
    working size (channels x elements of its input and output) is no more than the largest a tile
    already takes at some segment, else ``owns``. Low-resolution levels have few elements per channel,
    so there one whole pass replaces the tiles and their halo recompute at no extra peak memory.
    ``full_resolution_owns``, where given, replaces ``owns`` for the segments with their input or output at
    full resolution (see ``full_resolution_tile``)."""
    tile_h = max(own[1] - own[0] for own in owns)
    tile_w = max(own[3] - own[2] for own in owns)

    def size(segment: Segment, step_in: int, h: int, w: int) -> int:
        step_out = out_step(step_in, segment.resample)
        c_in, c_out = segment.channels
        return max(c_in * (h // step_in) * (w // step_in), c_out * (h // step_out) * (w // step_out))

    steps = [start_step, *segment_steps(segments, start_step)][:-1]
    budget = max(size(segment, step, tile_h, tile_w) for segment, step in zip(segments, steps))
    whole = [(0, height, 0, width)]

    def regions(segment: Segment, step: int) -> list:
        if size(segment, step, height, width) <= budget:
            return whole
        if full_resolution_owns is not None and 1 in (step, out_step(step, segment.resample)):
            return full_resolution_owns
        return owns

    return [regions(segment, step) for segment, step in zip(segments, steps)]


def full_resolution_tile(tile: int, device: torch.device) -> int:
    """The tile (px) of the segments at full resolution, for a pass in ``tile`` px tiles. On a CPU at most
    CPU_FULL_RESOLUTION_TILE_MAX: there one tile's working tensors are the largest of the pass (256 channels
    per pixel around the decoder's last upsample: 0.27 GiB for a 512 px tile, on top of the parked maps of
    the other tiles), and smaller tiles there cost only their slightly larger halo share
    (docs/tiling.md). Elsewhere ``tile`` (not measured)."""
    return min(tile, CPU_FULL_RESOLUTION_TILE_MAX) if device.type == "cpu" else tile


def describe_tiles(owns: list, tile: int, fine: list, fine_tile: int, levels: set[int]) -> str:
    """How a pass runs, for the log: "in 4 exact tiles of 512 px (16 of 256 px at full resolution)"."""
    notes = [f"{len(fine)} of {fine_tile} px at full resolution"] if len(fine) != len(owns) else []
    if levels:
        notes.append(f"replaying levels {sorted(levels)} to save memory")
    return f"in {len(owns)} exact tiles of {tile} px" + (f" ({'; '.join(notes)})" if notes else "")


REPLAY_SHARE = 8  # lockstep may park up to 1/8 of the parking device's free memory; above, levels replay


def tile_layout(device: torch.device) -> torch.memory_format:
    """The tiles' memory layout. On a CPU channels-last: oneDNN's convolutions of the SD VAE ran
    1.04-2x faster in it than in the default layout (1.3x for the 128-channel full-resolution ones
    that dominate; docs/tiling.md), and ComfyUI's own encode already runs in it (its input is the
    IMAGE's [B, H, W, C] memory seen as [B, C, H, W]). Elsewhere the default layout (not measured)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def devices(vae):
    device = vae.device
    park = comfy.model_management.intermediate_device()
    if device.type == "cpu":
        park = device
    return device, park


def tiles_beat_untiled(vae, what: str, longest: int) -> bool:
    """Whether the automatic choice takes exact tiles for a ``what`` ("encode" / "decode") pass over an
    image whose longest side is ``longest`` px even though the whole image fits. On a CPU in fp32 (in
    a worker thread, as ComfyUI runs prompts; docs/tiling.md): the decode in tiles takes 0.78-0.94x
    ComfyUI's untiled time at 256-1024 px with half its peak or less, so it tiles whenever the image is
    larger than a tile; the encode in tiles is 8-10 % slower up to 512 px and 0.96x at 1024 px with
    0.58x the peak, so it tiles from ENCODE_TILES_FROM px. Other devices and dtypes are not measured:
    there both run untiled when the whole image fits."""
    if vae.device.type != "cpu" or vae.vae_dtype != torch.float32:
        return False
    return what == "decode" or longest >= ENCODE_TILES_FROM


def load_and_pick_tile(vae, memory: Callable[[int], float], tile_size: int, longest: int,
                       prefer_tiles: bool = False) -> int:
    """Loads the VAE (freeing ``memory(tile)`` bytes for the tile asked, or a 256 px one) and returns
    the explicit tile, or 0 (untiled) when the whole image fits (unless ``prefer_tiles``), else the
    largest automatic tile that fits. ``memory(0)``: the untiled pass."""
    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory(tile_size or 256))
    free = comfy.model_management.get_free_memory(vae.device)

    def fits(tile: int) -> bool:
        return memory(tile) < free

    if tile_size:
        return tile_size
    return automatic_tile(fits, longest, vae.device.type == "cpu", prefer_tiles)


def automatic_tile(fits: Callable[[int], bool], longest: int, on_cpu: bool, prefer_tiles: bool = False) -> int:
    """0 (untiled) when the whole image fits and tiles are not preferred, else the largest of AUTO_TILES
    that is smaller than the image's ``longest`` side and fits (on a CPU at most CPU_AUTO_TILE_MAX), else
    the smallest (the caller runs untiled when that covers the image)."""
    if fits(0) and not prefer_tiles:
        return 0
    for candidate in AUTO_TILES:
        if candidate < longest and fits(candidate) and not (on_cpu and candidate > CPU_AUTO_TILE_MAX):
            return candidate
    return AUTO_TILES[-1]


def _free_bytes(park: torch.device) -> float:
    """Free memory of the parking device as ComfyUI counts it, plus free swap where that is the CPU."""
    free = comfy.model_management.get_free_memory(park)
    if park.type == "cpu":
        free += psutil.swap_memory().free
    return free


def check_memory(what: str, segments: list[Segment], start_step: int, height: int, width: int, dtype,
                 park: torch.device, levels: set[int], other_bytes: int) -> None:
    """Refuses, before any work, a pass whose parked feature maps alone (with ``levels`` replayed) and
    ``other_bytes`` on the same device need more than the parking device's free memory and swap. The
    exact method keeps a full-resolution map whole (512 bytes per pixel in fp32, replayed), far more
    than any other stage; counted without the tiles' own working memory, this is a lower bound of the
    need, so only a pass that cannot finish is refused. Without it, on a CPU, the kernel's out-of-memory
    killer would end the whole ComfyUI process part-way, losing the queue."""
    need = max(_level_peaks(segments, segment_steps(segments, start_step), height, width,
                            comfy.model_management.dtype_size(dtype), levels).values()) + other_bytes
    free = _free_bytes(park)
    if need > free:
        memory = {"cpu": "CPU", "cuda": "GPU"}.get(park.type, park.type)
        instead = ("; or decode with ComfyUI's 'VAE Decode (Tiled)', which needs far less memory but normalises "
                   "each tile on its own (colour and contrast can shift between tiles)") if what == "decode" else ""
        raise TiledVAEError(
            f"DiffBIR exact tiled VAE {what}: a {width}x{height} px image needs at least {need / GIB:.1f} GiB of "
            f"{memory} memory (it keeps one full-resolution feature map whole so that every GroupNorm sees the "
            f"whole image), and {free / GIB:.1f} GiB are free (with swap). Free memory (close other programs, "
            f"unload models) or restore a smaller image (a smaller upscale){instead}")


def replay_levels(what: str, segments, start_step: int, height: int, width: int, dtype, park, replay,
                  other_bytes: int) -> set[int]:
    """The levels a pass replays, after ``check_memory`` (``what`` and ``other_bytes`` are its) has
    refused a pass whose parked maps cannot fit even so. ``replay``: None = chosen from the parking
    device's free memory; True/False = every level / none; or the levels themselves (0 = full
    resolution)."""
    levels = {segment.level for segment in segments}
    if isinstance(replay, bool):
        levels = levels if replay else set()
    elif replay is not None:
        levels = set(replay) & levels
    else:
        budget = comfy.model_management.get_free_memory(park) / REPLAY_SHARE
        levels = choose_replay(segments, segment_steps(segments, start_step), height, width,
                               comfy.model_management.dtype_size(dtype), budget)
    check_memory(what, segments, start_step, height, width, dtype, park, levels, other_bytes)
    return levels
