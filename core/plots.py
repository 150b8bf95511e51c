"""Matplotlib figures shared by every family: the drawing helpers, class grids, curves.

Every figure function takes arrays and returns a `matplotlib.figure.Figure`
built directly (no `pyplot`, no global state) on an Agg canvas, so figures
can be made from any thread (the HTTP server); nothing here writes a file
(`launch.figures.save_figure` / `figure_png` do). The family figures are
`ddpm.figures` and `ebm.figures`, built from the helpers here.

Images are NHWC, either float in [-1, 1] (the models' range) or uint8; they
go through `core.images.to_uint8` before display. One-channel images are
shown in gray. Grids of images are drawn as one `image_grid` per axes, with
the row and column labels as tick labels (ten rows of ten snapshots is one
axes, not a hundred), which keeps rendering fast.
"""
from __future__ import annotations

from typing import Mapping, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from core import images as image_lib

INCH_PER_TILE = 0.8  # figure inches per image tile of a grid


def new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(max(width, 1.5), max(height, 1.0)), layout="constrained")
  FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot, no backend switching
  return fig


def as_batch(images, name: str) -> np.ndarray:
  x = image_lib.to_uint8(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be [N, H, W, 1 or 3] (or [N, H, W]), got {x.shape}")
  return x


def imshow(ax, image_uint8: np.ndarray) -> None:
  if image_uint8.shape[-1] == 1:
    ax.imshow(image_uint8[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
  else:
    ax.imshow(image_uint8, interpolation="nearest")


def bare(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def labelled_grid(ax, images: np.ndarray, row_labels=None, col_labels=None,
                   padding: int = 2) -> None:
  """Draws [R, C, H, W, ch] uint8 images as one grid, labels as tick labels."""
  r, c, h, w = images.shape[:4]
  imshow(ax, image_lib.image_grid(images.reshape((r * c,) + images.shape[2:]), nrow=c, padding=padding))
  bare(ax)
  if col_labels is not None:
    ax.set_xticks([padding + j * (w + padding) + (w - 1) / 2 for j in range(c)],
                  [str(s) for s in col_labels], fontsize=8)
    ax.tick_params(axis="x", length=0, labeltop=True, labelbottom=False)
  if row_labels is not None:
    ax.set_yticks([padding + i * (h + padding) + (h - 1) / 2 for i in range(r)],
                  [str(s) for s in row_labels], fontsize=8)
    ax.tick_params(axis="y", length=0)


def row_panels(rows: Sequence[Tuple[str, np.ndarray]], title: str | None) -> Figure:
  """One axes per (label, [N, H, W, C] uint8) row, stacked vertically."""
  n_max = max(x.shape[0] for _, x in rows)
  fig = new_figure(INCH_PER_TILE * n_max + 1.5, (INCH_PER_TILE + 0.3) * len(rows) + 0.4)
  axes = np.atleast_1d(fig.subplots(len(rows), 1))
  for ax, (label, x) in zip(axes, rows):
    labelled_grid(ax, x[None])
    ax.set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
  if title:
    fig.suptitle(title)
  return fig


def snapshot_figure(hist, steps, title, step_prefix) -> Figure:
  """[S, N, H, W, C] snapshots -> N rows (samples) x S columns (steps)."""
  x = np.asarray(hist)
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5:
    raise ValueError(f"snapshots must be [S, N, H, W, C], got shape {x.shape}")
  s, n = x.shape[:2]
  if len(steps) != s:
    raise ValueError(f"{len(steps)} step labels for {s} snapshots")
  x = np.swapaxes(image_lib.to_uint8(x), 0, 1)  # [N, S, H, W, C]
  fig = new_figure(INCH_PER_TILE * s + 1.0, INCH_PER_TILE * n + 0.8)
  ax = fig.add_subplot()
  labelled_grid(ax, x, row_labels=range(n), col_labels=[f"{step_prefix}{t}" for t in steps])
  if title:
    ax.set_title(title)
  return fig


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
  fig = new_figure(INCH_PER_TILE * m + 1.6, INCH_PER_TILE * k + 0.6)
  ax = fig.add_subplot()
  labelled_grid(ax, image_lib.to_uint8(x), row_labels=class_names)
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
  fig = new_figure(6.0, 3.8)
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
  fig = new_figure(0.55 * k + 2.5, 0.55 * k + 1.8)
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
