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
    """The node on the official inputs (content outside [0, 1], as an unclamped decode gives it) against
    the official outputs: equal with clamp off, and equal to the official output clamped to [0, 1]
    (where the official code clamps, at its uint8 conversion) with clamp on. Bound: float32 rounding of
    the same arithmetic, 1e-6 as above."""
    g = load_file(str(GOLDEN))
    node = comfy.node_class("DiffBIRColorFix")
    content, style = g["content"].movedim(1, -1), g["style"].movedim(1, -1)
    for method, official in (("wavelet", g["wavelet"]), ("adain", g["adain"])):
        official = official.movedim(1, -1)
        unclamped = node.execute(content, style, method, clamp=False).result[0]
        clamped = node.execute(content, style, method, clamp=True).result[0]
        assert unclamped.shape == official.shape
        assert (unclamped - official).abs().max() < 1e-6, method
        assert (clamped - official.clamp(0, 1)).abs().max() < 1e-6, method
