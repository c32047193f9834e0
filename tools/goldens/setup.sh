#!/usr/bin/env bash
# A separate venv (.venv-official) that can run the official DiffBIR code, for making golden
# fixtures only (not used by the pack, the tests or CI). Needs the ComfyUI test venv (.venv) first
# for its pins and the torchvision shim.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$repo/.venv-official
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
pip torch==2.13.0
pip -c "$repo/.venv/diffbir-constraints.txt" numpy einops packaging omegaconf ftfy regex scipy torchsde tqdm \
  pillow "opencv-python-headless>=4.10,<5" safetensors torchvision==0.28.0 huggingface_hub pyyaml spandrel \
  scikit-image
# timm (SwinIR/SCUNet helpers) and facexlib (face helper) pull torch ranges: never their deps.
pip --no-deps timm facexlib filterpy
# The v1 release tree (make_end_to_end_v1_wild.py) is PyTorch Lightning + OpenCLIP: Lightning 1.9 still has
# the utilities.distributed module it imports and runs on torch 2.x (its bundled lightning_fabric needs
# pkg_resources); OpenCLIP before 2.24, whose text transformer is sequence-first as the release's code feeds it.
pip --no-deps pytorch_lightning==1.9.5 lightning-utilities==0.15.3 torchmetrics==1.9.0 open_clip_torch==2.20.0
pip "setuptools<81"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$repo/scripts/torchvision_cpu_shim.py" "$site/_diffbir_torchvision_cpu_shim.py"
echo "import _diffbir_torchvision_cpu_shim; _diffbir_torchvision_cpu_shim.install()" > "$site/_diffbir_torchvision_cpu_shim.pth"
"$venv/bin/python" -c "import torch, torchvision, timm, cv2; print('official venv ok', torch.__version__, cv2.__version__)"
