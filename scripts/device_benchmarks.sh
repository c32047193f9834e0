#!/usr/bin/env bash
# The GPU figures (stage 2 and tiling) in one run on a lent GPU machine, which has PyTorch but not ComfyUI's
# other requirements and no network. tools/device/prepare.sh makes what travels (git-ignored; name
# .whl and .devcarry in the device tool's carry): wheels of the missing requirements and a slim
# copy of .comfyui; tools/device/stubs/av stands in for PyAV (only ComfyUI's video nodes use it).
# Usage there: scripts/device_benchmarks.sh OUT_DIR [variant]   (variant tiny = a quick local check)
set -euo pipefail
out=${1:?output folder}
variant=${2:-full}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
scratch=${TMPDIR:-/tmp}/diffbir-device  # kept while the lent machine stays warm: wheels unpacked once
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null && [ ! -d "$scratch/site" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" .whl/*.whl
fi
export PYTHONPATH="$scratch/site:$PWD/tools/device/stubs${PYTHONPATH:+:$PYTHONPATH}"
export COMFYUI_PATH="$PWD/.devcarry/comfyui" PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

t0=$(date +%s)
"$py" - "$variant" <<'PY'
import sys, time
import tempfile, pathlib
from devkit import comfy_runtime, model_factory  # stdin script: the repository root is on the import path
comfy_runtime.start(pathlib.Path(tempfile.mkdtemp()), cpu=True)  # the factory needs comfy's modules
t = time.time()
print(model_factory.sd2_checkpoint(sys.argv[1]), model_factory.ircontrolnet_file(sys.argv[1], fmt="safetensors"))
print(f"models built in {time.time() - t:.0f} s", flush=True)
PY
echo "== stage 2: time per step and peak memory, IRControlNet vs plain UNet ($(($(date +%s) - t0)) s)"
"$py" -m scripts.benchmark_stage2 --device "$device" --variant "$variant" --sizes 512 1024 --steps 4 --cfgs 4 \
    --out-dir "$scratch/bench_stage2" --case-timeout 240 || echo "stage-2 benchmark failed: $?"
cp "$scratch/bench_stage2/report.json" "$out/stage2_report.json" 2>/dev/null || true
tar czf "$out/stage2_logs.tgz" -C "$scratch/bench_stage2" . 2>/dev/null || true
echo "== tiling: 1024 and 2048 px output ($(($(date +%s) - t0)) s)"
"$py" -m scripts.benchmark_tiling --device "$device" --variant "$variant" --sizes 1024 2048 --steps 4 \
    --json "$out/tiling.json" || echo "tiling benchmark failed: $?"
echo "== done ($(($(date +%s) - t0)) s)"
