"""Figures of the course assignments and the DDPM paper, and image utilities.

Every figure function takes arrays and returns a `matplotlib.figure.Figure`
built directly (no `pyplot`, no global state) on an Agg canvas, so figures
can be made from any thread (the HTTP server) and saved with `save_figure`
or turned into PNG bytes with `figure_png`.

Images are NHWC, either float in [-1, 1] (the models' range) or uint8; they
go through `to_uint8` before display. One-channel images are shown in gray.

Grids of images are drawn as one `image_grid` per axes, with the row and
column labels as tick labels (ten rows of ten snapshots is one axes, not a
hundred), which keeps rendering fast.
"""
from __future__ import annotations

import io
import math
import os
from typing import Mapping, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from launch import data as data_lib
from launch.data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES  # noqa: F401

# By the dataset names of `config.data.name` (the names live in the dataset specs).
CLASS_NAMES = {name: data_lib.class_names(name) for name in data_lib.NAMES}


_INCH_PER_TILE = 0.8  # figure inches per image tile of a grid


# ----------------------------------------------------------------------------
# Array utilities.


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


def save_png(image, path: str | os.PathLike) -> None:
  """Writes an image [H, W, C] (C = 1, 3 or 4) or [H, W] as PNG; makes parent dirs.

  Float input in [-1, 1] is converted with `to_uint8`.
  """
  x = to_uint8(image)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)):
    raise ValueError(f"expected [H, W], [H, W, 1|3|4], got {x.shape}")
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(x).save(path, format="PNG")


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


# ----------------------------------------------------------------------------
# Drawing helpers.


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(max(width, 1.5), max(height, 1.0)), layout="constrained")
  FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot, no backend switching
  return fig


def _as_batch(images, name: str) -> np.ndarray:
  x = to_uint8(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be [N, H, W, 1 or 3] (or [N, H, W]), got {x.shape}")
  return x


def _imshow(ax, image_uint8: np.ndarray) -> None:
  if image_uint8.shape[-1] == 1:
    ax.imshow(image_uint8[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  else:
    ax.imshow(image_uint8, interpolation="nearest")


def _bare(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def _labelled_grid(ax, images: np.ndarray, row_labels=None, col_labels=None,
                   padding: int = 2) -> None:
  """Draws [R, C, H, W, ch] uint8 images as one grid, labels as tick labels."""
  r, c, h, w = images.shape[:4]
  _imshow(ax, image_grid(images.reshape((r * c,) + images.shape[2:]), nrow=c, padding=padding))
  _bare(ax)
  if col_labels is not None:
    ax.set_xticks([padding + j * (w + padding) + (w - 1) / 2 for j in range(c)],
                  [str(s) for s in col_labels], fontsize=8)
    ax.tick_params(axis="x", length=0, labeltop=True, labelbottom=False)
  if row_labels is not None:
    ax.set_yticks([padding + i * (h + padding) + (h - 1) / 2 for i in range(r)],
                  [str(s) for s in row_labels], fontsize=8)
    ax.tick_params(axis="y", length=0)


def _row_panels(rows: Sequence[Tuple[str, np.ndarray]], title: str | None) -> Figure:
  """One axes per (label, [N, H, W, C] uint8) row, stacked vertically."""
  n_max = max(x.shape[0] for _, x in rows)
  fig = _new_figure(_INCH_PER_TILE * n_max + 1.5, (_INCH_PER_TILE + 0.3) * len(rows) + 0.4)
  axes = np.atleast_1d(fig.subplots(len(rows), 1))
  for ax, (label, x) in zip(axes, rows):
    _labelled_grid(ax, x[None])
    ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
  if title:
    fig.suptitle(title)
  return fig


def _snapshot_figure(hist, steps, title, step_prefix) -> Figure:
  """[S, N, H, W, C] snapshots -> N rows (samples) x S columns (steps)."""
  x = np.asarray(hist)
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5:
    raise ValueError(f"snapshots must be [S, N, H, W, C], got shape {x.shape}")
  s, n = x.shape[:2]
  if len(steps) != s:
    raise ValueError(f"{len(steps)} step labels for {s} snapshots")
  x = np.swapaxes(to_uint8(x), 0, 1)  # [N, S, H, W, C]
  fig = _new_figure(_INCH_PER_TILE * s + 1.0, _INCH_PER_TILE * n + 0.8)
  ax = fig.add_subplot()
  _labelled_grid(ax, x, row_labels=range(n), col_labels=[f"{step_prefix}{t}" for t in steps])
  if title:
    ax.set_title(title)
  return fig


# ----------------------------------------------------------------------------
# Figures.


def forward_process_figure(images, timesteps: Sequence[int],
                           title: str | None = "Forward process q(x_t | x_0)") -> Figure:
  """One image noised to increasing t (e.g. t = 0, 100, ..., 900), side by side.

  Args:
    images: [K, H, W, C] the noisy images x_t, one per timestep.
    timesteps: K timestep labels.
    title: figure title (None for none).

  Returns:
    A figure with K axes, titled "t = ...".
  """
  x = _as_batch(images, "images")
  if len(timesteps) != x.shape[0]:
    raise ValueError(f"{len(timesteps)} timesteps for {x.shape[0]} images")
  k = x.shape[0]
  fig = _new_figure(_INCH_PER_TILE * 1.2 * k, _INCH_PER_TILE * 1.2 + 0.6)
  axes = np.atleast_1d(fig.subplots(1, k))
  for ax, img, t in zip(axes, x, timesteps):
    _imshow(ax, img)
    _bare(ax)
    ax.set_title(f"t = {t}", fontsize=9)
  if title:
    fig.suptitle(title)
  return fig


def noisy_batch_figure(images, timesteps: Sequence[int], ncols: int = 8,
                       title: str | None = "Noisy training minibatch") -> Figure:
  """A minibatch of noisy inputs x_t with each one's t in its title.

  Args:
    images: [N, H, W, C] noisy images.
    timesteps: N timesteps.
    ncols: axes per row.
    title: figure title.

  Returns:
    A figure with N axes.
  """
  x = _as_batch(images, "images")
  n = x.shape[0]
  if len(timesteps) != n:
    raise ValueError(f"{len(timesteps)} timesteps for {n} images")
  cols = min(ncols, n)
  rows = math.ceil(n / cols)
  fig = _new_figure(_INCH_PER_TILE * 1.2 * cols, (_INCH_PER_TILE * 1.2 + 0.3) * rows + 0.4)
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  for i, ax in enumerate(axes):
    if i >= n:
      ax.remove()
      continue
    _imshow(ax, x[i])
    _bare(ax)
    ax.set_title(f"t = {int(timesteps[i])}", fontsize=8)
  if title:
    fig.suptitle(title)
  return fig


def trajectory_figure(x_hist, steps: Sequence, title: str | None = "Reverse process: x_T -> x_0"
                      ) -> Figure:
  """Sampling trajectories: rows are samples, columns snapshots of the chain.

  Args:
    x_hist: [S, N, H, W, C] snapshots (e.g. S = N = 10), S in sampling order.
    steps: S labels (e.g. the timesteps t of the snapshots).
    title: axes title.

  Returns:
    A figure with one axes.
  """
  return _snapshot_figure(x_hist, steps, title, "t = ")


def fixed_init_figure(stochastic, deterministic, x_T=None,
                      title: str | None = "Samples from one fixed x_T") -> Figure:
  """Samples that all start from the same x_T: stochastic vs deterministic sampler.

  Args:
    stochastic: [N, H, W, C] ancestral (DDPM) samples from the same x_T.
    deterministic: [N, H, W, C] deterministic-sampler (e.g. DDIM eta = 0)
      samples from the same x_T (identical up to numerics).
    x_T: optional [H, W, C] the shared initial noise, shown as a first row.
    title: figure title.

  Returns:
    A figure with 2 axes (3 with x_T).
  """
  rows = []
  if x_T is not None:
    rows.append(("x_T", _as_batch(np.asarray(x_T)[None], "x_T")))
  rows.append(("stochastic", _as_batch(stochastic, "stochastic")))
  rows.append(("deterministic", _as_batch(deterministic, "deterministic")))
  return _row_panels(rows, title)


def class_grid_figure(images, class_names: Sequence[str],
                      title: str | None = "Class-conditional samples") -> Figure:
  """Samples per class, one row per class labelled with its name.

  Args:
    images: [K, M, H, W, C]: M samples for each of K classes.
    class_names: K names (e.g. `CIFAR10_CLASSES`).
    title: axes title.

  Returns:
    A figure with one axes.
  """
  x = np.asarray(images)
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5:
    raise ValueError(f"images must be [K, M, H, W, C], got shape {x.shape}")
  k, m = x.shape[:2]
  if len(class_names) != k:
    raise ValueError(f"{len(class_names)} class names for {k} rows")
  fig = _new_figure(_INCH_PER_TILE * m + 1.6, _INCH_PER_TILE * k + 0.6)
  ax = fig.add_subplot()
  _labelled_grid(ax, to_uint8(x), row_labels=class_names)
  if title:
    ax.set_title(title)
  return fig


def ink_blot_figure(denoiser, ddpm=None, noise=None,
                    title: str | None = "One-step 50/50 denoiser vs DDPM, same noise") -> Figure:
  """The one-step denoiser's "ink blots" next to DDPM samples from the same noise.

  Args:
    denoiser: [N, H, W, C] one-step denoiser outputs.
    ddpm: optional [N, H, W, C] DDPM samples started from the same noise
      (None: the ink blots alone).
    noise: optional [N, H, W, C] that noise, shown as a first row.
    title: figure title.

  Returns:
    A figure with one axes per row: noise, denoiser, DDPM (those given).
  """
  rows = []
  if noise is not None:
    rows.append(("noise", _as_batch(noise, "noise")))
  rows.append(("one-step\ndenoiser", _as_batch(denoiser, "denoiser")))
  if ddpm is not None:
    rows.append(("DDPM", _as_batch(ddpm, "ddpm")))
  return _row_panels(rows, title)


def langevin_chain_figure(chain, steps: Sequence[int],
                          title: str | None = "Langevin chain: noise -> sample") -> Figure:
  """An EBM's Langevin chains: rows are chains, columns snapshots.

  Args:
    chain: [S, N, H, W, C] snapshots, S in chain order.
    steps: S Langevin step numbers.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  return _snapshot_figure(chain, steps, title, "k = ")


def buffer_figure(buffer, nrow: int = 10, title: str | None = "Replay buffer samples") -> Figure:
  """A grid of EBM replay-buffer samples.

  Args:
    buffer: [N, H, W, C] samples (e.g. the first 100 of the buffer).
    nrow: images per row.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  x = _as_batch(buffer, "buffer")
  cols = min(nrow, x.shape[0])
  rows = math.ceil(x.shape[0] / cols)
  fig = _new_figure(_INCH_PER_TILE * cols + 0.4, _INCH_PER_TILE * rows + 0.6)
  ax = fig.add_subplot()
  _imshow(ax, image_grid(x, nrow=cols))
  _bare(ax)
  if title:
    ax.set_title(title)
  return fig


def training_curves_figure(series: Mapping[str, Tuple[Sequence[float], Sequence[float]]],
                           log_scale: bool = False, title: str | None = None,
                           xlabel: str = "step", ylabel: str = "loss") -> Figure:
  """Curves such as train/validation loss (DDPM) or energies (EBM) against step.

  Args:
    series: name -> (steps [T], values [T]); one line per entry, in order.
    log_scale: log y axis; "symlog" when some value is <= 0 (EBM energies
      can be negative), so the option never fails.
    title: axes title.
    xlabel: x axis label.
    ylabel: y axis label.

  Returns:
    A figure with one axes.
  """
  if not series:
    raise ValueError("series is empty")
  fig = _new_figure(6.0, 3.8)
  ax = fig.add_subplot()
  all_positive = True
  for name, (steps, values) in series.items():
    steps, values = np.asarray(steps), np.asarray(values, np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
      raise ValueError(f"series {name!r}: steps {steps.shape} and values {values.shape} "
                       "must be equal-length 1-D")
    finite = values[np.isfinite(values)]
    all_positive &= bool(np.all(finite > 0))
    ax.plot(steps, values, label=name, linewidth=1.2, marker="o" if len(steps) == 1 else None)
  if log_scale:
    ax.set_yscale("log" if all_positive else "symlog")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  return fig


def confusion_matrix_figure(matrix, class_names: Sequence[str],
                            title: str | None = "Confusion matrix (rows: true class)") -> Figure:
  """A classifier's confusion matrix, counts written in the cells.

  Args:
    matrix: [K, K] counts, matrix[i, j] = examples of class i predicted as j.
    class_names: K names.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  m = np.asarray(matrix)
  k = len(class_names)
  if m.shape != (k, k):
    raise ValueError(f"matrix must be [{k}, {k}] for {k} class names, got {m.shape}")
  fig = _new_figure(0.55 * k + 2.5, 0.55 * k + 1.8)
  ax = fig.add_subplot()
  rows = np.maximum(m.sum(axis=1, keepdims=True), 1)
  ax.imshow(m / rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  for i in range(k):
    for j in range(k):
      ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=6,
              color="white" if m[i, j] / rows[i, 0] > 0.5 else "black")
  ax.set_xticks(range(k), [str(c) for c in class_names], rotation=90, fontsize=7)
  ax.set_yticks(range(k), [str(c) for c in class_names], fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  return fig
