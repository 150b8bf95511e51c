"""The figures of the DDPM course assignments and of Ho et al. (2020), from arrays.

The forward process, noisy minibatches, reverse trajectories, fixed-x_T
samples, the ink-blot denoiser, and the paper's Figures 5-8 (rate-distortion,
progressive generation, shared latents, interpolation) plus the NLL terms.
The drawing functions are pure: arrays in, `matplotlib.figure.Figure` out,
built with `core.plots` (no pyplot, no file I/O). `figure_set` draws the
samples of a trained model (its samplers and `ddpm.paper_figures`, each
figure's chains one compiled program) and builds the whole set;
`launch.figure_mode` gives it the data and writes the PNGs.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import numpy as np

from core import images as image_lib
from core import plots
from ddpm import paper_figures
from ddpm import schedules


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


# ----------------------------------------------------------------------------
# The figure set of a trained model: samples drawn, figures built.

NUM_ROWS = 10              # chains / samples per figure row
PAPER_ROWS = 8             # progressive generation: chains
SHARED_SAMPLES = 5         # samples per shared latent
INTERP_PAIRS = 3           # interpolation: pairs of test images
RD_IMAGES = 16             # rate-distortion: test images
NUM_TEST_IMAGES = max(RD_IMAGES, 2 * INTERP_PAIRS)   # what `figure_set` wants of test_images


def labels_in_turn(task, num: int, label: int | None = None):
  """None for unconditional models; `label` for all, or the classes in turn."""
  if not task.num_classes:
    return None
  if label is not None:
    return jnp.full((num,), label, jnp.int32)
  return jnp.arange(num, dtype=jnp.int32) % task.num_classes


def describe(options: dict, num_timesteps: int) -> str:
  """A sampler's options in a title, e.g. "DDIM eta=0, 50 steps"."""
  if options["sampler"] == "ddim":
    return f"DDIM eta={options['eta']:g}, {options['steps'] or num_timesteps} steps"
  return f"{options['sampler']}, {num_timesteps} steps"


def _host(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def sample_rows(task, params, key, options: dict, noise, labels):
  """NUM_ROWS samples of a `ddpm.task.DDPMTask` and their chain, from `noise`.

  Every call has the same signature (noise, labels and a capture given), so
  the calls of the figures with equal sampler options share one compiled
  program.

  Returns:
    (images [N, H, W, C], trajectory [S, N, H, W, C], capture_every) on the host.
  """
  n_steps = (options["steps"] or task.schedule.num_timesteps) if options["sampler"] == "ddim" \
      else task.schedule.num_timesteps
  every = math.ceil(n_steps / NUM_ROWS)
  images, traj = task.sample(params, key, NUM_ROWS, capture_every=every, noise=noise,
                             label=labels, **options)
  return _host(images), _host(traj), every


def figure_set(task, params, key, train_images, test_images, test_labels,
               class_names: Sequence[str], *, variance: str, clip_x0: bool,
               guidance: float, split: str = "test") -> Iterator[tuple[str, Figure]]:
  """The course's and the paper's figures of a trained DDPM, as (name, figure) pairs.

  forward_process, noisy_batch, trajectories, fixed_init, class_grid
  (conditional models), then `paper_figure_set`. Timesteps in titles are the
  paper's t (t = 0 the data, t = T pure noise; code index t - 1).

  Args:
    task: a `ddpm.task.DDPMTask`.
    params: its sampling parameters.
    key: the figures' PRNG key.
    train_images: [>= 1, H, W, C] training images in [-1, 1] (16 are shown noised).
    test_images, test_labels: >= NUM_TEST_IMAGES test images and their labels.
    class_names: the dataset's class names (class_grid).
    variance, clip_x0, guidance: the paper figures' chains (the config's).
    split: the test split's name, for titles.
  """
  t_max = task.schedule.num_timesteps
  k_fwd, k_batch, k_traj, k_init, k_grid = jax.random.split(key, 5)
  x0 = train_images

  # 1. Forward process of one image; paper t = 0 is x_0, t >= 1 is code index t - 1.
  ts = [round(i * t_max / 10) for i in range(10)]
  eps = jax.random.normal(k_fwd, (1,) + x0.shape[1:])
  x_t = [x0[:1]] + [schedules.q_sample(task.schedule, x0[:1], jnp.array([t - 1]), eps)
                    for t in ts[1:]]
  yield "forward_process", forward_process_figure(
      _host(jnp.concatenate(x_t)), ts, title=f"Forward process q(x_t | x_0), T = {t_max}")

  # 2. A noisy training minibatch (t uniform in 1..T, as the loss draws it).
  k_t, k_eps = jax.random.split(k_batch)
  t_code = jax.random.randint(k_t, (len(x0),), 0, t_max)
  noisy = schedules.q_sample(task.schedule, jnp.asarray(x0), t_code,
                             jax.random.normal(k_eps, x0.shape))
  yield "noisy_batch", noisy_batch_figure(_host(noisy), (_host(t_code) + 1).tolist())

  options = {k: v for k, v in task.sample_options().items() if k != "label"}

  # 3. Trajectories of the full ancestral chain, captured inside the compiled sampler.
  ancestral = dict(options, sampler="ancestral", steps=0)
  x_T = jax.random.normal(k_traj, (NUM_ROWS,) + tuple(task.image_shape))
  _, traj, every = sample_rows(task, params, k_traj, ancestral, x_T,
                               labels_in_turn(task, NUM_ROWS))
  steps = [max(t_max - (i + 1) * every, 0) for i in range(traj.shape[0])]
  yield "trajectories", trajectory_figure(
      traj, steps, title=f"Reverse process x_T -> x_0 (ancestral, T = {t_max})")

  # 4. One fixed x_T: stochastic vs deterministic sampler.
  x_T = jnp.tile(jax.random.normal(k_init, (1,) + tuple(task.image_shape)), (NUM_ROWS, 1, 1, 1))
  if options["sampler"] == "ddim":
    stochastic = dict(options, eta=options["eta"] or 1.0)
    deterministic = dict(options, eta=0.0)
  else:
    stochastic = ancestral
    deterministic = dict(options, sampler="ddim", steps=0, eta=0.0)
  label = task.spec.label
  fixed_labels = labels_in_turn(task, NUM_ROWS, label if label is not None else 0)
  k_s, k_d = jax.random.split(k_init)
  samples_s = sample_rows(task, params, k_s, stochastic, x_T, fixed_labels)[0]
  samples_d = sample_rows(task, params, k_d, deterministic, x_T, fixed_labels)[0]
  yield "fixed_init", fixed_init_figure(
      samples_s, samples_d, x_T=_host(x_T[0]),
      title=f"Samples from one fixed x_T: {describe(stochastic, t_max)} (stochastic) vs "
            f"{describe(deterministic, t_max)}")

  # 5. Class-conditional grid, one class per call.
  if task.num_classes:
    rows = []
    for c, k in enumerate(jax.random.split(k_grid, task.num_classes)):
      noise = jax.random.normal(k, (NUM_ROWS,) + tuple(task.image_shape))
      rows.append(sample_rows(task, params, k, options, noise,
                              labels_in_turn(task, NUM_ROWS, c))[0])
    title = f"Class-conditional samples ({describe(options, t_max)}"
    title += f", guidance {options['guidance']:g})" if task.null_label else ")"
    yield "class_grid", plots.class_grid_figure(np.stack(rows), class_names, title=title)

  yield from paper_figure_set(task, params, key, test_images, test_labels, variance=variance,
                              clip_x0=clip_x0, guidance=guidance, split=split)


def paper_figure_set(task, params, key, test_images, test_labels, *, variance: str,
                     clip_x0: bool, guidance: float, split: str = "test"
                     ) -> Iterator[tuple[str, Figure]]:
  """Progressive generation, shared x_t, interpolation, rate-distortion (paper t in titles).

  The paper's Figs. 5-8 (`ddpm.paper_figures`), each one compiled program.
  Chains use `variance` and `clip_x0`. Conditional models generate classes
  in turn (progressive), the source image's class (shared x_t), the first
  image's class of each pair (interpolation) and each test image's class
  (rate-distortion), with `guidance` when the model has a null label.
  """
  t_max = task.schedule.num_timesteps
  chain = {"variance": variance, "clip_x0": bool(clip_x0)}
  guidance = float(guidance) if task.null_label else 1.0
  k_prog, k_shared, k_interp, k_rd = jax.random.split(jax.random.fold_in(key, 5), 4)
  x_test = jnp.asarray(test_images)
  y_test = jnp.asarray(test_labels, jnp.int32)

  def run(fn, labels, *args, **kwargs):
    """fn(eps_fn, schedule, *args, **kwargs) compiled, the parameters an argument."""
    def program(params, labels, *args):
      return fn(task.eps_fn(params, labels, guidance), task.schedule, *args, **kwargs)
    return jax.tree.map(np.asarray, jax.device_get(jax.jit(program)(params, labels, *args)))

  # Fig. 6: x0_hat every T/10 steps of PAPER_ROWS ancestral chains.
  capture = np.unique(np.linspace(t_max - 1, 0, NUM_ROWS).round().astype(int))[::-1]
  x_T = jax.random.normal(k_prog, (PAPER_ROWS,) + tuple(task.image_shape))
  _, x0_hat = run(functools.partial(paper_figures.progressive_generation,
                                    capture_t=tuple(capture.tolist()), **chain),
                  labels_in_turn(task, PAPER_ROWS), x_T, k_prog)
  yield "progressive", progressive_figure(
      x0_hat, (capture + 1).tolist(), title=f"Progressive generation: x0_hat along the "
                                            f"ancestral chain (T = {t_max})")

  # Fig. 7: one test image at the paper's t = T, 3T/4, T/2, T/4, SHARED_SAMPLES chains each.
  paper_t = sorted({max(1, round(f * t_max)) for f in (1.0, 0.75, 0.5, 0.25)}, reverse=True)
  lab = None if not task.num_classes else jnp.repeat(y_test[:1], len(paper_t) * SHARED_SAMPLES)
  x_t, samples = run(functools.partial(paper_figures.shared_latent_samples,
                                       latent_t=tuple(t - 1 for t in paper_t),
                                       num_samples=SHARED_SAMPLES, **chain),
                     lab, x_test[0], k_shared)
  yield "shared_latent", shared_latent_figure(
      x_t, samples, paper_t, title="Samples x_0 ~ p(x_0 | x_t) sharing x_t (bottom: least noise)")

  # Fig. 8: INTERP_PAIRS pairs of test images through x_t at the paper's t = T/2.
  lambdas = tuple(np.linspace(0.0, 1.0, 11).round(2).tolist())
  t_interp = max(1, t_max // 2)
  a, b = x_test[0:2 * INTERP_PAIRS:2], x_test[1:2 * INTERP_PAIRS:2]
  lab = (None if not task.num_classes else
         jnp.repeat(y_test[0:2 * INTERP_PAIRS:2], len(lambdas)))
  decoded, _ = run(functools.partial(paper_figures.interpolate, t=t_interp - 1, lambdas=lambdas,
                                     **chain), lab, a, b, k_interp)
  yield "interpolation", interpolation_figure(a, b, decoded, lambdas, t_interp)

  # Fig. 5: rate (the bound's terms, ddpm.likelihood) and distortion of x0_hat.
  lab = y_test[:RD_IMAGES] if task.num_classes else None
  rate, distortion, bound = run(functools.partial(paper_figures.rate_distortion_curve, **chain),
                                lab, x_test[:RD_IMAGES], k_rd)
  total = float(np.mean(bound.total_bpd))
  yield "rate_distortion", rate_distortion_figure(
      rate, distortion, total,
      title=f"Rate-distortion on {len(bound.total_bpd)} {split} images "
            f"(bound {total:.3f} bits/dim over {math.prod(task.image_shape)} dims)")
