"""Face alignment geometry in plain torch, with OpenCV's conventions (the official helper uses cv2;
this pack does not need OpenCV at run time).

- ``FFHQ_TEMPLATE_512``: the 5-point template DiffBIR (and facexlib) warps faces to.
- ``estimate_similarity``: a similarity transform (rotation, uniform scale, translation) from the 5
  landmarks to the template, robust in the way ``cv2.estimateAffinePartial2D(method=cv2.LMEDS)`` is:
  least median of squares over every 2-point subset (all of them, in a fixed order, so the result is
  deterministic), inliers by OpenCV's LMedS threshold, then a least-squares fit on the inliers (what
  OpenCV's Levenberg-Marquardt refinement converges to).
- ``warp_affine``: ``cv2.warpAffine`` with INTER_LINEAR, bit for bit in its coordinate arithmetic
  (OpenCV maps every output pixel with 10-bit fixed point and samples at 1/32 pixel), constant or
  replicated border; it can compute just a window of the output.
- ``erode`` and ``gaussian_blur``: ``cv2.erode`` with a square kernel and ``cv2.GaussianBlur`` with
  OpenCV's kernel-size/sigma rules and BORDER_REFLECT_101.

Coordinates are pixel centres at integers (OpenCV's convention). Images are NCHW float tensors.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

# facexlib's FFHQ 5-point template for 512x512 crops: left eye, right eye, nose tip, left and right
# mouth corners (left/right as seen in the image).
FFHQ_TEMPLATE_512 = (
    (192.98138, 239.94708), (318.90277, 240.1936), (256.63416, 314.01935),
    (201.26117, 371.41043), (313.08905, 371.15118),
)

# DiffBIR's border fill for the aligned crops (cv2 borderValue=(135, 133, 132), applied to its RGB array).
CROP_BORDER_RGB = (135, 133, 132)


def face_template(face_size: int = 512) -> torch.Tensor:
    """The 5-point template scaled to a ``face_size`` crop, float64 [5, 2]."""
    return torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64) * (face_size / 512.0)


# -- similarity transforms -------------------------------------------------------------------------
def _as_complex(points: torch.Tensor) -> torch.Tensor:
    points = points.to(torch.float64)
    return torch.complex(points[..., 0], points[..., 1])


def _similarity_matrix(scale: complex, shift: complex) -> torch.Tensor:
    return torch.tensor([[scale.real, -scale.imag, shift.real], [scale.imag, scale.real, shift.imag]],
                        dtype=torch.float64)


def _similarity_from_pair(src: torch.Tensor, dst: torch.Tensor) -> tuple[complex, complex] | None:
    """The exact similarity through two point pairs (complex form w = s*z + t); None if degenerate."""
    dz = complex(src[0] - src[1])
    if abs(dz) < 1e-12:
        return None
    scale = complex(dst[0] - dst[1]) / dz
    return scale, complex(dst[0]) - scale * complex(src[0])


def _least_squares_similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[complex, complex]:
    src_mean, dst_mean = src.mean(), dst.mean()
    zs, ws = src - src_mean, dst - dst_mean
    denominator = float((zs.abs() ** 2).sum())
    scale = complex((zs.conj() * ws).sum()) / denominator if denominator > 0 else 1.0 + 0.0j
    return scale, complex(dst_mean) - scale * complex(src_mean)


def estimate_similarity(src_points, dst_points, robust: bool = True) -> torch.Tensor:
    """2x3 float64 matrix of the similarity that maps ``src_points`` [N,2] onto ``dst_points``.

    ``robust``: OpenCV's LMedS scheme (see the module docstring); otherwise plain least squares.
    """
    src = _as_complex(torch.as_tensor(src_points))
    dst = _as_complex(torch.as_tensor(dst_points))
    count = src.shape[0]
    if count < 2:
        raise ValueError(f"a similarity transform needs at least 2 points, got {count}")
    if not robust or count == 2:
        return _similarity_matrix(*_least_squares_similarity(src, dst))
    best_median, best = math.inf, None
    for i, j in itertools.combinations(range(count), 2):
        model = _similarity_from_pair(src[[i, j]], dst[[i, j]])
        if model is None:
            continue
        errors = ((model[0] * src + model[1]) - dst).abs() ** 2
        median = float(errors.sort().values[count // 2])  # OpenCV's median: element count/2
        if median < best_median:
            best_median, best = median, model
    if best is None:
        raise ValueError("the landmarks are degenerate (all points coincide)")
    # OpenCV's LMedS inlier threshold (modelPoints = 2)
    sigma = max(2.5 * 1.4826 * (1 + 5.0 / (count - 2)) * math.sqrt(best_median), 0.001)
    errors = ((best[0] * src + best[1]) - dst).abs() ** 2
    inliers = errors <= sigma * sigma
    if int(inliers.sum()) < 2:
        return _similarity_matrix(*best)
    return _similarity_matrix(*_least_squares_similarity(src[inliers], dst[inliers]))


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a 2x3 affine matrix, float64 (``cv2.invertAffineTransform``)."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    inv_det = 1.0 / det if det != 0 else torch.zeros((), dtype=torch.float64)
    a11, a22 = m[1, 1] * inv_det, m[0, 0] * inv_det
    a12, a21 = -m[0, 1] * inv_det, -m[1, 0] * inv_det
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    return torch.stack([torch.stack([a11, a12, b1]), torch.stack([a21, a22, b2])])


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """outer o inner for 2x3 matrices (apply ``inner`` first)."""
    outer3 = torch.cat([torch.as_tensor(outer, dtype=torch.float64), torch.tensor([[0.0, 0.0, 1.0]],
                                                                                  dtype=torch.float64)])
    inner3 = torch.cat([torch.as_tensor(inner, dtype=torch.float64), torch.tensor([[0.0, 0.0, 1.0]],
                                                                                  dtype=torch.float64)])
    return (outer3 @ inner3)[:2]


def pixel_scale_matrix(scale_x: float, scale_y: float) -> torch.Tensor:
    """The affine map between pixel grids of an image resized by (scale_x, scale_y), pixel centres kept
    aligned: x' = s*(x + 0.5) - 0.5."""
    return torch.tensor([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5]],
                        dtype=torch.float64)


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    points = torch.as_tensor(points, dtype=torch.float64)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    return points @ m[:, :2].T + m[:, 2]


# -- warping -------------------------------------------------------------------------------------
_AB_BITS, _INTER_BITS = 10, 5  # OpenCV's fixed-point warp: 1/1024 accumulation, 1/32 pixel sampling


def _opencv_sample_grid(matrix: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Source positions in 1/32 pixel (int64) for output columns ``x`` and rows ``y``, computed the way
    cv2.warpAffine does for a forward ``matrix`` (it inverts it, then accumulates in fixed point)."""
    inv = invert_affine(matrix)
    scale = float(1 << _AB_BITS)
    round_delta = (1 << _AB_BITS) // (1 << _INTER_BITS) // 2
    xs = x.to(torch.float64)
    ys = y.to(torch.float64)
    adelta = torch.round(inv[0, 0] * xs * scale).to(torch.int64)
    bdelta = torch.round(inv[1, 0] * xs * scale).to(torch.int64)
    x0 = torch.round((inv[0, 1] * ys + inv[0, 2]) * scale).to(torch.int64) + round_delta
    y0 = torch.round((inv[1, 1] * ys + inv[1, 2]) * scale).to(torch.int64) + round_delta
    shift = _AB_BITS - _INTER_BITS
    return (x0[:, None] + adelta[None, :]) >> shift, (y0[:, None] + bdelta[None, :]) >> shift


def warp_affine(image: torch.Tensor, matrix, out_size, border: str = "constant", border_value=0.0,
                window=None) -> torch.Tensor:
    """``cv2.warpAffine(image, matrix, (w, h), flags=INTER_LINEAR)`` for an NCHW float image.

    ``matrix``: forward 2x3 affine (source pixel -> output pixel). ``out_size``: (h, w).
    ``border``: "constant" (``border_value``, a number or one per channel) or "replicate".
    ``window``: (top, left, height, width) of the output to compute (default: all of it); the result
    is exactly that part of the full warp.
    """
    height, width = int(out_size[0]), int(out_size[1])
    top, left, win_h, win_w = window if window is not None else (0, 0, height, width)
    _, channels, src_h, src_w = image.shape
    device = image.device
    gx, gy = _opencv_sample_grid(torch.as_tensor(matrix, dtype=torch.float64),
                                 torch.arange(left, left + win_w), torch.arange(top, top + win_h))
    gx, gy = gx.to(device), gy.to(device)
    mask_bits = (1 << _INTER_BITS) - 1
    fx = ((gx & mask_bits).to(image.dtype) / (1 << _INTER_BITS))[None, None]
    fy = ((gy & mask_bits).to(image.dtype) / (1 << _INTER_BITS))[None, None]
    ix, iy = gx >> _INTER_BITS, gy >> _INTER_BITS
    if border == "replicate":
        padded, pad = image, 0
        ix0, ix1 = ix.clamp(0, src_w - 1), (ix + 1).clamp(0, src_w - 1)
        iy0, iy1 = iy.clamp(0, src_h - 1), (iy + 1).clamp(0, src_h - 1)
    elif border == "constant":
        pad = 2
        value = torch.as_tensor(border_value, dtype=image.dtype, device=device).flatten()
        value = value.expand(channels) if value.numel() == 1 else value
        padded = value.view(1, channels, 1, 1).expand(image.shape[0], channels, src_h + 2 * pad,
                                                      src_w + 2 * pad).clone()
        padded[:, :, pad:pad + src_h, pad:pad + src_w] = image
        ix0 = ix.clamp(-pad, src_w) + pad
        iy0 = iy.clamp(-pad, src_h) + pad
        ix1, iy1 = ix0 + 1, iy0 + 1
    else:
        raise ValueError(f"unknown border mode {border!r}")

    def at(yy, xx):
        return padded[:, :, yy, xx]

    top_row = at(iy0, ix0) * (1 - fx) + at(iy0, ix1) * fx
    bottom_row = at(iy1, ix0) * (1 - fx) + at(iy1, ix1) * fx
    return top_row * (1 - fy) + bottom_row * fy


def warped_bounds(matrix, src_size, out_size, margin: int = 0):
    """(top, left, height, width): the part of the output (clipped to ``out_size``) that the source
    rectangle ``src_size`` (h, w) lands in under ``matrix``, grown by ``margin`` pixels."""
    h, w = src_size
    corners = torch.tensor([[-1.0, -1.0], [w, -1.0], [-1.0, h], [w, h]], dtype=torch.float64)
    mapped = apply_affine(matrix, corners)
    x_min = max(int(math.floor(float(mapped[:, 0].min()))) - margin, 0)
    y_min = max(int(math.floor(float(mapped[:, 1].min()))) - margin, 0)
    x_max = min(int(math.ceil(float(mapped[:, 0].max()))) + margin + 1, int(out_size[1]))
    y_max = min(int(math.ceil(float(mapped[:, 1].max()))) + margin + 1, int(out_size[0]))
    if x_max <= x_min or y_max <= y_min:
        return None
    return y_min, x_min, y_max - y_min, x_max - x_min


# -- morphology and blur -----------------------------------------------------------------------
def erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``cv2.erode(mask, np.ones((size, size)))`` on NCHW: minimum over a size x size window anchored
    at its centre (size // 2); the image border never erodes. ``size`` 0 is OpenCV's empty-kernel
    case, a 3x3 window."""
    size = int(size)
    if size <= 0:
        size = 3
    if size == 1:
        return mask
    before, after = size // 2, size - 1 - size // 2
    padded = F.pad(-mask, (before, after, before, after), value=-math.inf)
    return -F.max_pool2d(padded, size, stride=1)


def gaussian_kernel(size: int, sigma: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    """``cv2.getGaussianKernel(size, sigma)``: OpenCV's fixed tables for odd size <= 9 with sigma <= 0,
    otherwise sampled with sigma (or 0.3*((size-1)*0.5 - 1) + 0.8 when sigma <= 0), normalised."""
    fixed = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
             7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
             9: [0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875, 0.1171875, 0.05078125,
                 0.015625]}
    if size in fixed and sigma <= 0:
        return torch.tensor(fixed[size], dtype=torch.float64).to(dtype)
    sigma = sigma if sigma > 0 else ((size - 1) * 0.5 - 1) * 0.3 + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) * 0.5
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).to(dtype)


def _reflect101_indices(n: int, before: int, after: int, device) -> torch.Tensor:
    index = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.remainder(period)
    return torch.where(index >= n, period - index, index)


def gaussian_blur(image: torch.Tensor, size: int, sigma: float = 0.0) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (size, size), sigma)`` on NCHW (separable, BORDER_REFLECT_101)."""
    size = int(size)
    if size <= 1 and sigma <= 0:
        return image
    kernel = gaussian_kernel(size, sigma, image.dtype).to(image.device)
    radius = size // 2
    n, c, h, w = image.shape
    x = image.reshape(n * c, 1, h, w)
    x = x[:, :, :, _reflect101_indices(w, radius, radius, image.device)]
    x = F.conv2d(x, kernel.view(1, 1, 1, size))
    x = x[:, :, _reflect101_indices(h, radius, radius, image.device), :]
    x = F.conv2d(x, kernel.view(1, 1, size, 1))
    return x.reshape(n, c, h, w)


def resize_linear(image: torch.Tensor, size) -> torch.Tensor:
    """``cv2.resize(..., interpolation=INTER_LINEAR)`` for NCHW float (half-pixel centres, no
    antialiasing; OpenCV's 8-bit fixed-point weights are not emulated)."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)
