#!/usr/bin/env bash
# The GPU figures in one run on a lent GPU machine, which has PyTorch but not ComfyUI's other requirements
# nor the official code's, and no network. tools/device/prepare.sh makes what travels (git-ignored; name
# .whl and .devcarry in the device tool's carry): wheels of the missing requirements, a slim copy of
# .comfyui and the official source tree; tools/device/stubs/av stands in for PyAV (only ComfyUI's video
# nodes use it).
# Usage there: scripts/device_benchmarks.sh OUT_DIR [variant [parts]]
#   variant: full (default) or tiny / small (a quick local check);
#   parts, in the order given (default "vs512 vs2048 stage2 tiling"):
#     vs512   scripts.benchmark_vs_official, 512 px (the official code at PRECISION, ComfyUI with its defaults)
#     vs2048  the same at 2048 px, tiled on both sides
#     stage2  time per step and peak memory, IRControlNet vs plain UNet
#     tiling  tiled sampling and the exact tiled VAE at 1024 and 2048 px
# DEVICE (default cuda), PRECISION (the official side's, default fp16), PYTHON (default python3), PART_TIMEOUT
# (seconds per part, default 240).
set -euo pipefail
out=${1:?output folder}
variant=${2:-full}
parts=${3:-vs512 vs2048 stage2 tiling}
device=${DEVICE:-cuda}
precision=${PRECISION:-fp16}
py=${PYTHON:-python3}
limit=${PART_TIMEOUT:-240}
mkdir -p "$out"
out=$(cd "$out" && pwd)
scratch=${TMPDIR:-/tmp}/diffbir-device  # kept while the lent machine stays warm: wheels unpacked once
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null && [ ! -d "$scratch/site" ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" .whl/*.whl
fi
export PYTHONPATH="$scratch/site:$PWD/tools/device/stubs${PYTHONPATH:+:$PYTHONPATH}"
export COMFYUI_PATH="$PWD/.devcarry/comfyui" DIFFBIR_OFFICIAL_TREES="$PWD/.devcarry/official" PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0)) s"; }
vs_variant=$([ "$variant" = full ] && echo full || echo small)
# every part's random-weight models built first, so that the parts' timeouts count only their runs
"$py" - "$variant" "$vs_variant" "$parts" <<'PY'
import sys, time
import tempfile, pathlib
from devkit import comfy_runtime, model_factory  # stdin script: the repository root is on the import path
from scripts import benchmark_vs_official
comfy_runtime.start(pathlib.Path(tempfile.mkdtemp()), cpu=True)  # the factory needs comfy's modules
variant, vs_variant, parts = sys.argv[1], sys.argv[2], sys.argv[3].split()
t = time.time()
if {"stage2", "tiling"} & set(parts):
    print(model_factory.sd2_checkpoint(variant), model_factory.ircontrolnet_file(variant, fmt="safetensors"))
if {"vs512", "vs2048"} & set(parts):
    print(benchmark_vs_official.build_models(vs_variant, sys.executable))
print(f"models built in {time.time() - t:.0f} s", flush=True)
PY
for part in $parts; do
    echo "== $part ($(elapsed))"
    case $part in
    vs512)
        timeout "$limit" "$py" -m scripts.benchmark_vs_official --python "$py" --device "$device" \
            --precision "$precision" --variant "$vs_variant" --out "$out/vs_official_${device}_512.json" \
            || echo "$part failed: $?" ;;
    vs2048)
        timeout "$limit" "$py" -m scripts.benchmark_vs_official --python "$py" --device "$device" \
            --precision "$precision" --variant "$vs_variant" --size 2048 --tiled \
            --out "$out/vs_official_${device}_2048_tiled.json" || echo "$part failed: $?" ;;
    stage2)
        timeout "$limit" "$py" -m scripts.benchmark_stage2 --device "$device" --variant "$variant" --sizes 512 1024 \
            --steps 4 --cfgs 4 --out-dir "$scratch/bench_stage2" --case-timeout 120 || echo "$part failed: $?"
        cp "$scratch/bench_stage2/report.json" "$out/stage2_report.json" 2>/dev/null || true
        tar czf "$out/stage2_logs.tgz" -C "$scratch/bench_stage2" . 2>/dev/null || true ;;
    tiling)
        timeout "$limit" "$py" -m scripts.benchmark_tiling --device "$device" --variant "$variant" --sizes 1024 2048 \
            --steps 4 --json "$out/tiling.json" || echo "$part failed: $?" ;;
    *) echo "unknown part $part (vs512, vs2048, stage2, tiling)"; exit 2 ;;
    esac
done
echo "== done ($(elapsed))"
