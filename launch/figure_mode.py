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
              training_curve   loss (and eval_loss if logged) from metrics.jsonl
  denoiser    ink_blots        the one-step denoiser fed pure noise, next to DDPM samples
                               from the same noise when config.eval.ddpm_workdir names a
                               trained DDPM workdir (else the ink blots alone)
              training_curve
  ebm         langevin_chain   10 Langevin chains from uniform noise (sample.steps, 0 =
                               ebm.sample_steps), captured inside the compiled chain
              buffer           the first 100 replay-buffer entries
              energies         energy_pos / energy_neg over training
              training_curve
  classifier  training_curve   loss and accuracy
              confusion_matrix on the evaluation split
"""
from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ddpm import schedules
from launch import data as data_lib
from launch import figures
from launch import workdir as workdir_lib
from launch import writers

_FIGURE_STREAM = 0x464947   # fold_in tag of the figures' sampling key
NUM_ROWS = 10


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
  return figures.training_curves_figure(series, **kwargs) if series else None


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
  yield "forward_process", figures.forward_process_figure(
      _host(jnp.concatenate(x_t)), ts, title=f"Forward process q(x_t | x_0), T = {t_max}")

  # 2. A noisy training minibatch (t uniform in 1..T, as the loss draws it).
  k_t, k_eps = jax.random.split(k_batch)
  t_code = jax.random.randint(k_t, (len(x0),), 0, t_max)
  noisy = schedules.q_sample(task.schedule, jnp.asarray(x0), t_code,
                             jax.random.normal(k_eps, x0.shape))
  yield "noisy_batch", figures.noisy_batch_figure(_host(noisy), (_host(t_code) + 1).tolist())

  options = {k: v for k, v in task.sample_options().items() if k != "label"}

  # 3. Trajectories of the full ancestral chain, captured inside the compiled sampler.
  ancestral = dict(options, sampler="ancestral", steps=0)
  x_T = jax.random.normal(k_traj, (NUM_ROWS,) + tuple(task.image_shape))
  _, traj, every = _sample_rows(task, params, k_traj, ancestral, x_T, _labels(task, NUM_ROWS))
  steps = [max(t_max - (i + 1) * every, 0) for i in range(traj.shape[0])]
  yield "trajectories", figures.trajectory_figure(
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
  yield "fixed_init", figures.fixed_init_figure(
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
    yield "class_grid", figures.class_grid_figure(np.stack(rows), names, title=title)

  curve = _training_curve(workdir, ("loss", "eval_loss"), log_scale=True,
                          title="DDPM training loss")
  if curve is not None:
    yield "training_curve", curve


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
  yield "ink_blots", figures.ink_blot_figure(_host(blots), ddpm, noise=_host(noise), title=title)
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
  yield "langevin_chain", figures.langevin_chain_figure(
      chain[idx], idx.tolist(), title=f"Langevin chains from noise ({steps} steps)")
  buffer = _host(state.extras["buffer"][:100])
  yield "buffer", figures.buffer_figure(buffer, title=f"Replay buffer ({len(buffer)} entries)")
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
  yield "confusion_matrix", figures.confusion_matrix_figure(
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
