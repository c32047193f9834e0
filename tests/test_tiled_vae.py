"""The exact tiled VAE: tiled encode/decode equal the untiled ones to float rounding (the full-size SD
VAE of the tiny checkpoint, random weights), the margins follow the network, bad tile sizes."""

import copy
import logging

import pytest
import torch

from devkit.live_memory import LiveTensorBytes

H, W = 64, 320  # five 64 px tiles in a row: the middle ones have real margins on both sides


@pytest.fixture(scope="module")
def tv(comfy):
    return comfy.pack_module("diffbir_modules.tiled_vae")


@pytest.fixture(scope="module")
def vae(comfy, sd2_tiny):
    with torch.inference_mode():
        return comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[2]


def photo_like(h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 16, w // 16, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic").clamp(0, 1) * 0.85
    return (img + torch.rand(1, 3, h, w, generator=g) * 0.15).movedim(1, -1).contiguous()


@pytest.fixture(scope="module")
def encoded(vae):
    image = photo_like()
    with torch.inference_mode():
        return image, vae.encode(image)


def test_tiled_encode_equals_untiled(comfy, tv, vae, encoded):
    image, untiled = encoded
    with torch.inference_mode():
        tiled = comfy.node_class("DiffBIRVAEEncodeTiled").execute(vae, image, 64).result[0]["samples"]
    assert tiled.shape == untiled.shape == (1, 4, H // 8, W // 8)
    assert (tiled - untiled).abs().max() < 1e-4 * untiled.abs().max()


def test_moments_hold_the_mode_encode_returns(tv, vae, encoded):
    """``moments=True`` (restoration guidance's posterior): quant_conv's output, the mean then the
    log-variance; the mean is the mode ``encode`` returns, untiled the same bits, in exact tiles to the
    same float rounding as the mode."""
    image, untiled = encoded
    with torch.inference_mode():
        whole = tv.encode(vae, image, 0, moments=True)  # the test image fits: untiled
        tiled = tv.encode(vae, image, 64, moments=True)
    assert whole.shape == tiled.shape == (1, 8, H // 8, W // 8) and whole.dtype == torch.float32
    assert torch.equal(whole[:, :4], untiled)
    assert (tiled - whole).abs().max() < 1e-4 * whole.abs().max()
    assert whole[:, 4:].std() > 0  # a log-variance map, not a copy of the mean
    assert not torch.allclose(whole[:, 4:], whole[:, :4])


def test_encode_node_takes_gray_and_rgba_as_the_other_nodes_do(comfy, vae, encoded):
    """Gray becomes RGB and alpha is left out (as VAE Encode, stage 1 and the colour fix take them)."""
    image, untiled = encoded
    node = comfy.node_class("DiffBIRVAEEncodeTiled")
    gray = image[..., :1]
    rgba = torch.cat([image, torch.full_like(image[..., :1], 0.5)], dim=-1)
    with torch.inference_mode():
        from_gray = node.execute(vae, gray, 0).result[0]["samples"]
        expected = node.execute(vae, gray.expand(-1, -1, -1, 3).contiguous(), 0).result[0]["samples"]
        from_rgba = node.execute(vae, rgba, 0).result[0]["samples"]
    assert torch.equal(from_gray, expected)
    assert torch.equal(from_rgba, untiled)


@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (1, 4, 2, 8, 8), (4, 8, 8)])
def test_decode_node_names_a_latent_of_another_kind(comfy, vae, shape):
    with pytest.raises(ValueError, match=r"DiffBIR VAE Decode \(exact tiles\): the latent has shape .* but this VAE "
                                         r"decodes \[batch, 4, height, width\] latents"):
        comfy.node_class("DiffBIRVAEDecodeTiled").execute(vae, {"samples": torch.zeros(shape)}, 0)


def test_tiled_decode_equals_untiled(comfy, tv, vae, encoded):
    _, latent = encoded
    with torch.inference_mode():
        untiled = vae.decode(latent)
        tiled = comfy.node_class("DiffBIRVAEDecodeTiled").execute(vae, {"samples": latent}, 64).result[0]
    assert tiled.shape == untiled.shape == (1, H, W, 3)
    assert (tiled - untiled).abs().max() < 1e-4


@pytest.fixture(scope="module")
def square(vae):
    """A 192 px photo-like image in 3 x 3 tiles of 64 px (a middle tile with neighbours on all sides)."""
    image = photo_like(192, 192, seed=1)
    with torch.inference_mode():
        return image, vae.encode(image)


@pytest.mark.parametrize("part", ["encode", "decode"])
def test_replay_equals_lockstep_and_parks_less(tv, vae, square, part):
    """Replaying a level (only each segment's input parked, its GroupNorm statistics from extra passes)
    gives the lockstep result exactly and parks about half as much: about one full-resolution
    128-channel map instead of two (the bound that keeps a 2048 px image within 1.3x the memory of a
    1024 px one on a CPU, docs/tiling.md)."""
    image, latent = square
    results, peaks = {}, {}
    for replay in (False, True):
        meter = tv.engine.Meter()
        with torch.inference_mode():
            if part == "encode":
                results[replay] = tv.encode(vae, image, 64, progress=False, replay=replay, meter=meter)
            else:
                results[replay] = tv.decode(vae, latent, 64, progress=False, replay=replay, meter=meter)
        peaks[replay] = meter.peak_bytes
    assert torch.equal(results[True], results[False])
    full_map = 128 * 192 * 192 * 4  # one 128-channel fp32 map at full resolution
    assert peaks[False] > 1.9 * full_map
    # plus the neighbours' halo strips copied out while a map is consumed: 2-6 elements per side of a
    # 64 px tile here (about 1/8 more), 1/50 at 512 px
    assert peaks[True] < 1.25 * full_map, (peaks, full_map)


# The pack's own memory arithmetic (exact tensor counts), the same on every runtime: default runtime only
# in CI (the equality tests above and below run on each).
@pytest.mark.once
@pytest.mark.parametrize("part", ["encode", "decode"])
def test_tiles_hold_one_working_copy_at_a_time(tv, vae, part, monkeypatch):
    """All the tensors alive at once in a lockstep pass, counted exactly (live_memory), in full-resolution
    128-channel maps: the parked floor is two maps (a block's input and its first conv's output), the
    rest one tile's working tensors. What keeps that small: a resumed tile normalises in place where
    nothing else needs the tensor, applies a channel-changing shortcut first so that its input can be
    normalised in place, adds the residual in place, and the decoder's upsample convolves one output
    phase at a time. Measured here (384 px in 128 px tiles): before those 2.774 maps (decode) and
    2.360 (encode), with them 2.507 and 2.244, and 2.444 for the decode once its first map (the mid block's
    output) was no longer held after its regrid; at 1024 px in the automatic 512 px tiles the decode went
    from 3.18 to 2.63 maps (1.59 to 1.31 GiB)."""
    image = photo_like(384, 384, seed=2)  # 3 x 3 tiles of 128 px
    with torch.inference_mode():
        latent = vae.encode(image)
    # the GroupNorm moments' float64 chunks in proportion to these tiles (a 512 px tile: 64 chunks)
    monkeypatch.setattr(tv.engine, "MOMENT_CHUNK", 2**16)
    fsm = vae.first_stage_model
    counter = LiveTensorBytes(existing=[*fsm.parameters(), image, latent])
    with torch.inference_mode(), counter:
        if part == "encode":
            tv.encode(vae, image, 128, progress=False, replay=False)
        else:
            tv.decode(vae, latent, 128, progress=False, replay=False)
    maps = counter.peak / (128 * 384 * 384 * 4)
    # the counts are exact (no allocator noise): the bounds sit just above today's figures
    assert 2 < maps < {"encode": 2.28, "decode": 2.55}[part], maps


@pytest.mark.once  # as above: the pack's memory arithmetic
@pytest.mark.parametrize("part", ["encode", "decode"])
def test_full_resolution_runs_in_smaller_tiles_on_a_cpu(tv, vae, part, monkeypatch, caplog):
    """On a CPU the segments at full resolution take tiles of at most CPU_FULL_RESOLUTION_TILE_MAX px
    (scaled down here: 384 px in 192 px tiles, 128 px at full resolution): the same bits, fewer tensors
    alive at once (one tile's working tensors are the largest there)."""
    image = photo_like(384, 384, seed=3)
    with torch.inference_mode():
        latent = vae.encode(image)
    monkeypatch.setattr(tv.engine, "MOMENT_CHUNK", 2**16)  # in proportion to these tiles, as above
    fsm = vae.first_stage_model
    results, peaks, tiles = {}, {}, {}
    real_run_tiled = tv.engine.run_tiled
    for full_resolution in (1024, 128):  # 1024: no smaller tiles for a 192 px tile
        monkeypatch.setattr(tv.planning, "CPU_FULL_RESOLUTION_TILE_MAX", full_resolution)
        seen = []
        monkeypatch.setattr(tv.decoder if part == "decode" else tv.encoder, "run_tiled",
                            lambda *args, seen=seen: seen.append(len(args[-1])) or real_run_tiled(*args))
        counter = LiveTensorBytes(existing=[*fsm.parameters(), image, latent])
        with torch.inference_mode(), counter:
            if part == "encode":
                results[full_resolution] = tv.encode(vae, image, 192, progress=False, replay=False)
            else:
                results[full_resolution] = tv.decode(vae, latent, 192, progress=False, replay=False)
        peaks[full_resolution], tiles[full_resolution] = counter.peak / (128 * 384 * 384 * 4), seen
    assert tiles == {1024: [4], 128: [9]}  # the full-resolution tiles handed to the engine
    assert f"DiffBIR VAE {part}: 384x384 px in 4 exact tiles of 192 px (9 of 128 px at full resolution)" in caplog.text
    assert torch.equal(results[1024], results[128])
    # exact counts, in 128-channel full-resolution maps; measured 2.321 -> 2.244 (encode) and 2.629 -> 2.444
    # (decode): the bounds sit just inside those gains
    assert peaks[128] < peaks[1024] - {"encode": 0.07, "decode": 0.17}[part], peaks


def test_full_resolution_tile(tv):
    assert tv.planning.full_resolution_tile(512, torch.device("cpu")) == tv.planning.CPU_FULL_RESOLUTION_TILE_MAX
    assert tv.planning.full_resolution_tile(128, torch.device("cpu")) == 128
    assert tv.planning.full_resolution_tile(512, torch.device("cuda")) == 512  # not measured off the CPU


def test_replay_chosen_from_free_memory(tv, vae):
    dec = vae.first_stage_model.decoder
    segments = tv.segments.decoder_segments(dec)
    steps = tv.segments.segment_steps(segments, 8)
    assert steps[-1] == 1 and steps[0] == 8
    full_map = 128 * 2048 * 2048 * 4
    assert tv.planning.choose_replay(segments, steps, 2048, 2048, 4, budget=4 * full_map) == set()
    assert tv.planning.choose_replay(segments, steps, 2048, 2048, 4, budget=1.5 * full_map) == {0}
    # replayed, full resolution parks one 128-channel map; level 1 in lockstep parks as much: no gain
    assert tv.planning.choose_replay(segments, steps, 2048, 2048, 4, budget=0) == {0}
    enc_segments = tv.segments.encoder_segments(vae.first_stage_model.encoder)
    enc_steps = tv.segments.segment_steps(enc_segments, 1)
    assert enc_steps[0] == 1 and enc_steps[-1] == 8
    assert tv.planning.choose_replay(enc_segments, enc_steps, 2048, 2048, 4, budget=1.5 * full_map) == {0}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_own_region_moments_are_float64_exact(tv, layout, monkeypatch):
    """A tile's own-region GroupNorm moments (its own rows in float64 chunks, less the halo columns)
    match float64 moments of the own region in either memory layout, also for data offset far from
    zero, where PyTorch's float32 channels-last kernel loses 2e-5 of the variance at an offset of 3."""
    monkeypatch.setattr(tv.engine, "MOMENT_CHUNK", 64 * 24 * 3)  # 3 rows per chunk: 6 chunks merged
    g = torch.Generator().manual_seed(0)
    worst_mean = worst_var = 0.0
    for offset in (0.0, 3.0, 10.0):
        t = torch.randn(1, 64, 20, 24, generator=g) * (torch.rand(1, 64, 1, 1, generator=g) * 2) + offset
        t = t.contiguous(memory_format=layout)
        rows, cols = slice(2, 18), slice(3, 21)  # halo of 2-3 on every side: an inner tile
        n, mean, m2 = tv.engine._own_moments(t, rows, cols, 32)
        ref = t[..., rows, cols].double().reshape(1, 32, -1)
        assert n == ref.shape[-1]
        std = ref.std(-1, unbiased=False)
        worst_mean = max(worst_mean, float(((mean - ref.mean(-1)).abs() / std).max()))
        worst_var = max(worst_var, float(((m2 / n - std ** 2).abs() / std ** 2).max()))
    print(f"own-region moments: mean error {worst_mean:.1e} std, variance error {worst_var:.1e} relative")
    # measured at most 6.2e-15 (mean, in standard deviations) and 8.7e-13 (variance, relative): float64
    # rounding. Bound 1e-11, far below the float32 rounding of the convolutions around a GroupNorm
    assert worst_mean < 1e-11 and worst_var < 1e-11


def test_tiles_stay_channels_last_on_the_cpu(tv, vae, square):
    """On a CPU every convolution of the tiled part runs in channels-last (oneDNN's faster kernels
    there, docs/tiling.md): an input it takes for the default layout would be copied and run on the
    slower kernels, which a stray reshape or copy in the engine would cause without changing a value."""
    image, latent = square
    layouts = []

    def record(module, inputs, output):
        layouts.append(output.is_contiguous(memory_format=torch.channels_last) and not output.is_contiguous())

    fsm = vae.first_stage_model
    convs = [m for part in (fsm.encoder.down, fsm.decoder.up) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(record) for m in convs]
    try:
        with torch.inference_mode():
            tv.encode(vae, image, 64, progress=False)
            tv.decode(vae, latent, 64, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(layouts) > len(convs) and all(layouts)


def test_small_levels_run_whole_without_raising_the_tile_working_size(tv, vae):
    """Where a whole low-resolution level takes no more than a tile already does elsewhere, its
    segments run as one tile (no halo recompute); the full-resolution levels stay tiled."""
    dec, enc = vae.first_stage_model.decoder, vae.first_stage_model.encoder
    owns = tv.tiles.tile_regions(512, 512, 256)
    whole = [(0, 512, 0, 512)]
    segments = tv.segments.decoder_segments(dec)
    plan = tv.planning.segment_owns(segments, 8, owns, 512, 512)
    # decoder, 256 px tiles of a 512 px image: 1/8 and 1/4 (512 channels) whole, 1/2 and full tiled
    by_level = {}
    for segment, segment_owns in zip(segments, plan):
        by_level.setdefault(segment.level, set()).add(len(segment_owns))
    assert by_level == {3: {1}, 2: {1}, 1: {4}, 0: {4}}
    assert all(p in (whole, owns) for p in plan)
    enc_segments = tv.segments.encoder_segments(enc)
    enc_plan = tv.planning.segment_owns(enc_segments, 1, owns, 512, 512)
    # encoder: full and 1/2 tiled; at 1/4 the downsampling segment (its input is at 1/2) stays tiled
    assert [len(p) for p in enc_plan] == [4, 4, 4, 4, 4, 1, 1, 1]
    # one tile of the whole image: nothing to change
    assert tv.planning.segment_owns(segments, 8, whole, 512, 512) == [whole] * len(segments)
    # smaller tiles at full resolution: the decoder's last level (and its upsample into it), the encoder's
    # first level and the downsample out of it; nothing else changes
    fine = tv.tiles.tile_regions(512, 512, 128)
    fine_plan = tv.planning.segment_owns(segments, 8, owns, 512, 512, fine)
    assert [p is fine for p in fine_plan] == [s.level == 0 for s in segments]
    assert [p for p, s in zip(fine_plan, segments) if s.level] == [p for p, s in zip(plan, segments) if s.level]
    enc_fine = tv.planning.segment_owns(enc_segments, 1, owns, 512, 512, fine)
    assert [len(p) for p in enc_fine] == [16, 16, 16, 4, 4, 1, 1, 1]


def test_automatic_tile_stops_at_512_px_on_a_cpu(tv):
    """Untiled when it fits; else the largest tile that fits and is smaller than the image, on a CPU at
    most 512 px (1024 px tiles held twice the memory there for 6 % less VAE time)."""
    pick = tv.planning.automatic_tile
    everything = lambda tile: True  # noqa: E731
    tiles_only = lambda tile: tile != 0  # noqa: E731
    assert pick(everything, 4096, on_cpu=True) == pick(everything, 4096, on_cpu=False) == 0
    assert pick(tiles_only, 4096, on_cpu=False) == 1024
    assert pick(tiles_only, 4096, on_cpu=True) == 512
    assert pick(tiles_only, 600, on_cpu=True) == pick(tiles_only, 600, on_cpu=False) == 512
    assert pick(lambda tile: 0 < tile <= 256, 4096, on_cpu=True) == 256
    assert pick(lambda tile: False, 4096, on_cpu=True) == 128


def test_automatic_decode_takes_exact_tiles_on_a_cpu_in_fp32(tv, vae, encoded, monkeypatch):
    """On a CPU in fp32 the exact tiles decode faster than ComfyUI's untiled pass and with half its
    peak (docs/tiling.md), so the automatic decode tiles whenever the image is larger than a tile (here
    320 px: 256 px tiles); where that is not so (other devices, dtypes) it runs untiled when it fits."""
    import types

    _, latent = encoded
    assert tv.planning.tiles_beat_untiled(vae, "decode", 320)  # the test VAE: fp32 on the CPU
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        other = types.SimpleNamespace(device=torch.device(device), vae_dtype=dtype)
        assert not tv.planning.tiles_beat_untiled(other, "decode", 4096)
        assert not tv.planning.tiles_beat_untiled(other, "encode", 4096)
    pick = tv.planning.automatic_tile
    assert pick(lambda tile: True, 512, on_cpu=True, prefer_tiles=True) == 256
    assert pick(lambda tile: True, 1024, on_cpu=True, prefer_tiles=True) == 512
    assert pick(lambda tile: True, 128, on_cpu=True, prefer_tiles=True) == 128  # covers it: runs untiled
    with torch.inference_mode():
        automatic, untiled = tv.decode(vae, latent, 0), vae.decode(latent)
        assert torch.equal(automatic, tv.decode(vae, latent, 256))
        assert not torch.equal(automatic, untiled) and (automatic - untiled).abs().max() < 1e-4
        monkeypatch.setattr(tv.decoder, "tiles_beat_untiled", lambda *args: False)
        whole = tv.decode(vae, latent, 0)
        assert torch.equal(whole, untiled)
        # as the tiled path returns it: float32 in one block (core's own is a channels-last view)
        assert whole.dtype == torch.float32 and whole.is_contiguous() and not untiled.is_contiguous()


def test_automatic_encode_takes_exact_tiles_on_a_cpu_in_fp32_from_1024_px(tv, vae, encoded, monkeypatch):
    """On a CPU in fp32 ComfyUI's untiled encode is faster below 1024 px and the exact tiles from there
    (with 0.58x its peak; docs/tiling.md): the automatic encode of the 320 px test image runs untiled,
    and with the threshold lowered to its size it takes the same tiles as an explicit 256 px tile."""
    image, _ = encoded
    assert not tv.planning.tiles_beat_untiled(vae, "encode", tv.planning.ENCODE_TILES_FROM - 1)
    assert tv.planning.tiles_beat_untiled(vae, "encode", tv.planning.ENCODE_TILES_FROM)
    with torch.inference_mode():
        untiled = vae.encode(image)
        assert torch.equal(tv.encode(vae, image, 0), untiled)
        monkeypatch.setattr(tv.planning, "ENCODE_TILES_FROM", max(image.shape[1:3]))
        automatic = tv.encode(vae, image, 0)
        assert torch.equal(automatic, tv.encode(vae, image, 256))
        assert not torch.equal(automatic, untiled)


@pytest.mark.parametrize("part", ["encode", "decode"])
def test_untiled_pass_moves_the_bar_per_block_and_stops_on_cancel(tv, vae, encoded, part, monkeypatch):
    """ComfyUI's untiled encode / decode (what runs when the image fits, for a decode where tiles are
    not preferred) reports one step per resblock of the network and stops at the next block once the
    user presses Cancel."""
    from comfy import model_management as mm
    from comfy import utils as comfy_utils

    monkeypatch.setattr(tv.decoder, "tiles_beat_untiled", lambda *args: False)

    image, latent = encoded
    batch = torch.cat([image, image]) if part == "encode" else torch.cat([latent, latent])
    fsm = vae.first_stage_model
    blocks = len(tv.network.encoder_blocks(fsm.encoder) if part == "encode" else tv.network.decoder_blocks(fsm.decoder))
    run = (lambda: tv.encode(vae, batch, 0)) if part == "encode" else (lambda: tv.decode(vae, batch, 0))
    # Newer ComfyUI throttles what reaches the hook; older releases have no throttle. Off: every step.
    monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0, raising=False)
    monkeypatch.setattr(comfy_utils, "PROGRESS_THROTTLE_MIN_PERCENT", 0.0, raising=False)
    updates = []
    previous = comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        with torch.inference_mode():
            run()
        # 2 images x the resblocks, in as many forwards as ComfyUI splits the batch into
        assert updates[-1] == (2 * blocks, 2 * blocks) and len(updates) >= blocks
        assert [v for v, _ in updates] == sorted(set(v for v, _ in updates))

        def cancel_after_first(value, total, preview, node_id=None):
            updates.append((value, total))
            mm.interrupt_current_processing(True)

        updates.clear()
        comfy_utils.set_progress_bar_global_hook(cancel_after_first)
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            run()
        assert len(updates) == 1
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
        mm.interrupt_current_processing(False)
    # the hooks are gone: a plain ComfyUI call afterwards reports nothing
    updates.clear()
    with torch.inference_mode():
        vae.decode(latent)
    assert updates == []


@pytest.mark.parametrize("dtype,flag", [(torch.bfloat16, "--bf16-vae"), (torch.float16, "--fp16-vae")])
@pytest.mark.parametrize("emulated", [True, False])
def test_a_half_precision_vae_that_this_cpu_emulates_is_named_in_a_warning(comfy, vae, dtype, flag, emulated,
                                                                         monkeypatch, caplog):
    # what ComfyUI started with --bf16-vae / --fp16-vae holds; the check reads only the VAE's dtype and device
    planning = comfy.pack_module("diffbir_modules.tiled_vae.planning")
    precision = comfy.pack_module("diffbir_modules.cpu_precision")
    monkeypatch.setattr(precision, "native_bf16", lambda: not emulated)
    monkeypatch.setattr(precision, "native_fp16", lambda: not emulated)
    half = copy.copy(vae)
    half.vae_dtype = dtype
    with caplog.at_level(logging.WARNING, logger="DiffBIR"):
        planning.warn_if_emulated(half, "decode")
        planning.warn_if_emulated(vae, "encode")  # float32: never
    if emulated:
        assert "DiffBIR VAE decode" in caplog.text and f"Start ComfyUI without {flag}" in caplog.text
        assert "encode" not in caplog.text
    else:
        assert caplog.text == ""


def test_every_vae_pass_checks_for_emulated_precision(comfy, tv, vae, encoded, monkeypatch):
    checked = []
    for module in ("encoder", "decoder"):
        monkeypatch.setattr(comfy.pack_module(f"diffbir_modules.tiled_vae.{module}"), "warn_if_emulated",
                            lambda v, what: checked.append((v, what)))
    image, latent = encoded
    with torch.inference_mode():
        tv.encode(vae, image[:, :64, :128], 64, progress=False)
        tv.decode(vae, latent[..., :8, :16], 64, progress=False, clamp=False)
    assert checked == [(vae, "encode"), (vae, "decode")]  # once per pass, also through clamp=False


def test_tiles_split_on_latent_pixels(tv):
    assert tv.tiles.splits(320, 64) == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 320)]
    for length, tile in ((200, 64), (1000, 300), (72, 64)):
        parts = tv.tiles.splits(length, tile)
        assert parts[0][0] == 0 and parts[-1][1] == length and len(parts) == -(-length // tile)
        assert all(a % 8 == 0 and b - a <= tile for a, b in parts)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))


def test_regrid_moves_the_map(tv):
    """The map kept as other regions is the same map; the old one holds nothing after (the decoder's first
    map, still referenced by its caller, would otherwise keep the mid block's output for the whole pass)."""
    left, right = torch.zeros(1, 2, 8, 8), torch.ones(1, 2, 8, 8)
    halves = tv.tiles.TiledMap([(0, 64, 0, 64), (0, 64, 64, 128)], 8, 64, 128)
    halves.chunks = [left, right]
    whole = halves.regrid([(0, 64, 0, 128)])
    assert halves.tensors() == []
    assert torch.equal(whole.chunks[0], torch.cat([left, right], dim=-1))


@pytest.mark.parametrize("tile", [32, 100, -64])
def test_bad_tile_sizes(tv, vae, encoded, tile):
    with pytest.raises(ValueError, match=r"tile_size|0 \(automatic\)"):
        tv.decode(vae, encoded[1], tile)


def _tensors_held(generator) -> list[str]:
    """Names of locals (through the ``yield from`` chain) of a suspended generator that hold tensors."""
    held = []
    while generator is not None and generator.gi_frame is not None:
        for name, value in generator.gi_frame.f_locals.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) for v in values):
                held.append(f"{generator.__name__}.{name}")
        generator = generator.gi_yieldfrom
    return held


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_waiting_tiles_hold_no_tensors(tv, vae, part):
    """While a tile waits for the whole-image GroupNorm statistics, its only tensors are the ones it
    handed out (which the engine parks on the CPU when the VAE is on a GPU): a suspended tile keeping
    its activations in locals would make GPU memory grow with the number of tiles (it did: 6.4 GiB
    more for a 2048 px decode on an H100 before this was fixed, docs/tiling.md). A block's input (the
    first GroupNorm's input and the residual) is handed out once, not twice."""
    fsm = vae.first_stage_model
    with torch.inference_mode():
        if part == "encoder":
            x = torch.rand(1, 3, 64, 64)
            program = tv.segments.encoder_program(fsm.encoder, [x])
        else:
            x = torch.rand(1, fsm.decoder.conv_in.out_channels, 8, 8)
            program = tv.segments.decoder_program(fsm.decoder, [x])
        del x
        norm, t, carry = next(program)
        for _ in range(6):  # through the first resblocks, across a level change for the encoder
            assert _tensors_held(program) == []
            # each tensor handed out once: the engine parks each off the GPU, a repeat would be a second copy
            assert all(c.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for c in carry)
            groups = t.double().reshape(1, norm.num_groups, -1)
            affine = tv.engine._affine(norm, groups.mean(2), groups.var(2, unbiased=False), t.device)
            norm, t, carry = program.send(([t, *carry], affine))


def test_mid_attention_in_bounded_slices_equals_comfys(tv, vae, monkeypatch):
    """The whole-image mid-block attention runs in slices of queries of bounded size (ComfyUI's split
    attention sizes them to the free memory: ~9 GiB at once for a 2048 px image on a CPU) and gives
    ComfyUI's result."""
    block = vae.first_stage_model.decoder.mid.attn_1
    assert block.optimized_attention.__name__ == "normal_attention"  # ComfyUI's choice on this CPU
    x = torch.randn(1, block.in_channels, 12, 20, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(tv.network, "ATTENTION_SLICE_BYTES", 240 * 4 * 16)  # 16 query rows per slice: 15 slices
    with torch.inference_mode():
        ours, comfys = tv.network.mid_attention(block, x), block(x)
    assert (ours - comfys).abs().max() < 1e-5 * comfys.abs().max()


@pytest.mark.parametrize("layout", ["default", "channels_last"])
def test_upsample_on_the_input_grid_equals_comfys(tv, vae, layout):
    """The decoder's upsample (nearest x2 + 3x3 conv) as four 2x2 phase convolutions: ComfyUI's module's
    result to float32 rounding, in either memory layout (and the layout kept); other dtypes run the module."""
    network = tv.network
    module = vae.first_stage_model.decoder.up[1].upsample  # 512 channels in the SD VAE
    x = torch.randn(1, module.conv.in_channels, 20, 28, generator=torch.Generator().manual_seed(4))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        truth = copy.deepcopy(module).double()(x.double())
        comfys = module(x)
        got = network.upsample_conv(module, x)
        half = network.upsample_conv(copy.deepcopy(module).bfloat16(), x.bfloat16())
        comfys_half = copy.deepcopy(module).bfloat16()(x.bfloat16())
    assert got.shape == comfys.shape == (1, x.shape[1], 40, 56)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    error = lambda y: ((y - truth).abs().max() / truth.abs().max()).item()  # noqa: E731
    # Measured against float64: ours 2.2e-7 (default layout) and 1.3e-6 (channels-last), ComfyUI's module
    # 2.8e-7 and 1.9e-6 (oneDNN's channels-last kernel rounds more). Bound 4e-6: float32 rounding, far
    # below a wrong tap or phase (order 1).
    assert error(got) < 4e-6, (error(got), error(comfys))
    assert torch.equal(half, comfys_half)


@pytest.mark.parametrize("part", ["encode", "decode"])
def test_refused_before_any_work_when_the_parked_map_cannot_fit(comfy, tv, vae, square, monkeypatch, request,
                                                                part):
    """A pass whose parked full-resolution map (one 128-channel fp32 map when replayed, plus the decoded
    image) exceeds free memory and swap stops with a message saying what it needs and what to do, before
    the VAE runs: on a CPU it would otherwise end with the kernel killing the ComfyUI process. Refused
    exactly one byte below the need, run at the need."""
    import psutil
    from comfy import model_management as mm

    image, latent = square
    need = 128 * 192 * 192 * 4 + (192 * 192 * 3 * 4 if part == "decode" else 0)
    monkeypatch.setattr(psutil, "swap_memory", lambda: type("Swap", (), {"free": 0})())
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1))
             for m in vae.first_stage_model.modules() if isinstance(m, torch.nn.Conv2d)]
    request.addfinalizer(lambda: [h.remove() for h in hooks])
    node = "DiffBIRVAEDecodeTiled" if part == "decode" else "DiffBIRVAEEncodeTiled"
    run = comfy.node_class(node).execute
    args = (vae, {"samples": latent}, 64) if part == "decode" else (vae, image, 64)
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: need - 1)
    with torch.inference_mode(), pytest.raises(tv.TiledVAEError) as error:
        run(*args)
    message = str(error.value)
    assert message.startswith(f"DiffBIR exact tiled VAE {part}: a 192x192 px image needs at least 0.0 GiB of CPU")
    assert "Free memory" in message and "a smaller image" in message
    assert ("ComfyUI's 'VAE Decode (Tiled)'" in message) == (part == "decode")  # the encode has no such stand-in
    assert calls == []  # nothing ran
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: need)
    with torch.inference_mode():
        run(*args)
    assert calls  # it ran



def test_decode_node_hands_freed_memory_back_before_and_after_decoding(comfy, tv, vae, encoded, monkeypatch):
    """DiffBIR VAE Decode returns what the sampler freed to the system before decoding, so the decode's
    peak does not stack on it (a whole 1024 px restore: 2.02 -> 1.69 GiB above the weights with the
    encode change, docs/performance.md), and what the decoder freed after it."""
    host_memory = comfy.pack_module("diffbir_modules.host_memory")
    calls = []
    decode = tv.decode
    monkeypatch.setattr(host_memory, "release", lambda: calls.append("release") or True)
    monkeypatch.setattr(tv, "decode", lambda *args, **kwargs: calls.append("decode") or decode(*args, **kwargs))
    _, latent = encoded
    with torch.inference_mode():
        image = comfy.node_class("DiffBIRVAEDecodeTiled").execute(vae, {"samples": latent}, 64).result[0]
    # a 64 px image is far below the per-tile hand-back's bound (test below): only what the node adds
    assert calls == ["release", "decode", "release"]
    assert image.shape == (1, H, W, 3)


@pytest.mark.once  # the pack's own memory handling, the same on every runtime
@pytest.mark.parametrize("part", ["encode", "decode"])
def test_tiles_hand_freed_memory_back_one_by_one_on_a_cpu(comfy, tv, vae, square, part, monkeypatch):
    """On a CPU, in a level that parks at least ``HAND_BACK_PARKED_BYTES``, every tile returns its freed
    working memory to the system before another tile runs: the tiles' short-lived tensors otherwise spread
    over free pages of heaps that earlier stages fragmented (a whole 1024 px restore: decode 1.57-1.87 ->
    1.17-1.21 GiB above the weights, docs/tiling.md). Recorded as events: which tile's program was advanced,
    and each release; in lockstep and in replay. With the bound as shipped, this small image hands nothing
    back (at 512 px that only cost time)."""
    host_memory = comfy.pack_module("diffbir_modules.host_memory")
    events = []

    def counting(run):
        def wrapped(segment, *args):
            inner = segment.program

            def program(box):
                generator, value = inner(box), None
                while True:
                    events.append(id(generator))
                    try:
                        request = generator.send(value)
                    except StopIteration as done:
                        return done.value
                    value = yield request
            segment.program = program
            try:
                return run(segment, *args)
            finally:
                segment.program = inner
        return wrapped

    def run(mode):
        events.clear()
        with torch.inference_mode():
            if part == "encode":
                tv.encode(vae, image, 64, progress=False, replay=mode == "replay")
            else:
                tv.decode(vae, latent, 64, progress=False, replay=mode == "replay")

    image, latent = square
    for mode in ("lockstep", "replay"):
        with monkeypatch.context() as patch:
            patch.setattr(host_memory, "release", lambda: events.append("release") or True)
            name = "_" + mode
            patch.setattr(tv.engine, name, counting(getattr(tv.engine, name)))
            run(mode)
            assert "release" not in events and events, mode  # 192 px: far below the bound
            patch.setattr(tv.engine, "HAND_BACK_PARKED_BYTES", 0)
            run(mode)
        runs, tiles = [], set()  # the tiles advanced between two releases
        for event in events:
            if event == "release":
                runs.append(len(tiles))
                tiles = set()
            else:
                tiles.add(event)
        assert not tiles, f"{mode}: the last tile was not followed by a release"
        assert len(runs) > 9 and set(runs) == {1}, (mode, runs)  # one tile, then a release, every time


def test_hand_back_where_lockstep_parks_half_a_gib_on_a_cpu(tv, vae):
    """The bound in numbers: the decoder's first full-resolution segment (lockstep parks 2 x 128 channels
    per pixel) hands back at 1024 px (1 GiB) and 768 px (576 MiB), not at 512 px (256 MiB), and never on
    another device."""
    first_full = next(s for s in tv.segments.decoder_segments(vae.first_stage_model.decoder)
                      if s.level == 0 and s.resample == tv.segments.UP)

    def hands_back(size, device="cpu"):
        half = tv.tiles.TiledMap([(0, size, 0, size)], 2, size, size)
        full = tv.tiles.TiledMap([(0, size, 0, size)], 1, size, size)
        return tv.engine.hands_back(first_full, half, full, torch.device(device))

    assert hands_back(1024) and hands_back(768) and not hands_back(512)
    assert not hands_back(1024, "meta")
