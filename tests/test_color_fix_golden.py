"""The colour fix against the official code (tests/golden/samplers/colorfix.safetensors, made by
tools/goldens/make_samplers.py): main's wavelet_reconstruction and v1's adaptive_instance_normalization
and wavelet_reconstruction, on inputs that leave [0, 1] as a decoder output can."""

from pathlib import Path

from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "samplers" / "colorfix.safetensors"


def test_color_fix_equals_official(comfy):
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    g = load_file(str(GOLDEN))
    wavelet = color_fix.wavelet_color_fix(g["content"], g["style"])
    adain = color_fix.adain_color_fix(g["content"], g["style"])
    errors = {"wavelet": (wavelet - g["wavelet"]).abs().max().item(),
              "wavelet_v1": (wavelet - g["wavelet_v1"]).abs().max().item(),
              "adain_v1": (adain - g["adain"]).abs().max().item()}
    print("colour fix max abs diff:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-6


def test_color_fix_node_equals_official_up_to_the_final_clamp(comfy):
    """The node works on IMAGE tensors and clamps its output to [0, 1]; the official code clamps at
    the uint8 conversion, so after the clamp both agree."""
    g = load_file(str(GOLDEN))
    node = comfy.node_class("DiffBIRColorFix")
    content = g["content"].clamp(0, 1)
    out = node.execute(content.movedim(1, -1), g["style"].movedim(1, -1), "wavelet").result[0]
    color_fix = comfy.pack_module("diffbir_modules.color_fix")
    expected = color_fix.wavelet_color_fix(content, g["style"]).clamp(0, 1).movedim(1, -1)
    assert (out - expected).abs().max() < 1e-6
