"""`--mode figures`: the course's and the DDPM paper's figures of a trained workdir.

  python -m launch --config configs/X.py --workdir runs/X --mode figures

Writes PNGs into WORKDIR/figures/ and prints the files written. Timesteps in
titles are the paper's t (t = 0 is the data, t = T pure noise).

  ddpm        forward_process  one training image x_t ~ q(x_t | x_0), t = 0, T/10, ..., 9T/10
              noisy_batch      a minibatch of noisy training inputs, t in the titles
              trajectories     10 chains x 10 snapshots of the full ancestral sampler,
                               captured inside the compiled chain
              fixed_init       10 samples from one x_T: the stochastic sampler (the
                               config's if stochastic, else ancestral) and DDIM eta = 0
                               (the config's number of steps)
              class_grid       conditional models: 10 samples of each class (config's sampler)
              progressive      the paper's Fig. 6: x0_hat along 8 ancestral chains
              shared_latent    Fig. 7: one test image noised to t = T, 3T/4, T/2, T/4,
                               5 reverse chains from each x_t
              interpolation    Fig. 8: 3 pairs of test images through x_t at t = T/2,
                               lambda = 0, 0.1, ..., 1
              rate_distortion  Fig. 5: bits/dim received vs RMSE of x0_hat on 16 test images
              training_curve   loss (and eval_loss if logged) from metrics.jsonl
  denoiser    ink_blots        the one-step denoiser fed pure noise, next to DDPM samples
                               from the same noise when config.eval.ddpm_workdir names a
                               trained DDPM workdir (else the ink blots alone)
              training_curve
  ebm         langevin_chain   10 Langevin chains from uniform noise (sample.steps, 0 =
                               ebm.sample_steps), captured inside the compiled chain
              class_grid       class-conditional (JEM) EBMs: 10 samples of each class from
                               noise, chains on E(x, y), one compiled program
              inpainting       box inpainting of 10 test images (eval.inpaint_box,
                               eval.inpaint_steps): rows corrupted | restored | original
              denoising        the same for denoising (eval.denoise_sigma, eval.denoise_steps)
              energy_histogram E(x) of OOD_IMAGES test images and of each
                               ebm.ood.make_ood_sets set made from them
              buffer           the first 100 replay-buffer entries
              energies         energy_pos / energy_neg over training
              training_curve
  classifier  training_curve   loss and accuracy
              confusion_matrix on the evaluation split
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from core import plots
from ddpm import figures as ddpm_figures
from ddpm import schedules
from ebm import figures as ebm_figures
from launch import data as data_lib
from launch import figures
from launch import workdir as workdir_lib
from launch import writers

_FIGURE_STREAM = 0x464947   # fold_in tag of the figures' sampling key
NUM_ROWS = 10
OOD_IMAGES = 500           # EBM energy histogram: test images (and as many of each OOD set)


def _labels(task, num: int, label: int | None = None):
  """None for unconditional models; `label` for all, or classes in turn."""
  if not task.num_classes:
    return None
  if label is not None:
    return jnp.full((num,), label, jnp.int32)
  return jnp.arange(num, dtype=jnp.int32) % task.num_classes


def _host(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def _training_curve(workdir, names, **kwargs):
  records = writers.read_metrics(epath.Path(workdir))
  series = {}
  for name in names:
    points = [(r["step"], r[name]) for r in records if name in r]
    if points:
      steps, values = zip(*points)
      series[name] = (np.asarray(steps), np.asarray(values))
  return plots.training_curves_figure(series, **kwargs) if series else None


# ----------------------------------------------------------------------------
# DDPM.


def _describe(options: dict, num_timesteps: int) -> str:
  if options["sampler"] == "ddim":
    return f"DDIM eta={options['eta']:g}, {options['steps'] or num_timesteps} steps"
  return f"{options['sampler']}, {num_timesteps} steps"


def _sample_rows(task, params, key, options: dict, noise, labels):
  """NUM_ROWS DDPM samples and their chain, from `noise`.

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


def _ddpm_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  task = run.task
  params = task.sample_params(state)
  t_max = task.schedule.num_timesteps
  k_fwd, k_batch, k_traj, k_init, k_grid = jax.random.split(key, 5)
  x0 = next(data_lib.eval_batches(config.data, config.data.split, 16))["image"]

  # 1. Forward process of one image; paper t = 0 is x_0, t >= 1 is code index t - 1.
  ts = [round(i * t_max / 10) for i in range(10)]
  eps = jax.random.normal(k_fwd, (1,) + x0.shape[1:])
  x_t = [x0[:1]] + [schedules.q_sample(task.schedule, x0[:1], jnp.array([t - 1]), eps)
                    for t in ts[1:]]
  yield "forward_process", ddpm_figures.forward_process_figure(
      _host(jnp.concatenate(x_t)), ts, title=f"Forward process q(x_t | x_0), T = {t_max}")

  # 2. A noisy training minibatch (t uniform in 1..T, as the loss draws it).
  k_t, k_eps = jax.random.split(k_batch)
  t_code = jax.random.randint(k_t, (len(x0),), 0, t_max)
  noisy = schedules.q_sample(task.schedule, jnp.asarray(x0), t_code,
                             jax.random.normal(k_eps, x0.shape))
  yield "noisy_batch", ddpm_figures.noisy_batch_figure(_host(noisy), (_host(t_code) + 1).tolist())

  options = {k: v for k, v in task.sample_options().items() if k != "label"}

  # 3. Trajectories of the full ancestral chain, captured inside the compiled sampler.
  ancestral = dict(options, sampler="ancestral", steps=0)
  x_T = jax.random.normal(k_traj, (NUM_ROWS,) + tuple(task.image_shape))
  _, traj, every = _sample_rows(task, params, k_traj, ancestral, x_T, _labels(task, NUM_ROWS))
  steps = [max(t_max - (i + 1) * every, 0) for i in range(traj.shape[0])]
  yield "trajectories", ddpm_figures.trajectory_figure(
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
  fixed_labels = _labels(task, NUM_ROWS, label if label is not None else 0)
  k_s, k_d = jax.random.split(k_init)
  samples_s = _sample_rows(task, params, k_s, stochastic, x_T, fixed_labels)[0]
  samples_d = _sample_rows(task, params, k_d, deterministic, x_T, fixed_labels)[0]
  yield "fixed_init", ddpm_figures.fixed_init_figure(
      samples_s, samples_d, x_T=_host(x_T[0]),
      title=f"Samples from one fixed x_T: {_describe(stochastic, t_max)} (stochastic) vs "
            f"{_describe(deterministic, t_max)}")

  # 5. Class-conditional grid, one class per call.
  if task.num_classes:
    rows = []
    for c, k in enumerate(jax.random.split(k_grid, task.num_classes)):
      noise = jax.random.normal(k, (NUM_ROWS,) + tuple(task.image_shape))
      rows.append(_sample_rows(task, params, k, options, noise, _labels(task, NUM_ROWS, c))[0])
    names = data_lib.class_names(config.data.name)
    title = f"Class-conditional samples ({_describe(options, t_max)}"
    title += f", guidance {options['guidance']:g})" if task.null_label else ")"
    yield "class_grid", plots.class_grid_figure(np.stack(rows), names, title=title)

  yield from _paper_figures(config, task, params, key)

  curve = _training_curve(workdir, ("loss", "eval_loss"), log_scale=True,
                          title="DDPM training loss")
  if curve is not None:
    yield "training_curve", curve


# The DDPM paper's Figs. 5-8 (ddpm.paper_figures), each one compiled program.
PAPER_ROWS = 8             # progressive generation: chains
SHARED_SAMPLES = 5         # samples per shared latent
INTERP_PAIRS = 3           # interpolation: pairs of test images
RD_IMAGES = 16             # rate-distortion: test images


def _paper_figures(config, task, params, key) -> Iterator[tuple[str, object]]:
  """Progressive generation, shared x_t, interpolation, rate-distortion (paper t in titles).

  Chains use the config's ancestral variance and clip_x0. Conditional models
  generate classes in turn (progressive), the source image's class (shared
  x_t), the first image's class of each pair (interpolation) and each test
  image's class (rate-distortion), with the config's guidance when the model
  has a null label.
  """
  from ddpm import paper_figures   # pylint: disable=g-import-not-at-top
  t_max = task.schedule.num_timesteps
  chain = {"variance": config.sample.variance, "clip_x0": bool(config.sample.clip_x0)}
  guidance = float(config.sample.guidance) if task.null_label else 1.0
  k_prog, k_shared, k_interp, k_rd = jax.random.split(jax.random.fold_in(key, 5), 4)
  n_test = max(RD_IMAGES, 2 * INTERP_PAIRS)
  test = next(data_lib.eval_batches(config.data, config.data.eval_split, n_test))
  x_test, y_test = jnp.asarray(test["image"]), jnp.asarray(test["label"], jnp.int32)

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
                  _labels(task, PAPER_ROWS), x_T, k_prog)
  yield "progressive", ddpm_figures.progressive_figure(
      x0_hat, (capture + 1).tolist(), title=f"Progressive generation: x0_hat along the "
                                            f"ancestral chain (T = {t_max})")

  # Fig. 7: one test image at the paper's t = T, 3T/4, T/2, T/4, SHARED_SAMPLES chains each.
  paper_t = sorted({max(1, round(f * t_max)) for f in (1.0, 0.75, 0.5, 0.25)}, reverse=True)
  lab = None if not task.num_classes else jnp.repeat(y_test[:1], len(paper_t) * SHARED_SAMPLES)
  x_t, samples = run(functools.partial(paper_figures.shared_latent_samples,
                                       latent_t=tuple(t - 1 for t in paper_t),
                                       num_samples=SHARED_SAMPLES, **chain),
                     lab, x_test[0], k_shared)
  yield "shared_latent", ddpm_figures.shared_latent_figure(
      x_t, samples, paper_t, title="Samples x_0 ~ p(x_0 | x_t) sharing x_t (bottom: least noise)")

  # Fig. 8: INTERP_PAIRS pairs of test images through x_t at the paper's t = T/2.
  lambdas = tuple(np.linspace(0.0, 1.0, 11).round(2).tolist())
  t_interp = max(1, t_max // 2)
  a, b = x_test[0:2 * INTERP_PAIRS:2], x_test[1:2 * INTERP_PAIRS:2]
  lab = (None if not task.num_classes else
         jnp.repeat(y_test[0:2 * INTERP_PAIRS:2], len(lambdas)))
  decoded, _ = run(functools.partial(paper_figures.interpolate, t=t_interp - 1, lambdas=lambdas,
                                     **chain), lab, a, b, k_interp)
  yield "interpolation", ddpm_figures.interpolation_figure(a, b, decoded, lambdas, t_interp)

  # Fig. 5: rate (the bound's terms, ddpm.likelihood) and distortion of x0_hat.
  lab = y_test[:RD_IMAGES] if task.num_classes else None
  rate, distortion, bound = run(functools.partial(paper_figures.rate_distortion_curve, **chain),
                                lab, x_test[:RD_IMAGES], k_rd)
  total = float(np.mean(bound.total_bpd))
  yield "rate_distortion", ddpm_figures.rate_distortion_figure(
      rate, distortion, total,
      title=f"Rate-distortion on {len(bound.total_bpd)} {config.data.eval_split} images "
            f"(bound {total:.3f} bits/dim over {math.prod(task.image_shape)} dims)")


# ----------------------------------------------------------------------------
# The one-step denoiser.


def _denoiser_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  task = run.task
  noise = jax.random.normal(key, (NUM_ROWS,) + tuple(task.image_shape))
  blots = task.sample(task.sample_params(state), key, NUM_ROWS, noise=noise,
                      label=_labels(task, NUM_ROWS))
  ddpm, title = None, "One-step 50/50 denoiser fed pure noise: ink blots"
  if config.eval.ddpm_workdir:
    ddpm_config = workdir_lib.load_config(config.eval.ddpm_workdir)
    if ddpm_config.task != "ddpm":
      raise ValueError(f"config.eval.ddpm_workdir={config.eval.ddpm_workdir!r} holds a "
                       f"{ddpm_config.task!r} run, not a DDPM")
    ddpm_run, ddpm_state = workdir_lib.load_trained(config.eval.ddpm_workdir, ddpm_config,
                                                    device=jax.local_devices()[0])
    if tuple(ddpm_run.task.image_shape) != tuple(task.image_shape):
      raise ValueError(f"config.eval.ddpm_workdir={config.eval.ddpm_workdir!r} makes images "
                       f"of shape {ddpm_run.task.image_shape}, the denoiser {task.image_shape}")
    options = {k: v for k, v in ddpm_run.task.sample_options().items() if k != "label"}
    ddpm = _sample_rows(ddpm_run.task, ddpm_run.task.sample_params(ddpm_state), key, options,
                        noise, _labels(ddpm_run.task, NUM_ROWS))[0]
    sampler = _describe(options, ddpm_run.task.schedule.num_timesteps)
    title = f"One-step denoiser vs DDPM ({sampler}), same noise"
  yield "ink_blots", ddpm_figures.ink_blot_figure(_host(blots), ddpm, noise=_host(noise), title=title)
  curve = _training_curve(workdir, ("loss", "eval_loss"), log_scale=True,
                          title="Denoiser training loss")
  if curve is not None:
    yield "training_curve", curve


# ----------------------------------------------------------------------------
# EBM.


def _ebm_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  task = run.task
  steps = int(task.sample_options()["steps"])
  params = task.sample_params(state)
  _, chain = task.sample(params, key, NUM_ROWS, steps=steps, capture_every=1)
  chain = _host(chain)   # [steps + 1, N, H, W, C], entry 0 the uniform noise
  idx = np.unique(np.linspace(0, steps, NUM_ROWS).round().astype(int))
  yield "langevin_chain", ebm_figures.langevin_chain_figure(
      chain[idx], idx.tolist(), title=f"Langevin chains from noise ({steps} steps)")
  k_grid, k_restore, k_ood = jax.random.split(jax.random.fold_in(key, 1), 3)
  if task.num_classes:   # one program: NUM_ROWS chains of each class
    labels = jnp.repeat(jnp.arange(task.num_classes, dtype=jnp.int32), NUM_ROWS)
    grid = _host(task.sample(params, k_grid, task.num_classes * NUM_ROWS, steps=steps,
                             label=labels))
    yield "class_grid", plots.class_grid_figure(
        grid.reshape((task.num_classes, NUM_ROWS) + grid.shape[1:]),
        data_lib.class_names(config.data.name),
        title=f"Class-conditional samples, Langevin on E(x, y) ({steps} steps)")
  x_test = jnp.asarray(next(data_lib.eval_batches(config.data, config.data.eval_split,
                                                  OOD_IMAGES))["image"])
  r = task.restoration
  restored = jax.tree.map(_host, task.restoration_run(params, x_test[:NUM_ROWS], k_restore))
  top, left, height, width = r.box
  yield "inpainting", ebm_figures.restoration_figure(
      restored["inpaint"]["corrupted"], restored["inpaint"]["restored"], x_test[:NUM_ROWS],
      title=f"Box inpainting ({height}x{width} at ({top}, {left}), {r.inpaint_steps} Langevin "
            f"steps; box MSE {restored['inpaint']['mse']:.3f} vs "
            f"{restored['inpaint']['mse_corrupted']:.3f} corrupted)")
  yield "denoising", ebm_figures.restoration_figure(
      restored["denoise"]["corrupted"], restored["denoise"]["restored"], x_test[:NUM_ROWS],
      title=f"Denoising (sigma {r.denoise_sigma:g}, {r.denoise_steps} noise-free steps; "
            f"MSE {restored['denoise']['mse']:.4f} vs "
            f"{restored['denoise']['mse_corrupted']:.4f} corrupted)")
  energies = jax.tree.map(_host, task.ood_energies(params, x_test, k_ood))
  energies = {"test": energies.pop("test"), **energies}   # the test split first
  yield "energy_histogram", ebm_figures.energy_histogram_figure(
      energies, title=f"E(x) of {len(x_test)} {config.data.eval_split} images vs OOD sets")
  buffer = _host(state.extras["buffer"][:100])
  yield "buffer", ebm_figures.buffer_figure(buffer, title=f"Replay buffer ({len(buffer)} entries)")
  energies = _training_curve(workdir, ("energy_pos", "energy_neg"), ylabel="energy",
                             title="Energies over training (low on data)")
  if energies is not None:
    yield "energies", energies
  curve = _training_curve(workdir, ("loss",), log_scale=True, title="EBM training loss")
  if curve is not None:
    yield "training_curve", curve


# ----------------------------------------------------------------------------
# Classifier.


def _classifier_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  del key
  task, params = run.task, run.task.sample_params(state)
  curve = _training_curve(workdir, ("loss", "accuracy"), ylabel="loss / accuracy",
                          title="Classifier training")
  if curve is not None:
    yield "training_curve", curve
  predict = jax.jit(lambda p, x: task.apply(p, x)[1].argmax(-1))
  k = task.num_classes
  matrix = np.zeros((k, k), np.int64)
  for batch in data_lib.eval_batches(config.data, config.data.eval_split, 500):
    np.add.at(matrix, (batch["label"], _host(predict(params, batch["image"]))), 1)
  names = data_lib.class_names(config.data.name)
  accuracy = np.trace(matrix) / max(matrix.sum(), 1)
  yield "confusion_matrix", plots.confusion_matrix_figure(
      matrix, names, title=f"Confusion matrix, {config.data.eval_split} split "
                           f"(accuracy {accuracy:.3f})")


_MAKERS = {"ddpm": _ddpm_figures, "denoiser": _denoiser_figures, "ebm": _ebm_figures,
           "classifier": _classifier_figures}


def figures_workdir(config, workdir: str, task=None) -> list[epath.Path]:
  """Draws the figures of the newest checkpoint of `workdir` into WORKDIR/figures/.

  Returns:
    The PNG paths written (in order).
  """
  if config.task not in _MAKERS:
    raise ValueError(f"--mode figures knows tasks {sorted(_MAKERS)}, not {config.task!r}")
  run, state = workdir_lib.load_trained(workdir, config, task, device=jax.local_devices()[0])
  key = jax.random.fold_in(run.keys["sample"], _FIGURE_STREAM)
  out = epath.Path(workdir) / "figures"
  written = []
  for name, fig in _MAKERS[config.task](config, workdir, run, state, key):
    path = out / f"{name}.png"
    if jax.process_index() == 0:
      figures.save_figure(fig, path)
      print(f"wrote {path}")
    written.append(path)
  return written
