"""Input guards in the real in-process runtime: NaN/inf stopped at the node's door, start after end
refused at validation, an image too small to encode, broken unicode in a prompt, huge face index
ranges. The same cases through a real server are in test_reliability.py."""

import logging

import pytest
import torch

from diffbir_modules import faces, guards


def test_require_finite_passes_finite_and_names_node_and_input():
    guards.require_finite("Node X", "image", torch.rand(1, 4, 4, 3))
    guards.require_finite("Node X", "image", torch.zeros(1, 0, 4, 3))  # empty: nothing to check
    bad = torch.rand(1, 4, 4, 3)
    bad[0, 1, 1, 0] = float("nan")
    bad[0, 2, 2, 1] = float("inf")
    with pytest.raises(guards.InputError, match=r"Node X: the input 'image' holds 1 NaN and 1 infinite") as error:
        guards.require_finite("Node X", "image", bad)
    assert "Check the node that made it" in str(error.value)


@pytest.mark.parametrize("node, name, settings", [
    ("DiffBIREDMSampler", "eta", dict(solver="dpm++_3m_sde", noise_stream="official", timestep_lookup="official",
                                      eta=float("nan"), s_noise=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=300.0, order=1)),
    ("DiffBIRDegradationRemoval", "upscale", dict(image=torch.rand(1, 8, 8, 3), upscale_model=None,
                                                  upscale=float("inf"))),
    ("DiffBIRFacePasteBack", "feather", dict(background=torch.rand(1, 8, 8, 3), restored_faces=torch.rand(1, 8, 8, 3),
                                             faces=None, feather=float("nan"))),
])
def test_number_settings_that_are_not_numbers_stop_at_the_door(comfy, node, name, settings):
    """ComfyUI's min/max check passes NaN (every comparison with it is false), and API prompts or linked
    primitives can carry NaN or inf: the node names the setting before any work."""
    with pytest.raises(ValueError, match=rf"the setting '{name}' is (nan|inf), not a number this node can use"):
        comfy.node_class(node).execute(**settings)


def test_colour_fix_refuses_inf_in_either_input(comfy):
    node = comfy.node_class("DiffBIRColorFix")
    good = torch.rand(1, 16, 16, 3)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("inf")
    for image, reference, name in ((bad, good, "image"), (good, bad, "reference")):
        with pytest.raises(ValueError, match=f"DiffBIR Colour Fix: the input '{name}'"):
            node.execute(image, reference, "wavelet")
    assert torch.isfinite(node.execute(good, good, "wavelet").result[0]).all()


def test_apply_ircontrolnet_validates_order_and_range(comfy):
    node = comfy.node_class("DiffBIRApplyIRControlNet")
    assert node.validate_inputs(start_percent=0.0, end_percent=1.0) is True
    assert node.validate_inputs(start_percent=0.5, end_percent=0.5) is True
    message = node.validate_inputs(start_percent=0.8, end_percent=0.2)
    assert "start_percent (0.8) is after end_percent (0.2)" in message and "DiffBIR Apply IRControlNet" in message
    assert "between 0.0 and 1.0" in node.validate_inputs(start_percent=-0.1, end_percent=1.0)
    assert "between 0.0 and 1.0" in node.validate_inputs(start_percent=0.0, end_percent=1.5)
    # a linked value is None at validation time; execute checks the order then
    assert node.validate_inputs(start_percent=None, end_percent=0.2) is True


def test_vae_encode_refuses_an_image_smaller_than_a_block(comfy, sd2_tiny):
    vae = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[2]
    node = comfy.node_class("DiffBIRVAEEncodeTiled")
    with pytest.raises(ValueError, match=r"DiffBIR VAE Encode \(exact tiles\): the input 'pixels' is 1x1 pixels"):
        node.execute(vae, torch.rand(1, 1, 1, 3), 0)
    with torch.inference_mode():
        assert node.execute(vae, torch.rand(1, 8, 8, 3), 0).result[0]["samples"].shape[-2:] == (1, 1)


def test_lone_surrogate_in_a_prompt_is_replaced_not_a_type_error(comfy, sd2_tiny, caplog):
    clip = comfy.node_class("CheckpointLoaderSimple")().load_checkpoint(sd2_tiny)[1]
    node = comfy.node_class("DiffBIRTextEncode")
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        broken = node.execute(clip, "a cat \ud800 on a mat", True, False).result[0]
        replaced = node.execute(clip, "a cat \ufffd on a mat", True, False).result[0]
    assert torch.equal(broken[0][0], replaced[0][0])
    assert "lone surrogates" in caplog.text
    with torch.inference_mode():
        node.execute(clip, "a cat \ud800 on a mat", True, True)  # ComfyUI's weighted-prompt path too


def test_face_index_ranges_are_capped_and_checked(caplog):
    with caplog.at_level(logging.WARNING):
        indices = faces.parse_indices("0-300000")
    assert indices == list(range(faces.MAX_INDICES))
    assert caplog.text.count("cut to its first") == 1
    with pytest.raises(ValueError, match="runs backwards"):
        faces.parse_indices("5-2")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9], [20.0, 0.0, 30.0, 10.0, 0.9]])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert faces.select(boxes, (64, 64), "indices", "0-300000") == [0, 1]
    assert len([r for r in caplog.records if "there is no face" in r.getMessage()]) == 1


def test_face_detect_validates_indices_before_a_run(comfy):
    node = comfy.node_class("DiffBIRFaceDetectAlign")
    assert node.validate_inputs(indices="0, 2-4") is True
    assert "cannot read 'x'" in node.validate_inputs(indices="0, x")
    assert node.validate_inputs(indices=None) is True  # linked: checked when it runs
