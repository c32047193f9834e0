"""The float32 rates this CPU reaches on the operations of a 512 px cfg step (IRControlNet + SD 2.1 UNet,
cond and uncond as a batch of 2), next to the FMA peak of ``tools/cpu_fma_peak.c``: what bounds a CPU
cfg step from below (docs/performance.md). Run from the repository root with the test environment:

    .venv/bin/python -m tools.cpu_rates [--threads N]

Each shape: the best of 5 calls after 2 warm-up calls, through the same PyTorch calls the models make
(``conv2d``, ``linear``, ``scaled_dot_product_attention``); 2 flops per multiply-add. ``--half`` adds what
bf16 and fp16 cost against float32 on this CPU (one call each: emulated, they take seconds): a VAE
convolution in both memory layouts and a matrix product, what ``--bf16-vae`` / ``--fp16-vae`` run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from diffbir_modules import cpu_features  # plain Python: no ComfyUI import

# 3x3 convolutions: (in, out, height = width) at batch 2
CONVOLUTIONS = [(320, 320, 64), (640, 320, 64), (960, 320, 64), (320, 640, 32), (640, 640, 32), (640, 1280, 16),
                (1280, 1280, 16), (2560, 1280, 16), (1280, 1280, 8), (2560, 1280, 8)]
# linear layers: (tokens of the batch, in, out)
LINEARS = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320), (2048, 640, 640), (2048, 640, 5120),
           (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 10240), (512, 5120, 1280), (128, 1280, 10240)]
# self-attention: (batch, heads, tokens, head width)
ATTENTIONS = [(2, 5, 4096, 64), (2, 10, 1024, 64), (2, 20, 256, 64)]


def rate(flops: float, op, *args, **kwargs) -> float:
    """GFLOP/s of the fastest of 5 calls of ``op(*args, **kwargs)``, after 2 warm-up calls."""
    for _ in range(2):
        op(*args, **kwargs)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        op(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def half_precision() -> None:
    """Seconds per call in float32, bf16 and fp16: a 3x3 convolution of the SD VAE's full-resolution level
    (128 channels, 128 x 128) in the default layout and channels-last, and a 1024 x 1024 matrix product."""
    x, w = torch.randn(1, 128, 128, 128), torch.randn(128, 128, 3, 3)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cases = [("conv2d 3x3 128 -> 128 at 128 x 128", F.conv2d, x, w, {"padding": 1}),
             ("  the same, channels-last", F.conv2d, x.to(memory_format=torch.channels_last), w, {"padding": 1}),
             ("matrix product 1024 x 1024 x 1024", torch.mm, a, b, {})]
    for name, op, first, second, kwargs in cases:
        times = []
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            args = (first.to(dtype), second.to(dtype))
            op(*args, **kwargs)  # warm-up
            start = time.perf_counter()
            op(*args, **kwargs)
            times.append(time.perf_counter() - start)
        print(f"{name}: float32 {times[0] * 1e3:.1f} ms, bf16 {times[1] * 1e3:.0f} ms ({times[1] / times[0]:.0f}x), "
              f"fp16 {times[2] * 1e3:.0f} ms ({times[2] / times[0]:.0f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--half", action="store_true", help="also bf16 and fp16 against float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{cpu_features.describe()}; torch {torch.__version__}, {args.threads} threads, float32, GFLOP/s")
    with torch.inference_mode():
        for c_in, c_out, size in CONVOLUTIONS:
            x, w = torch.randn(2, c_in, size, size), torch.randn(c_out, c_in, 3, 3)
            flops = 2 * 2 * size * size * c_in * c_out * 9
            print(f"conv2d 3x3 {c_in} -> {c_out} at {size} x {size}: {rate(flops, F.conv2d, x, w, padding=1):.0f}")
        for tokens, c_in, c_out in LINEARS:
            x, w, b = torch.randn(tokens, c_in), torch.randn(c_out, c_in), torch.randn(c_out)
            flops = 2 * tokens * c_in * c_out
            print(f"linear {tokens} x {c_in} -> {c_out}: {rate(flops, F.linear, x, w, b):.0f}")
        for batch, heads, tokens, width in ATTENTIONS:
            q, k, v = (torch.randn(batch, heads, tokens, width) for _ in range(3))
            flops = 4 * batch * heads * tokens * tokens * width
            print(f"attention {batch} x {heads} heads x {tokens} tokens x {width}: "
                  f"{rate(flops, F.scaled_dot_product_attention, q, k, v):.0f}")
        if args.half:
            half_precision()


if __name__ == "__main__":
    main()
