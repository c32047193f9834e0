"""Smoke test of scripts/benchmark_stage2.py (issue 4): its case runner, on the tiny random models at
64 px for one step, in the test process's ComfyUI runtime, so the script does not rot. No timings are
checked (the benchmark itself is run by hand; see docs/benchmark_stage2.md)."""

from __future__ import annotations

import asyncio
import json

from devkit import model_factory
from devkit.model_factory import install_model
from scripts import benchmark_stage2


def test_case_runner_tiny(comfy):
    """The IRControlNet case (cfg 4 and cfg 1, one step each) runs through the case runner; the plain
    case's graph is validated by ComfyUI (running it too would double the model loading, the bulk of
    this test's time: it differs only by EmptyLatentImage in place of the apply node)."""
    import execution

    ckpt = install_model("checkpoints", model_factory.sd2_checkpoint("tiny"))
    irc = install_model("diffbir", model_factory.ircontrolnet_file("tiny", fmt="safetensors"))
    irc_class = comfy.pack_module("diffbir_modules.ircontrolnet").IRControlNetControl
    original = irc_class.__dict__["get_control"]

    control = benchmark_stage2.run_case(comfy, ckpt, irc, size=64, steps=1, cfgs=(4.0, 1.0))
    assert irc_class.__dict__["get_control"] is original  # the probe put the methods back

    names = [p["name"] for p in control["phases"]]
    assert sorted(names) == ["sampling", "sampling", "vae_decode", "vae_encode"]
    for p in benchmark_stage2.sampling_phases(control):
        assert p["latent_shape"] == [1, 4, 8, 8] and len(p["step_s"]) == 1 and p["finite"]
        assert p["control_s"] > 0 and p["unet_s"] > 0 and p["model_calls"] == 1
        assert p["peak_rss"] >= p["rss_start"] > 0
    assert {p["cfg"] for p in benchmark_stage2.sampling_phases(control)} == {4.0, 1.0}
    assert control["decoded_shape"] == [1, 64, 64, 3] and control["decoded_finite"]
    table = benchmark_stage2.markdown({"cases": [json.loads(json.dumps(control))]})
    assert "| 64² | 4 |" in table and "| 64² | 1 |" in table and "64² IRControlNet" in table

    graph, outputs = benchmark_stage2.case_graph(ckpt, None, None, 64, 1, (4.0, 1.0))
    assert "apply" not in graph and graph["sample0"]["inputs"]["latent_image"] == ["empty", 0]
    for node_id in outputs:
        ok, reasons, _ = asyncio.run(execution.validate_inputs("bench", graph, node_id, {}))
        assert ok, reasons
