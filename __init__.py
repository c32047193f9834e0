"""DiffBIR for ComfyUI: blind image restoration with a generative diffusion prior (Lin et al.).

ComfyUI loads this package from ``custom_nodes/`` under whatever folder name it was cloned as; every
import inside the pack is relative, so the name does not matter.
"""

import importlib
import os
import sys

import folder_paths

# (import name, pip name): what requirements.txt lists. Checked first so that a missing package
# shows up in ComfyUI's "IMPORT FAILED" log with its name and the command that fixes it.
REQUIRED_PACKAGES = (("safetensors", "safetensors"), ("spandrel", "spandrel"), ("PIL", "Pillow"))


def _check_requirements():
    missing = []
    for module, package in REQUIRED_PACKAGES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
        raise ImportError(
            f"ComfyUI-DiffBIR cannot load: missing Python package(s): {', '.join(missing)}. Install them into the "
            f"Python that runs ComfyUI: {sys.executable} -m pip install -r {requirements}")


_check_requirements()

from .diffbir_modules import comfy_compat  # noqa: E402

comfy_compat.check_runtime()  # a clear "needs ComfyUI 0.3.75 or newer" instead of an import error below

from comfy_api.latest import ComfyExtension, io  # noqa: E402

from .nodes import NODES  # noqa: E402

# Model folders of ours, merged into whatever the user already maps (extra_model_paths.yaml may name
# them too). Stage-1 cleaners live in ComfyUI's own "upscale_models" folder, loaded by the core
# UpscaleModelLoader.
MODEL_FOLDERS = {
    "diffbir": {".pth", ".pt", ".ckpt", ".safetensors", ".bin"},  # IRControlNet weights
    "facedetection": {".pth", ".pt", ".safetensors"},  # face detector/parser (the folder face packs share)
}
for _name, _extensions in MODEL_FOLDERS.items():
    folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name))
    folder_paths.folder_names_and_paths[_name][1].update(_extensions)


class DiffBIRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DiffBIRExtension:
    return DiffBIRExtension()
