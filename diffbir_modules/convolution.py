"""Which kernel the widest float32 convolutions run with on a CPU.

PyTorch runs a float32 convolution on a CPU with oneDNN, which first copies the weights into its own
blocked layout, on every call. For SD's 1280-channel layers at the smallest sizes (the 8 x 8 and 16 x 16
levels of a 512 px image) that copy costs about as much as the arithmetic: their weights are 59-118 MB,
larger than glibc's largest mmap threshold (32 MiB), so each copy also lands in fresh memory that the
kernel zero-fills first. PyTorch's other CPU path (im2col and one matrix product, ``aten.thnn_conv2d``,
what ``conv2d`` runs when oneDNN is off) reads the weights where they are. The same maths; the sums run
in another order (about 1e-6 of the largest value).

Measured with one call of each shape in a worker thread, as ComfyUI's server runs prompts (2-core
AVX-512 CPU, torch 2.13, 2 threads; docs/development.md): with weights of 59 MB and more and at most 512
output positions (batch x height x width) the matrix product took 0.35-0.86x oneDNN's time; at 1024
positions 0.97-1.04x, above that 1.1-1.2x; with weights under 32 MiB (640 input channels) 0.87-1.41x, a
small gain at best. A cfg model call of the UNet and the IRControlNet at 512 px (batch 2): 37 convolutions
go the other way.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

from . import cpu_kernels

# What DiffBIR Model Sampling runs the UNet's and the IRControlNet's convolutions with: "fastest_exact"
# sends the widest ones at the smallest sizes to the matrix product (on a CPU, in float32); "pytorch"
# leaves PyTorch's choice (oneDNN), as the official code. The choice is stored in the model's
# transformer_options, which the control networks receive; without one it is "fastest_exact" (cpu_kernels).
CPU_CONVOLUTION_CHOICES = ("fastest_exact", "pytorch")
OPTION_KEY = "diffbir_cpu_convolution"
WRAPPER_KEY = "diffbir_fastest_exact_convolutions"

WIDE_WEIGHT_BYTES = 32 << 20  # glibc's largest mmap threshold: oneDNN's copy of a larger weight is fresh memory
MAX_POSITIONS = 512  # batch x output height x width; the matrix product broke even near 1024


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _as_matrix_product(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv2d``'s arguments: the result through im2col and one matrix product where that is the faster
    exact kernel (see the module's docstring), else None."""
    # a tensor subclass (quantized weights, another pack's wrapper) keeps its own dispatch
    plain = type(input) is torch.Tensor and type(weight) in (torch.Tensor, torch.nn.Parameter)
    if (not plain or weight.dtype != torch.float32 or input.dtype != torch.float32 or input.dim() != 4 or groups != 1
            or isinstance(padding, str) or _pair(dilation) != (1, 1)
            or weight.numel() * weight.element_size() < WIDE_WEIGHT_BYTES):
        return None
    stride, padding = _pair(stride), _pair(padding)
    kernel = weight.shape[-2:]
    rows = (input.shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    columns = (input.shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if input.shape[0] * rows * columns > MAX_POSITIONS:
        return None
    return torch.ops.aten.thnn_conv2d(input, weight, list(kernel), bias, list(stride), list(padding))


class _WideConvolutionsAsMatrixProducts(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:  # torch.nn.functional.conv2d is the same function
            result = _as_matrix_product(*args, **kwargs)
            if result is not None:
                return result
        return func(*args, **kwargs)


def chosen(transformer_options: dict | None) -> str:
    """The choice a model's DiffBIR Model Sampling made (one of CPU_CONVOLUTION_CHOICES)."""
    return cpu_kernels.chosen(transformer_options, OPTION_KEY, CPU_CONVOLUTION_CHOICES)


def fastest_exact_convolutions(x: torch.Tensor, choice: str = "fastest_exact"):
    """A context in which the network that takes ``x`` runs its convolutions as ``choice`` says: with
    "fastest_exact", on a CPU in float32 (not under autocast), the widest at the smallest sizes as matrix
    products. Elsewhere (a GPU, half precision, "pytorch") nothing changes and nothing is intercepted."""
    if choice != "fastest_exact" or not cpu_kernels.apply_to(x):
        return contextlib.nullcontext()
    return _WideConvolutionsAsMatrixProducts()


def _diffusion_model_wrapper(executor, x, *args, **kwargs):
    with fastest_exact_convolutions(x):
        return executor(x, *args, **kwargs)


def with_cpu_convolution(model, choice: str):
    """``model`` (a ModelPatcher, already a clone the caller owns) set to run the convolutions of its UNet
    and of the IRControlNets that drive it as ``choice`` says (one of CPU_CONVOLUTION_CHOICES); the last
    DiffBIR Model Sampling on a model decides."""
    return cpu_kernels.set_choice(model, "cpu_convolution", choice, CPU_CONVOLUTION_CHOICES, OPTION_KEY, WRAPPER_KEY,
                                  _diffusion_model_wrapper)
