#!/usr/bin/env bash
# Prepares what scripts/device_benchmarks.sh needs on a lent GPU machine (PyTorch there, no network):
# wheels of ComfyUI requirements missing there (.whl/) and a slim copy of .comfyui (.devcarry/comfyui:
# no caches, tests or large unused tokenizers). Both are git-ignored; name them in the device tool's
# carry. PyAV is not carried (35 MB): tools/device/stubs/av stands in for it (only video nodes use it).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl .devcarry/comfyui
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in kornia kornia_rs pydantic pydantic_core pydantic-settings annotated-types typing-inspection \
           python-dotenv spandrel torchsde trampoline; do
    version=$(.venv/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$pkg==$version"
done
(cd .comfyui && tar cf - --exclude=__pycache__ --exclude=./tests --exclude=./tests-unit --exclude='./custom_nodes/*' \
    --exclude=./models --exclude=./input --exclude=./output --exclude=./user --exclude=./temp \
    --exclude='./comfy/text_encoders/llama_tokenizer' --exclude='./comfy/text_encoders/qwen25_tokenizer' \
    --exclude='./comfy/text_encoders/t5_tokenizer' --exclude='./comfy/text_encoders/t5_pile_tokenizer' \
    --exclude='./comfy/text_encoders/ace_lyrics_tokenizer' .) | (cd .devcarry/comfyui && tar xf -)
du -sh .whl .devcarry
