"""Saving images and figures: PNG files, upscaled grids, figure files and bytes.

The figures themselves are `core.plots` (shared), `ddpm.figures` and
`ebm.figures`; the image arrays `core.images`.
"""
from __future__ import annotations

import io
import os

from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from core import images as image_lib
from launch import data as data_lib

# By the dataset names of `config.data.name` (the names live in the dataset specs).
CLASS_NAMES = {name: data_lib.class_names(name) for name in data_lib.NAMES}


def save_png(image, path: str | os.PathLike) -> None:
  """Writes an image [H, W, C] (C = 1, 3 or 4) or [H, W] as PNG; makes parent dirs.

  Float input in [-1, 1] is converted with `to_uint8`.
  """
  x = image_lib.to_uint8(image)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)):
    raise ValueError(f"expected [H, W], [H, W, 1|3|4], got {x.shape}")
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(x).save(path, format="PNG")


def save_grid(grid, path: str | os.PathLike, min_side: int = image_lib.MIN_VIEW_SIDE) -> np.ndarray:
  """Saves an `image_grid` as PNG upscaled by `upscale_nearest`; returns what it saved."""
  big = image_lib.upscale_nearest(grid, min_side)
  save_png(big, path)
  return big


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
  """Saves a figure (format from the extension, e.g. .png or .pdf); makes parent dirs."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=dpi)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
  """The figure as PNG bytes (for the HTTP server)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()
