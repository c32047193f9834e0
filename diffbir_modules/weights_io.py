"""Reading weight files: the one reader every loader of the pack uses.

First the file is sniffed (its first bytes say what it really is, whatever its extension), so a
failed download, an HTML page, a Git LFS pointer or random bytes are named as such instead of as a
pickle or torch error. Then it is read without running code: safetensors, or ``torch.load`` with
``weights_only=True``. Training checkpoints whose only foreign objects are training metadata
(PyTorch Lightning callbacks, OmegaConf configs, numpy scalars: DiffBIR's v1 .ckpt files) are read with
inert stand-ins for those objects; anything else that would need code is refused.

Errors are ``WeightsFileError`` (a ValueError) with one vocabulary: the file's name and size, what it
actually is, what was expected, what to do.
"""

from __future__ import annotations

import os
import pickle

import torch


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message says what it is and what to do."""


# What a file is, from its first bytes.
SAFETENSORS, TORCH_ZIP, PICKLE, HTML, LFS_POINTER, TEXT, EMPTY, UNKNOWN = (
    "safetensors", "torch zip", "pickle", "html", "git-lfs pointer", "text", "empty", "unknown")


def sniff(path: str) -> str:
    """The kind of file at ``path`` from its first bytes (never loads it)."""
    size = os.path.getsize(path)
    if size == 0:
        return EMPTY
    with open(path, "rb") as f:
        head = f.read(512)
    if len(head) >= 10 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return PICKLE
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"version https://git-lfs"):
        return LFS_POINTER
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<body")) or b"<html" in text[:200]:
        return HTML
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return UNKNOWN
    return TEXT if decoded.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in decoded) else UNKNOWN


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def read_tensors(path: str, expected: str) -> dict:
    """Everything in a weights file as loaded from disk (usually a dict of tensors, possibly nested in
    a training checkpoint's dict). ``expected`` completes the errors' "Expected ..." sentence."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise WeightsFileError(f"{name}: no such file. Expected {expected}.")
    size = os.path.getsize(name)
    where = f"{name} ({_size(size)})"
    redownload = "delete it and download the file again"
    kind = sniff(name)
    if kind == EMPTY:
        raise WeightsFileError(f"{where}: the file is empty (an interrupted download?): {redownload}. "
                               f"Expected {expected}.")
    if kind == HTML:
        raise WeightsFileError(f"{where}: is an HTML web page, not a weights file: the download failed (a login, "
                               f"error or 'file too large' page was saved instead): {redownload}. Expected {expected}.")
    if kind == LFS_POINTER:
        raise WeightsFileError(f"{where}: is a Git LFS pointer (a few lines of text), not the weights: download the "
                               f"file itself (the 'download' link, or git lfs pull). Expected {expected}.")
    if kind in (TEXT, UNKNOWN):
        what = "a text file" if kind == TEXT else f"not a weights file (it starts with bytes {_hex(name)})"
        raise WeightsFileError(f"{where}: is {what}, neither safetensors nor a PyTorch file: {redownload}, or pick "
                               f"the right file. Expected {expected}.")
    try:
        if kind == SAFETENSORS:
            import safetensors.torch

            return safetensors.torch.load_file(name, device="cpu")
        return torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error) and "Unsupported global" not in str(error):
            raise WeightsFileError(f"{where}: a {kind} file that cannot be read ({_first_line(error)}); it is "
                                   f"probably truncated or corrupt: {redownload}. Expected {expected}.") from None
        return _load_tolerating_metadata(name, where, error, expected)
    except WeightsFileError:
        raise
    except Exception as error:  # noqa: BLE001 - torch, zipfile and safetensors each raise their own kinds
        raise WeightsFileError(f"{where}: a {kind} file that cannot be read ({_first_line(error)}); it is probably "
                               f"truncated or corrupt (an interrupted download?): {redownload}. "
                               f"Expected {expected}.") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__


def _hex(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(8).hex(" ")


# -- training checkpoints ---------------------------------------------------------------------------
# Objects a training checkpoint may carry beside its tensors, which are safe to replace by stand-ins.
_METADATA_GLOBAL_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "pathlib.",
                             "argparse.Namespace", "numpy.", "_codecs.encode", "typing.", "collections.")


class _Inert:
    """Stand-in for training metadata objects inside a checkpoint: swallows whatever the pickle
    hands it, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):
        return _Inert()


def _is_metadata_global(name: str) -> bool:
    return name.startswith(_METADATA_GLOBAL_PREFIXES)


# Objects a pickle of tensors imports to rebuild them (torch's own reader allows these).
_TENSOR_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "__builtin__.set")


def _pickle_imports(path: str) -> list[str] | None:
    """``module.name`` of every object the file's pickles import (GLOBAL, STACK_GLOBAL), read opcode by
    opcode with ``pickletools`` (nothing runs); None when its first pickle is not a valid one (damaged).
    A torch zip holds one pickle (data.pkl); a legacy torch file several in a row, then raw tensor bytes."""
    import io
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                member = next(m for m in archive.namelist() if m.endswith("data.pkl"))
                stream = io.BytesIO(archive.read(member))  # checks the member's CRC
        except (StopIteration, zipfile.BadZipFile, OSError, EOFError):
            return None
    else:
        with open(path, "rb") as f:
            stream = io.BytesIO(f.read(64 * 2**20))  # the pickles come first; tensor bytes follow
    names = []
    for index in range(6):
        strings, memo, top = [], {}, None
        try:
            for op, arg, _ in pickletools.genops(stream):
                pushed = None
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    pushed = arg
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed = memo.get(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = top
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[arg] = top
                if isinstance(pushed, str):
                    strings.append(pushed)
                if op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "FRAME"):
                    top = pushed
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle
            if index == 0:
                return None
            break
    return names


def _load_tolerating_metadata(path: str, where: str, error: Exception, expected: str):
    """Second attempt for a pickle torch's weights-only reader refused: if every foreign global is
    training metadata, read it again with inert stand-ins for them; otherwise refuse the file, as
    code-carrying where it imports other objects, as damaged where it is not a valid pickle."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        names = finder(path) if finder is not None else None
    except Exception:  # noqa: BLE001 - a legacy pickle: read its imports ourselves
        names = None
    if not names:
        imports = _pickle_imports(path)
        if imports is None:  # refused, and not even a valid pickle: damaged
            raise WeightsFileError(
                f"{where}: a PyTorch file that cannot be read ({_first_line(error)}); it is probably truncated or "
                f"corrupt (an interrupted download?): delete it and download the file again. "
                f"Expected {expected}.") from None
        names = sorted({n for n in imports if not n.startswith(_TENSOR_GLOBAL_PREFIXES)})
    if not names:  # a valid pickle of tensors only, in a form torch's safe reader does not read
        raise WeightsFileError(
            f"{where}: a pickle that PyTorch's safe (weights-only) reader cannot read ({_first_line(error)}): it was "
            f"not written by torch.save, or it is damaged. Save it again with torch.save or as .safetensors, or "
            f"download the file again. Expected {expected}.") from None
    unsafe = [n for n in names if not _is_metadata_global(n)]
    if unsafe:
        raise WeightsFileError(
            f"{where}: refused: a pickle that holds Python code or objects besides tensors "
            f"({', '.join(sorted(unsafe)[:8])}), and loading it could run code. Use a weights-only file "
            f"(the published .pth/.pt, or a .safetensors copy). Expected {expected}.") from None
    stand_ins = [(type(f"Inert_{i}", (_Inert,), {}), n) for i, n in enumerate(names)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as second:
        raise WeightsFileError(
            f"{where}: refused: its training metadata ({', '.join(names[:8])}) cannot be read without running "
            f"code ({_first_line(second)}). Save the weights alone (torch.save(ckpt['state_dict'], ...)) or convert "
            f"them to .safetensors. Expected {expected}.") from None


def tensors_only(loaded, source: str, expected: str, wrappers=("state_dict", "params_ema", "params", "model")) -> dict:
    """The flat {name: tensor} dict inside a loaded file: unwrapped from a training checkpoint's
    ``state_dict`` (or the other ``wrappers``) and from a DataParallel ``module.`` prefix."""
    sd = loaded
    if isinstance(sd, dict):
        for key in wrappers:
            if isinstance(sd.get(key), dict) and len(sd) <= 32:
                sd = sd[key]
                break
        else:
            if len(sd) == 1 and isinstance(next(iter(sd.values())), dict):  # {"anything": state_dict}
                sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        held = "nothing" if isinstance(sd, dict) and not sd else type(sd).__name__
        raise WeightsFileError(f"{source}: holds no state dict of tensors ({held}). Expected {expected}.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# -- what a state dict is -----------------------------------------------------------------------------
# (kind, what it is, where it goes), recognised by key names; the first match wins (a v1 IRControlNet
# checkpoint also holds SD weights, a stock ControlNet also has zero convs). Each loader names the file,
# what it expected and this, so a file given to the wrong loader says where it belongs.
_KINDS = (
    ("controlnet", lambda keys: any(k.startswith(("input_hint_block.", "control_model.input_hint_block.",
                                                  "controlnet_cond_embedding.")) for k in keys),
     "a stock ControlNet (it has a hint encoder), not a DiffBIR IRControlNet",
     "load it with ComfyUI's 'Load ControlNet Model' node"),
    ("ircontrolnet", lambda keys: any(k.startswith(("zero_convs.", "control_model.zero_convs.")) for k in keys),
     "an IRControlNet (DiffBIR stage 2) file", "load it with the DiffBIR IRControlNet loader (DiffBIR Load "
     "IRControlNet, models/diffbir)"),
    ("checkpoint", lambda keys: any(k.startswith(("model.diffusion_model.", "cond_stage_model.", "conditioner."))
                                    for k in keys),
     "a Stable Diffusion checkpoint (UNet/VAE/text-encoder keys)", "load it with ComfyUI's 'Load Checkpoint' node"),
    ("lora", lambda keys: any("lora_up" in k or "lora_down" in k or ".lora_A." in k or ".lora_B." in k for k in keys),
     "a LoRA", "load it with ComfyUI's 'Load LoRA' node"),
    ("vae", lambda keys: any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys),
     "a VAE", "load it with ComfyUI's 'Load VAE' node"),
    ("retinaface", lambda keys: any(k.startswith(("body.layer1.", "body.stage1.", "ClassHead.")) for k in keys),
     "a RetinaFace face detector", "put it in models/facedetection for DiffBIR Face Detector Loader"),
    ("parsenet", lambda keys: "out_mask_conv.conv2d.weight" in keys,
     "a ParseNet face parser", "put it in models/facedetection for DiffBIR Face Parser Loader"),
    ("stage1", lambda keys: any(k.startswith(("m_head.", "RRDB_trunk.", "conv_first.", "patch_embed."))
                                for k in keys),
     "a stage-1 cleaner (SwinIR, BSRNet, SCUNet or similar)",
     "load it with DiffBIR Load Stage-1 Model (models/upscale_models)"),
)


def identify(sd: dict) -> tuple[str, str, str] | None:
    """(kind, what the state dict ``sd`` is, what to do with it) for the model kinds a DiffBIR user
    may have on disk, or None when its keys match none of them. A ``module.`` prefix is ignored."""
    keys = {k[len("module."):] if k.startswith("module.") else k for k in sd}
    for kind, matches, what, action in _KINDS:
        if matches(keys):
            return kind, what, action
    return None


def wrong_kind(name: str, sd: dict, wanted: str, expected: str) -> WeightsFileError | None:
    """The error for a file that holds a known kind of model other than ``wanted`` (a kind of
    ``_KINDS``); None when it is that kind or of no kind we know (the loader's own checks go on)."""
    found = identify(sd)
    if found is None or found[0] == wanted:
        return None
    _, what, action = found
    return WeightsFileError(f"{name} is {what}, not what this loader takes: {action}. Expected {expected}.")


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """``state_dict`` without ``prefix`` when every key has it (DataParallel's ``module.``)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_strict(module_factory, state_dict: dict, what: str, source: str) -> torch.nn.Module:
    """Builds ``module_factory()`` (on the meta device: no wasted initialisation) and loads a state
    dict that must match it exactly (BatchNorm's num_batches_tracked may be absent); errors name the
    file and what differs. Floating-point weights are kept in float32."""
    with torch.device("meta"):
        module = module_factory()
    own = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)}, expected {tuple(own[k].shape)}"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} is not a {what} weight file in the expected layout: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
            f"{len(wrong)} with other shapes {wrong[:3]}")
    full = {}
    for key, reference in own.items():
        if key in state_dict:
            value = state_dict[key]
            full[key] = value.float() if value.is_floating_point() else value
        else:  # an absent BatchNorm counter
            full[key] = torch.zeros(reference.shape, dtype=reference.dtype)
    module.load_state_dict(full, strict=True, assign=True)
    return module.eval()
