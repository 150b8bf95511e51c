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


# Sample grids are saved at least this many pixels on their shorter side: a
# 2x2 grid of 28x28 images is 62 px at native size, too small to look at.
MIN_VIEW_SIDE = 256


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


def save_grid(grid, path: str | os.PathLike, min_side: int = MIN_VIEW_SIDE) -> np.ndarray:
  """Saves an `image_grid` as PNG upscaled by `upscale_nearest`; returns what it saved."""
  big = upscale_nearest(grid, min_side)
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


def restoration_figure(corrupted, restored, original,
                       title: str | None = "Restoration: corrupted | restored | original"
                       ) -> Figure:
  """Image restoration (EBM inpainting or denoising): three rows of the same N images.

  Args:
    corrupted: [N, H, W, C] the corrupted inputs (the chains' starts).
    restored: [N, H, W, C] the restorations.
    original: [N, H, W, C] the images before corruption.
    title: figure title.

  Returns:
    A figure with one axes per row: corrupted, restored, original.
  """
  rows = [("corrupted", _as_batch(corrupted, "corrupted")),
          ("restored", _as_batch(restored, "restored")),
          ("original", _as_batch(original, "original"))]
  if len({x.shape for _, x in rows}) != 1:
    raise ValueError(f"corrupted, restored and original must have one shape, got "
                     f"{[x.shape for _, x in rows]}")
  return _row_panels(rows, title)


def energy_histogram_figure(energies: Mapping[str, Sequence[float]], bins: int = 40,
                            title: str | None = "Energies: test vs OOD sets") -> Figure:
  """Overlaid histograms of per-image energies, one per set (e.g. test and OOD sets).

  Args:
    energies: set name -> [N] energies; drawn in order, on shared bins.
    bins: number of bins over the finite range of all values.
    title: axes title.

  Returns:
    A figure with one axes (x: energy, low on data; y: fraction of the set).
  """
  if not energies:
    raise ValueError("energies is empty")
  values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in energies.items()}
  finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
  if not finite.size:
    raise ValueError("no finite energies to draw")
  lo, hi = float(finite.min()), float(finite.max())
  edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
  fig = _new_figure(6.0, 3.8)
  ax = fig.add_subplot()
  for name, v in values.items():
    v = v[np.isfinite(v)]
    ax.hist(v, bins=edges, weights=np.full(v.shape, 1.0 / max(len(v), 1)), histtype="step",
            linewidth=1.4, label=f"{name} (n={len(v)})")
  ax.set_xlabel("energy E(x) (low = in-distribution)")
  ax.set_ylabel("fraction of the set")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
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


# ----------------------------------------------------------------------------
# The DDPM paper's figures (Ho et al. 2020), from `ddpm.paper_figures` and
# `ddpm.likelihood` arrays. Timesteps in labels are the paper's 1-based t.


def progressive_figure(x0_hat, timesteps: Sequence[int],
                       title: str | None = "Progressive generation: x0_hat along the chain"
                       ) -> Figure:
  """The paper's Fig. 6: rows are chains, columns the x0_hat predicted at decreasing t.

  Args:
    x0_hat: [S, N, H, W, C] predictions, S in chain order.
    timesteps: S paper timesteps t of the columns.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  return _snapshot_figure(x0_hat, timesteps, title, "t = ")


def shared_latent_figure(x_t, samples, timesteps: Sequence[int],
                         title: str | None = "Samples x_0 ~ p(x_0 | x_t) sharing x_t") -> Figure:
  """The paper's Fig. 7: per row one latent x_t, then samples of p(x_0 | x_t).

  Args:
    x_t: [S, H, W, C] the shared latents.
    samples: [S, K, H, W, C] K samples continuing each latent.
    timesteps: S paper timesteps t of the latents.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  latents = _as_batch(x_t, "x_t")
  s = latents.shape[0]
  x = to_uint8(np.asarray(samples))
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5 or x.shape[0] != s or x.shape[2:] != latents.shape[1:]:
    raise ValueError(f"samples must be [{s}, K, {', '.join(map(str, latents.shape[1:]))}], "
                     f"got {x.shape}")
  if len(timesteps) != s:
    raise ValueError(f"{len(timesteps)} timesteps for {s} latents")
  k = x.shape[1]
  grid = np.concatenate([latents[:, None], x], axis=1)
  fig = _new_figure(_INCH_PER_TILE * (k + 1) + 1.2, _INCH_PER_TILE * s + 0.8)
  ax = fig.add_subplot()
  _labelled_grid(ax, grid, row_labels=[f"t = {t}" for t in timesteps],
                 col_labels=["x_t"] + [f"sample {i + 1}" for i in range(k)])
  if title:
    ax.set_title(title)
  return fig


def interpolation_figure(x0_a, x0_b, decoded, lambdas: Sequence[float], t: int,
                         title: str | None = None) -> Figure:
  """The paper's Fig. 8: source images at both ends, decoded interpolations between.

  Args:
    x0_a, x0_b: [P, H, W, C] the pairs' images.
    decoded: [P, L, H, W, C] the decoded x_bar_t for each lambda.
    lambdas: L mixing weights (0 and 1 are the reconstructions).
    t: the paper timestep of the latents.
    title: axes title (default names t).

  Returns:
    A figure with one axes.
  """
  a, b = _as_batch(x0_a, "x0_a"), _as_batch(x0_b, "x0_b")
  x = to_uint8(np.asarray(decoded))
  if x.ndim == 4:
    x = x[..., None]
  if a.shape != b.shape or x.ndim != 5 or x.shape[0] != a.shape[0] or x.shape[2:] != a.shape[1:]:
    raise ValueError(f"x0_a {a.shape}, x0_b {b.shape} and decoded {x.shape} must be [P, ...] "
                     "and [P, L, ...] of the same images")
  if len(lambdas) != x.shape[1]:
    raise ValueError(f"{len(lambdas)} lambdas for {x.shape[1]} decoded columns")
  grid = np.concatenate([a[:, None], x, b[:, None]], axis=1)
  labels = ["x_0"] + [f"{lam:g}" + (" rec." if lam in (0, 1) else "") for lam in lambdas] + ["x'_0"]
  fig = _new_figure(_INCH_PER_TILE * grid.shape[1] + 0.6, _INCH_PER_TILE * grid.shape[0] + 0.9)
  ax = fig.add_subplot()
  _labelled_grid(ax, grid, col_labels=labels)
  ax.set_title(title or f"Interpolation through x_t, t = {t}: (1 - λ) x_t + λ x'_t, decoded")
  return fig


def rate_distortion_figure(rate, distortion, total_bpd: float,
                           title: str | None = "Rate-distortion along the reverse process"
                           ) -> Figure:
  """The paper's Fig. 5: distortion and rate vs reverse steps, and distortion vs rate.

  Args:
    rate: [T] bits/dim received once x_t is (index t = 0-based code
      timestep, T - 1 = x_T).
    distortion: [T] RMSE of x0_hat(x_t) on the [0, 255] scale.
    total_bpd: the whole bound (the rate after the last step, distortion 0).
    title: figure title.

  Returns:
    A figure with three axes.
  """
  rate, distortion = np.asarray(rate, np.float64), np.asarray(distortion, np.float64)
  if rate.shape != distortion.shape or rate.ndim != 1:
    raise ValueError(f"rate {rate.shape} and distortion {distortion.shape} must be equal [T]")
  num_t = len(rate)
  # In the order received: x_T (code T - 1) after 0 reverse steps, ..., x_1
  # (code 0) after T - 1, then x_0 itself (rate total_bpd, distortion 0) after T.
  steps = np.arange(num_t + 1)
  rate = np.append(rate[::-1], total_bpd)
  distortion = np.append(distortion[::-1], 0.0)
  fig = _new_figure(12.0, 3.6)
  axes = fig.subplots(1, 3)
  axes[0].plot(steps, distortion)
  axes[0].set_xlabel("reverse process steps (T - t)")
  axes[0].set_ylabel("distortion (RMSE [0, 255])")
  axes[1].plot(steps, rate)
  axes[1].set_xlabel("reverse process steps (T - t)")
  axes[1].set_ylabel("rate (bits/dim)")
  axes[2].plot(rate, distortion)
  axes[2].set_xlabel("rate (bits/dim)")
  axes[2].set_ylabel("distortion (RMSE [0, 255])")
  for ax in axes:
    ax.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title)
  return fig


def nll_terms_figure(terms_bpd, prior_bpd: float,
                     title: str | None = "Variational bound per term") -> Figure:
  """The bound's terms L_0 (decoder), L_1 .. L_{T-1} (KL) and L_T (prior) in bits/dim.

  Args:
    terms_bpd: [T] mean terms, index t = the paper's L_t (0 = decoder).
    prior_bpd: the mean L_T.
    title: axes title.

  Returns:
    A figure with one axes: the terms on a log scale against the paper's t,
    and their running sum from t = T down (right axis).
  """
  terms = np.asarray(terms_bpd, np.float64)
  if terms.ndim != 1:
    raise ValueError(f"terms_bpd must be [T], got {terms.shape}")
  num_t = len(terms)
  fig = _new_figure(7.0, 4.0)
  ax = fig.add_subplot()
  t = np.arange(1, num_t + 1)                 # L_{t-1} is the KL of step t
  ax.plot(t[1:], np.maximum(terms[1:], 1e-12), linewidth=1.0, label="L_{t-1} (KL)")
  ax.plot([1], [terms[0]], "o", label=f"L_0 (decoder) = {terms[0]:.3f}")
  ax.plot([num_t], [max(prior_bpd, 1e-12)], "s", label=f"L_T (prior) = {prior_bpd:.2e}")
  ax.set_yscale("log")
  ax.set_xlabel("t")
  ax.set_ylabel("bits/dim")
  ax.grid(True, alpha=0.3)
  right = ax.twinx()
  cumulative = prior_bpd + np.cumsum(terms[::-1])[::-1]
  right.plot(t, cumulative, color="gray", linestyle="--", linewidth=1.0,
             label=f"L_T + sum_(s>=t-1) L_s (total {cumulative[0]:.3f})")
  right.set_ylabel("cumulative bits/dim")
  lines = ax.get_legend_handles_labels()
  more = right.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center")
  if title:
    ax.set_title(title)
  return fig
