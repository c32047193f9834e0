"""Run the official DiffBIR code (github.com/XPixelGroup/DiffBIR) beside ours, to make golden
fixtures: small random weights in the published layouts, official outputs saved under tests/golden/.

Nothing of the official repository is copied into this project. ``source(version)`` extracts the
given commit from a local clone (DIFFBIR_OFFICIAL_GIT: a git directory, by default .cache/official-git
in this repository, made by ``git clone --mirror https://github.com/XPixelGroup/DiffBIR .cache/official-git``)
into .cache/official/<version>/ and ``activate(version)`` puts it first on sys.path (a source tree at
a chosen commit, not an installed package) with the small run-time fixes CPU-only torch needs (see
the project's reference notes):
- ``torch.Tuple`` (used as an annotation by diffbir/sampler/edm_sampler.py) aliased to typing.Tuple;
- ``VRAMPeakMonitor`` (calls torch.cuda.synchronize unconditionally) replaced by a no-op.

Run generators with the golden environment: ``tools/goldens/setup.sh`` then
``.venv-official/bin/python -m tools.goldens.make_<what>`` from the repository root.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tarfile
import types
import typing
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_GIT = Path(os.environ.get("DIFFBIR_OFFICIAL_GIT", REPO / ".cache" / "official-git"))
# extracted trees, one folder per version; DIFFBIR_OFFICIAL_TREES points elsewhere (a machine without the
# clone gets them from tools/device/prepare.sh)
CACHE = Path(os.environ.get("DIFFBIR_OFFICIAL_TREES", REPO / ".cache" / "official"))

# The commits the reference notes describe.
COMMITS = {
    "v1a": "7bd5675",  # last v1 release (ldm / PyTorch-Lightning)
    "v1": "8ad952e",
    "v20": "3464638",  # tag v2.0.0: has restoration guidance
    "v21": "c084fc5",  # tag v2.1.0
    "main": "3f8b530",
}


def source(version: str) -> Path:
    """The official source tree at ``version`` (a key of COMMITS), extracted once."""
    target = CACHE / version
    if (target / ".extracted").exists():
        return target
    if not OFFICIAL_GIT.exists():
        raise FileNotFoundError(
            f"tools/goldens/official.py: no clone of the official DiffBIR repository at {OFFICIAL_GIT}. "
            "Make one with `git clone --mirror https://github.com/XPixelGroup/DiffBIR .cache/official-git`, "
            "or set DIFFBIR_OFFICIAL_GIT to the git directory of an existing clone")
    archive = subprocess.run(["git", f"--git-dir={OFFICIAL_GIT}", "archive", COMMITS[version]],
                             check=True, capture_output=True).stdout
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    (target / ".extracted").write_text(COMMITS[version])
    return target


def activate(version: str) -> Path:
    """Puts the official tree first on sys.path and applies the CPU fixes; returns its path."""
    import torch

    root = source(version)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if not hasattr(torch, "Tuple"):
        torch.Tuple = typing.Tuple  # noqa: UP006  (the official code subscripts it)
    # diffbir/inference/loop.py imports pandas only to write a prompt CSV after a run: not needed here.
    if importlib.util.find_spec("pandas") is None:
        stub = types.ModuleType("pandas")
        stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = stub
    with contextlib.suppress(ImportError):
        import diffbir.utils.common as common  # v2.1 / main layout

        class _NoVRAMMonitor(contextlib.nullcontext):
            def __init__(self, *args, **kwargs):
                super().__init__()

        common.VRAMPeakMonitor = _NoVRAMMonitor
    return root


def seeded_randn_recorder():
    """Context manager recording every torch.randn / randn_like draw (shape, tensor) in order,
    so a run can be replayed with the same noise on our side."""
    import torch

    draws = []
    real_randn, real_randn_like = torch.randn, torch.randn_like

    def randn(*args, **kwargs):
        out = real_randn(*args, **kwargs)
        draws.append(out.detach().clone())
        return out

    def randn_like(x, *args, **kwargs):
        out = real_randn_like(x, *args, **kwargs)
        draws.append(out.detach().clone())
        return out

    @contextlib.contextmanager
    def recording():
        torch.randn, torch.randn_like = randn, randn_like
        try:
            yield draws
        finally:
            torch.randn, torch.randn_like = real_randn, real_randn_like

    return recording()
