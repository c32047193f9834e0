"""End-to-end golden of the LoRA workflow (tests/golden/end_to_end/lora_*): the official DiffBIR v2.1
pipeline run whole on SD 2.1 weights with a LoRA merged in.

The official code has no LoRA; a LoRA is a weight delta, so the reference is the official pipeline on
merged weights: devkit.lora_merge merges the random kohya-layout LoRA of the test models into the small
fp32 SD 2.x checkpoint at the shipped workflow's strength (UNet only: the workflow's LoraLoaderModelOnly
leaves the text encoder alone; the IRControlNet has its own weights), saves the merged checkpoint in the
test models cache, and runs make_end_to_end.py's v2.1 SwinIR case (``--version v2.1 --task sr
--upscale 4``, edm_dpm++_3m_sde, cfg 6, the v2.1 default prompts, 4 steps, seed SEED) on it.

Run with the golden environment after the test models exist (built with the test venv):

    .venv/bin/python -c "import torch; from devkit import model_factory as m; \
m.sd2_checkpoint('small', dtype=torch.float32); m.ircontrolnet_file('small'); \
m.sd2_lora_file(**m.E2E_LORA)"
    .venv-official/bin/python -m tools.goldens.make_end_to_end_lora

Writes ``lora_official.png`` and ``lora_cases.json``; the input is the base case's ``<case>_lq.png``.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from devkit import lora_merge, model_factory
from tools.goldens import official
from tools.goldens.make_end_to_end import CASES, OUT, REPO, SEED, STEPS, build_cldm, log, lq_image, run_case

WORKFLOW = "DiffBIR v2.1 with a LoRA (stock KSampler)"
BASE_CASE = "v21_swinir_sr_x4"  # the official run whose weights get the LoRA


def workflow_strength() -> float:
    """The LoRA strength the shipped workflow sets (its LoraLoaderModelOnly)."""
    workflow = json.loads((REPO / "example_workflows" / f"{WORKFLOW}.json").read_text())
    [node] = [n for n in workflow["nodes"] if n["type"] == "LoraLoaderModelOnly"]
    return float(node["widgets_values"][1])


def merged_checkpoint(strength: float):
    """The small fp32 SD checkpoint with the LoRA merged into its UNet, saved once in the test models cache."""
    lora_path = model_factory.sd2_lora_file(**model_factory.E2E_LORA)
    path = model_factory.CACHE / f"sd2-small-fp32-merged-{lora_path.stem}-s{strength:g}.safetensors"
    if not path.exists():
        checkpoint = load_file(str(model_factory.sd2_checkpoint("small", dtype=torch.float32)))
        merged = lora_merge.merge_unet_lora(checkpoint, load_file(str(lora_path)), strength,
                                            model_factory.UNET_VARIANTS["small"]["num_res_blocks"][0])
        save_file(merged, str(path))
    return path


def main():
    official.activate("main")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    strength = workflow_strength()
    path = merged_checkpoint(strength)
    log("merged checkpoint", path.name)
    cldm = build_cldm(checkpoint=path)
    workflow, version, task, pipeline_name, cleaner_file, sampler, upscale = CASES[BASE_CASE]
    lq = lq_image("astronaut_85x77")
    out = run_case(cldm, version, task, pipeline_name, cleaner_file, sampler, upscale, lq)
    base_lq = np.asarray(Image.open(OUT / f"{BASE_CASE}_lq.png").convert("RGB"))
    assert np.array_equal(np.asarray(lq), base_lq), "the base case's image changed"
    Image.fromarray(out[0]).save(OUT / "lora_official.png")
    meta = {"workflow": WORKFLOW, "base_case": BASE_CASE, "official_commit": official.COMMITS["main"],
            "precision": "fp32", "seed": SEED,
            "steps": STEPS, "version": version, "task": task, "pipeline": pipeline_name, "stage1": cleaner_file,
            "sampler": sampler, "upscale": upscale, "lora": model_factory.E2E_LORA, "strength": strength,
            "lq_size": list(lq.size), "output_size": [out.shape[2], out.shape[1]], "official": "lora_official.png"}
    (OUT / "lora_cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    log("lora", out.shape, int(out.min()), int(out.max()))


if __name__ == "__main__":
    main()
