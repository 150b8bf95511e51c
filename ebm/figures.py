"""The figures of the EBM course assignment, from arrays.

Langevin chains, the replay buffer, restorations (inpainting and denoising)
and the energy histograms of in- and out-of-distribution images. Pure:
arrays in, `matplotlib.figure.Figure` out, built with `core.plots` (no
pyplot, no file I/O). `figure_set` runs the chains of a trained model and
builds the whole set; `launch.figure_mode` gives it the data and writes the
PNGs.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
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


# ----------------------------------------------------------------------------
# The figure set of a trained model: chains run, figures built.

NUM_ROWS = 10              # chains / samples per figure row
OOD_IMAGES = 500           # energy histogram: test images (and as many of each OOD set)


def _host(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def figure_set(task, params, key, test_images, buffer, class_names: Sequence[str],
               split: str = "test") -> Iterator[tuple[str, Figure]]:
  """The course's figures of a trained EBM, as (name, figure) pairs.

  langevin_chain (NUM_ROWS chains from uniform noise, captured inside the
  compiled chain), class_grid (class-conditional EBMs: NUM_ROWS chains of
  each class on E(x, y), one program), inpainting and denoising of the first
  NUM_ROWS test images (`task.restoration_run`), energy_histogram (E(x) of
  the test images and of each `ebm.ood.make_ood_sets` set made from them),
  buffer (the replay buffer's entries given).

  Args:
    task: an `ebm.task.EBMTask`.
    params: its sampling parameters.
    key: the figures' PRNG key.
    test_images: [N, H, W, C] test images in [-1, 1], N >= NUM_ROWS (OOD_IMAGES wanted).
    buffer: [M, H, W, C] replay-buffer entries to show.
    class_names: the dataset's class names (class_grid).
    split: the test split's name, for titles.
  """
  steps = int(task.sample_options()["steps"])
  _, chain = task.sample(params, key, NUM_ROWS, steps=steps, capture_every=1)
  chain = _host(chain)   # [steps + 1, N, H, W, C], entry 0 the uniform noise
  idx = np.unique(np.linspace(0, steps, NUM_ROWS).round().astype(int))
  yield "langevin_chain", langevin_chain_figure(
      chain[idx], idx.tolist(), title=f"Langevin chains from noise ({steps} steps)")
  k_grid, k_restore, k_ood = jax.random.split(jax.random.fold_in(key, 1), 3)
  if task.num_classes:   # one program: NUM_ROWS chains of each class
    labels = jnp.repeat(jnp.arange(task.num_classes, dtype=jnp.int32), NUM_ROWS)
    grid = _host(task.sample(params, k_grid, task.num_classes * NUM_ROWS, steps=steps,
                             label=labels))
    yield "class_grid", plots.class_grid_figure(
        grid.reshape((task.num_classes, NUM_ROWS) + grid.shape[1:]), class_names,
        title=f"Class-conditional samples, Langevin on E(x, y) ({steps} steps)")
  x_test = jnp.asarray(test_images)
  r = task.restoration
  restored = jax.tree.map(_host, task.restoration_run(params, x_test[:NUM_ROWS], k_restore))
  top, left, height, width = r.box
  yield "inpainting", restoration_figure(
      restored["inpaint"]["corrupted"], restored["inpaint"]["restored"], x_test[:NUM_ROWS],
      title=f"Box inpainting ({height}x{width} at ({top}, {left}), {r.inpaint_steps} Langevin "
            f"steps; box MSE {restored['inpaint']['mse']:.3f} vs "
            f"{restored['inpaint']['mse_corrupted']:.3f} corrupted)")
  yield "denoising", restoration_figure(
      restored["denoise"]["corrupted"], restored["denoise"]["restored"], x_test[:NUM_ROWS],
      title=f"Denoising (sigma {r.denoise_sigma:g}, {r.denoise_steps} noise-free steps; "
            f"MSE {restored['denoise']['mse']:.4f} vs "
            f"{restored['denoise']['mse_corrupted']:.4f} corrupted)")
  energies = jax.tree.map(_host, task.ood_energies(params, x_test, k_ood))
  energies = {"test": energies.pop("test"), **energies}   # the test split first
  yield "energy_histogram", energy_histogram_figure(
      energies, title=f"E(x) of {len(x_test)} {split} images vs OOD sets")
  buffer = _host(buffer)
  yield "buffer", buffer_figure(buffer, title=f"Replay buffer ({len(buffer)} entries)")
