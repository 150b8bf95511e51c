"""The figures of the DDPM course assignments and of Ho et al. (2020), from arrays.

The forward process, noisy minibatches, reverse trajectories, fixed-x_T
samples, the ink-blot denoiser, and the paper's Figures 5-8 (rate-distortion,
progressive generation, shared latents, interpolation) plus the NLL terms.
Pure: arrays in, `matplotlib.figure.Figure` out, built with `core.plots`
(no pyplot, no file I/O). The arrays come from `ddpm.paper_figures` and the
task's samplers; `launch.figure_mode` writes them.
"""
from __future__ import annotations

from typing import Sequence

import math

from matplotlib.figure import Figure
import numpy as np

from core import images as image_lib
from core import plots


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
  x = plots.as_batch(images, "images")
  if len(timesteps) != x.shape[0]:
    raise ValueError(f"{len(timesteps)} timesteps for {x.shape[0]} images")
  k = x.shape[0]
  fig = plots.new_figure(plots.INCH_PER_TILE * 1.2 * k, plots.INCH_PER_TILE * 1.2 + 0.6)
  axes = np.atleast_1d(fig.subplots(1, k))
  for ax, img, t in zip(axes, x, timesteps):
    plots.imshow(ax, img)
    plots.bare(ax)
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
  x = plots.as_batch(images, "images")
  n = x.shape[0]
  if len(timesteps) != n:
    raise ValueError(f"{len(timesteps)} timesteps for {n} images")
  cols = min(ncols, n)
  rows = math.ceil(n / cols)
  fig = plots.new_figure(plots.INCH_PER_TILE * 1.2 * cols, (plots.INCH_PER_TILE * 1.2 + 0.3) * rows + 0.4)
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  for i, ax in enumerate(axes):
    if i >= n:
      ax.remove()
      continue
    plots.imshow(ax, x[i])
    plots.bare(ax)
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
  return plots.snapshot_figure(x_hist, steps, title, "t = ")


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
    rows.append(("x_T", plots.as_batch(np.asarray(x_T)[None], "x_T")))
  rows.append(("stochastic", plots.as_batch(stochastic, "stochastic")))
  rows.append(("deterministic", plots.as_batch(deterministic, "deterministic")))
  return plots.row_panels(rows, title)


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
    rows.append(("noise", plots.as_batch(noise, "noise")))
  rows.append(("one-step\ndenoiser", plots.as_batch(denoiser, "denoiser")))
  if ddpm is not None:
    rows.append(("DDPM", plots.as_batch(ddpm, "ddpm")))
  return plots.row_panels(rows, title)


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
  return plots.snapshot_figure(x0_hat, timesteps, title, "t = ")


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
  latents = plots.as_batch(x_t, "x_t")
  s = latents.shape[0]
  x = image_lib.to_uint8(np.asarray(samples))
  if x.ndim == 4:
    x = x[..., None]
  if x.ndim != 5 or x.shape[0] != s or x.shape[2:] != latents.shape[1:]:
    raise ValueError(f"samples must be [{s}, K, {', '.join(map(str, latents.shape[1:]))}], "
                     f"got {x.shape}")
  if len(timesteps) != s:
    raise ValueError(f"{len(timesteps)} timesteps for {s} latents")
  k = x.shape[1]
  grid = np.concatenate([latents[:, None], x], axis=1)
  fig = plots.new_figure(plots.INCH_PER_TILE * (k + 1) + 1.2, plots.INCH_PER_TILE * s + 0.8)
  ax = fig.add_subplot()
  plots.labelled_grid(ax, grid, row_labels=[f"t = {t}" for t in timesteps],
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
  a, b = plots.as_batch(x0_a, "x0_a"), plots.as_batch(x0_b, "x0_b")
  x = image_lib.to_uint8(np.asarray(decoded))
  if x.ndim == 4:
    x = x[..., None]
  if a.shape != b.shape or x.ndim != 5 or x.shape[0] != a.shape[0] or x.shape[2:] != a.shape[1:]:
    raise ValueError(f"x0_a {a.shape}, x0_b {b.shape} and decoded {x.shape} must be [P, ...] "
                     "and [P, L, ...] of the same images")
  if len(lambdas) != x.shape[1]:
    raise ValueError(f"{len(lambdas)} lambdas for {x.shape[1]} decoded columns")
  grid = np.concatenate([a[:, None], x, b[:, None]], axis=1)
  labels = ["x_0"] + [f"{lam:g}" + (" rec." if lam in (0, 1) else "") for lam in lambdas] + ["x'_0"]
  fig = plots.new_figure(plots.INCH_PER_TILE * grid.shape[1] + 0.6, plots.INCH_PER_TILE * grid.shape[0] + 0.9)
  ax = fig.add_subplot()
  plots.labelled_grid(ax, grid, col_labels=labels)
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
  fig = plots.new_figure(12.0, 3.6)
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
  fig = plots.new_figure(7.0, 4.0)
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
