"""Image arrays at the edges of the models: uint8 <-> [-1, 1], grids, upscaling.

Images are NHWC, float in [-1, 1] inside the models and uint8 at the edges.
Pure NumPy: no file I/O (saving PNGs is `launch.figures`).
"""
from __future__ import annotations

import math

import numpy as np

# Sample grids are saved at least this many pixels on their shorter side: a
# 2x2 grid of 28x28 images is 62 px at native size, too small to look at.
MIN_VIEW_SIDE = 256


def to_uint8(images) -> np.ndarray:
  """Maps images in [-1, 1] to uint8, elementwise: round((x + 1) * 127.5), clipped.

  -1 -> 0, 0 -> 128 (127.5 rounds half to even), 1 -> 255; values outside
  [-1, 1] are clipped and NaN maps to 0. The inverse `from_uint8(u) =
  u / 127.5 - 1` round-trips exactly: to_uint8(from_uint8(u)) == u for every
  uint8 u. uint8 input is returned unchanged.

  Args:
    images: float array of any shape (or uint8).

  Returns:
    uint8 array of the same shape.
  """
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x
  if not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"expected float images in [-1, 1] or uint8, got dtype {x.dtype}")
  x = np.rint((x.astype(np.float64) + 1.0) * 127.5)
  return np.nan_to_num(np.clip(x, 0, 255), nan=0.0).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]: u / 127.5 - 1 (the inverse of `to_uint8`)."""
  return np.asarray(images, np.float32) / np.float32(127.5) - np.float32(1.0)


def image_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
  """Tiles images into one uint8 image, like torchvision's `make_grid`.

  `nrow` images per row (`min(nrow, N)` columns), ceil(N / ncols) rows, and
  `padding` pixels of `pad_value` around every tile, the outer border
  included: the result is [rows * (H + p) + p, cols * (W + p) + p, C].
  Empty slots of the last row are left as padding.

  Args:
    images: [N, H, W, C] or [N, H, W] float in [-1, 1] or uint8.
    nrow: images per row.
    padding: pixels between and around tiles.
    pad_value: uint8 value of the padding.

  Returns:
    uint8 [H', W', C] (C = 1 for [N, H, W] input).
  """
  x = to_uint8(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[0] == 0:
    raise ValueError(f"images must be a non-empty [N, H, W, C] or [N, H, W], got {x.shape}")
  if nrow < 1:
    raise ValueError(f"nrow must be >= 1, got {nrow}")
  n, h, w, c = x.shape
  cols = min(nrow, n)
  rows = math.ceil(n / cols)
  p = padding
  grid = np.full((rows * (h + p) + p, cols * (w + p) + p, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    top, left = p + r * (h + p), p + q * (w + p)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def upscale_nearest(image, min_side: int = MIN_VIEW_SIDE) -> np.ndarray:
  """Repeats every pixel k x k so that the shorter side is >= min_side.

  k = ceil(min_side / min(H, W)), at least 1: an integer factor and nearest
  neighbour, so every pixel of the grid stays one sharp k x k block (no
  interpolation invents values).

  Args:
    image: [H, W] or [H, W, C] float in [-1, 1] or uint8.
    min_side: the smallest shorter side wanted, in pixels.

  Returns:
    uint8 [k H, k W] or [k H, k W, C].
  """
  x = to_uint8(image)
  if x.ndim not in (2, 3):
    raise ValueError(f"expected [H, W] or [H, W, C], got {x.shape}")
  k = max(1, math.ceil(min_side / min(x.shape[0], x.shape[1])))
  return np.repeat(np.repeat(x, k, axis=0), k, axis=1)
