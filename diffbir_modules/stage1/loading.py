"""Reading a stage-1 file into a spandrel model, with errors that say what the file is."""

from __future__ import annotations

from .. import comfy_compat, weights_io


def load_cleaner(path: str):
    """Loads a stage-1 file (any published DiffBIR stage-1 format or any spandrel image model) into a
    spandrel ImageModelDescriptor, with errors that say what the file is and what to do. Weights only:
    pickles that carry code are refused (torch.load weights_only)."""
    import os

    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    name = os.path.basename(path)
    expected = ("a stage-1 cleaner (DiffBIR's general_swinir_v1.ckpt, face_swinir_v1.ckpt, "
                "realesrgan_s4_swinir_100k.pth, KAIR's BSRNet.pth or scunet_color_real_psnr.pth, or another "
                "spandrel-supported restoration model)")
    sd = weights_io.tensors_only(weights_io.read_tensors(path, expected), name, expected)
    foreign = weights_io.wrong_kind(name, sd, "stage1", expected)
    if foreign:
        raise foreign
    try:
        descriptor = ModelLoader().load_from_state_dict(sd)
    except UnsupportedModelError as error:
        raise ValueError(f"{name}: spandrel recognises no architecture in its {len(sd)} tensors (first keys: "
                         f"{', '.join(list(sd)[:3])}). Expected {expected}.") from error
    except (RuntimeError, KeyError) as error:  # an architecture recognised, but its tensors do not all fit
        detail = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])[:600] or type(error).__name__
        raise ValueError(f"{name}: its {len(sd)} tensors look like a known architecture but do not fit it ({detail}): "
                         "the file is damaged, edited or a variant spandrel cannot build; download it again. "
                         f"Expected {expected}.") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(f"{name} is a {descriptor.architecture.name} {descriptor.purpose} model, not a single-image "
                         f"model. Expected {expected}.")
    descriptor.eval()
    comfy_compat.upscale_model_patcher(descriptor)  # what core "Upscale Image (using Model)" runs it through
    return descriptor
