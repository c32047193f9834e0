"""An IRControlNet trained with the official training script (``--version custom``) loads.

The official ``train_stage2.py`` saves ``torch.save(controlnet.state_dict(),
"<exp_dir>/checkpoints/<step:07d>.pt")`` (after unwrapping the accelerate model, so no ``module.``
prefix): a flat state dict in the published key layout, in a pickle, under a numbered name in a
sub-folder. The official ``--version custom`` loads it with ``load_state_dict(strict=True)`` on the
network the training config describes (train_stage2.yaml: v2, eps; train_stage2_v2.1.yaml: v2.1,
v-prediction with zero terminal SNR)."""

from collections import OrderedDict

import folder_paths
import pytest
import torch

from devkit import model_factory
from devkit.model_factory import install_model

CUSTOM_NAME = "my-experiment/checkpoints/0005000.pt"


@pytest.fixture(scope="module")
def custom_checkpoint():
    weights = model_factory.ircontrolnet_state_dict("tiny", seed=7)
    path = model_factory.CACHE / f"ircontrolnet-tiny-seed7-training-output-v{model_factory.FACTORY_VERSION}.pt"
    if not path.exists():
        torch.save(OrderedDict(weights), path)  # what the official training loop writes
    return install_model("diffbir", path, CUSTOM_NAME), weights


def test_the_training_output_is_listed_with_its_sub_folder(comfy, custom_checkpoint):
    name, _ = custom_checkpoint
    assert name in folder_paths.get_filename_list("diffbir")


@pytest.mark.parametrize("version", ["v2", "v2.1"])
def test_a_custom_checkpoint_loads_as_the_version_it_was_trained_as(comfy, custom_checkpoint, version):
    name, weights = custom_checkpoint
    with torch.inference_mode():
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(name, version).result[0]
    got = control.control_model.state_dict()
    assert set(got) == set(weights)
    assert all(torch.equal(got[k].float(), v) for k, v in weights.items())
    assert control.version == version


def test_auto_leaves_an_unknown_custom_checkpoint_without_a_version(comfy, custom_checkpoint):
    """Its content hash is in no table: auto must not guess the schedule (the user sets it)."""
    name, _ = custom_checkpoint
    with torch.inference_mode():
        control = comfy.node_class("DiffBIRIRControlNetLoader").execute(name, "auto").result[0]
    assert control.version is None
