"""The figures of the EBM course assignment, from arrays.

Langevin chains, the replay buffer, restorations (inpainting and denoising)
and the energy histograms of in- and out-of-distribution images. Pure:
arrays in, `matplotlib.figure.Figure` out, built with `core.plots` (no
pyplot, no file I/O); `launch.figure_mode` writes them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import math

from matplotlib.figure import Figure
import numpy as np

from core import images as image_lib
from core import plots


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
  return plots.snapshot_figure(chain, steps, title, "k = ")


def buffer_figure(buffer, nrow: int = 10, title: str | None = "Replay buffer samples") -> Figure:
  """A grid of EBM replay-buffer samples.

  Args:
    buffer: [N, H, W, C] samples (e.g. the first 100 of the buffer).
    nrow: images per row.
    title: axes title.

  Returns:
    A figure with one axes.
  """
  x = plots.as_batch(buffer, "buffer")
  cols = min(nrow, x.shape[0])
  rows = math.ceil(x.shape[0] / cols)
  fig = plots.new_figure(plots.INCH_PER_TILE * cols + 0.4, plots.INCH_PER_TILE * rows + 0.6)
  ax = fig.add_subplot()
  plots.imshow(ax, image_lib.image_grid(x, nrow=cols))
  plots.bare(ax)
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
  rows = [("corrupted", plots.as_batch(corrupted, "corrupted")),
          ("restored", plots.as_batch(restored, "restored")),
          ("original", plots.as_batch(original, "original"))]
  if len({x.shape for _, x in rows}) != 1:
    raise ValueError(f"corrupted, restored and original must have one shape, got "
                     f"{[x.shape for _, x in rows]}")
  return plots.row_panels(rows, title)


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
  fig = plots.new_figure(6.0, 3.8)
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
