#!/usr/bin/env bash
# Prepares what scripts/device_benchmarks.sh needs on a lent GPU machine (PyTorch there, no network):
# - .whl/: wheels of the ComfyUI requirements missing there, and of the official DiffBIR code's (for
#   scripts.benchmark_vs_official; pure Python, the sdist-only ones built into wheels here);
# - .devcarry/comfyui: a slim copy of .comfyui (no caches, tests or large unused tokenizers);
# - .devcarry/official/main: the official source tree at its pinned commit, code and configs only
#   (tools/goldens/official.py extracts it from the clone it names).
# All git-ignored; name .whl and .devcarry in the device tool's carry. PyAV is not carried (35 MB):
# tools/device/stubs/av stands in for it (only video nodes use it). WHEEL_PYTHON (default 3.12, the
# machine's) picks the binary wheels' Python version.
set -euo pipefail
cd "$(dirname "$0")/../.."
python_version=${WHEEL_PYTHON:-3.12}
rm -rf .whl .devcarry
mkdir -p .whl .devcarry/comfyui .devcarry/official
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in kornia kornia_rs pydantic pydantic_core pydantic-settings annotated-types typing-inspection \
           python-dotenv spandrel torchsde trampoline; do
    version=$(.venv/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
        "${platforms[@]}" -d .whl "$pkg==$version"
done
for pkg in omegaconf ftfy wcwidth facexlib filterpy; do  # the official side's, at the golden venv's versions
    version=$(.venv-official/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    .venv-official/bin/python -m pip wheel -q --no-deps -w .whl "$pkg==$version"
done
(cd .comfyui && tar cf - --exclude=__pycache__ --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' \
    --exclude=./models --exclude=./input --exclude=./output --exclude=./user --exclude=./temp \
    --exclude='./comfy/text_encoders/llama_tokenizer' --exclude='./comfy/text_encoders/qwen25_tokenizer' \
    --exclude='./comfy/text_encoders/t5_tokenizer' --exclude='./comfy/text_encoders/t5_pile_tokenizer' \
    --exclude='./comfy/text_encoders/ace_lyrics_tokenizer' .) | (cd .devcarry/comfyui && tar xf -)
tree=$(.venv/bin/python -c "from tools.goldens import official; print(official.source('main'))")
mkdir -p .devcarry/official/main
cp -r "$tree/diffbir" "$tree/configs" "$tree/.extracted" .devcarry/official/main/
find .devcarry -name __pycache__ -prune -exec rm -rf {} +
du -sh .whl .devcarry
