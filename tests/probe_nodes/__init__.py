"""A custom node pack for the reliability battery only (linked into the test server's custom_nodes,
never shipped): stands for a misbehaving upstream node that puts NaN or inf into an IMAGE or LATENT."""

import math


def _poison(tensor, value: str):
    out = tensor.clone()
    out.view(-1)[out.numel() // 2] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[value]
    return out


class DiffBIRTestPoisonImage:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    DESCRIPTION = "Test only: the image with one value replaced by NaN or inf."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "value": (["nan", "inf", "-inf"],)}}

    def run(self, image, value):
        return (_poison(image, value),)


class DiffBIRTestPoisonLatent:
    CATEGORY = "testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    DESCRIPTION = "Test only: the latent with one value replaced by NaN or inf."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "value": (["nan", "inf", "-inf"],)}}

    def run(self, samples, value):
        return ({**samples, "samples": _poison(samples["samples"], value)},)


NODE_CLASS_MAPPINGS = {"DiffBIRTestPoisonImage": DiffBIRTestPoisonImage,
                       "DiffBIRTestPoisonLatent": DiffBIRTestPoisonLatent}
