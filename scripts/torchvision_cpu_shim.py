"""Lets PyPI's CUDA-linked torchvision import beside a CPU-only torch (test/dev environments only).

torchvision's meta registrations reference the compiled ops ``torchvision::nms`` and
``torchvision::qnms``; with a CPU-only torch the CUDA build of torchvision cannot register them and
``import torchvision`` fails with "operator torchvision::nms does not exist". Declaring the two
schemas first is enough for everything ComfyUI imports; the compiled ops themselves stay
unavailable, which is why the pack never calls ``torchvision.ops``.

scripts/setup.sh installs this module with a ``.pth`` hook into the virtual environment only.
Real ComfyUI installs have a matching torchvision and never see it.
"""

import importlib.abc
import sys

_done = False


def _declare_ops():
    global _done
    if _done:
        return
    _done = True
    import torch

    if torch.version.cuda is not None:
        return  # a CUDA torch registers the real ops itself
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        sys.modules[__name__]._keep_library_alive = lib
    except RuntimeError:
        pass  # already defined (a torchvision that matches this torch)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            _declare_ops()
        return None


def install():
    if "torchvision" in sys.modules:
        return
    sys.meta_path.insert(0, _BeforeTorchvision())
