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
              energy_histogram E(x) of ebm.figures.OOD_IMAGES test images and of each
                               ebm.ood.make_ood_sets set made from them
              buffer           the first 100 replay-buffer entries
              energies         energy_pos / energy_neg over training
              training_curve
  classifier  training_curve   loss and accuracy
              confusion_matrix on the evaluation split
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from etils import epath

from core import plots
from ddpm import figures as ddpm_figures
from ebm import figures as ebm_figures
from launch import data as data_lib
from launch import figures
from launch import workdir as workdir_lib
from launch import writers

_FIGURE_STREAM = 0x464947   # fold_in tag of the figures' sampling key
NUM_ROWS = ddpm_figures.NUM_ROWS


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
# DDPM (the figures: ddpm.figures.figure_set).


def _ddpm_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  task = run.task
  train = next(data_lib.eval_batches(config.data, config.data.split, 16))["image"]
  test = next(data_lib.eval_batches(config.data, config.data.eval_split,
                                    ddpm_figures.NUM_TEST_IMAGES))
  yield from ddpm_figures.figure_set(
      task, task.sample_params(state), key, train, test["image"], test["label"],
      data_lib.class_names(config.data.name), variance=config.sample.variance,
      clip_x0=bool(config.sample.clip_x0), guidance=float(config.sample.guidance),
      split=config.data.eval_split)
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
                      label=ddpm_figures.labels_in_turn(task, NUM_ROWS))
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
    ddpm = ddpm_figures.sample_rows(ddpm_run.task, ddpm_run.task.sample_params(ddpm_state), key,
                                    options, noise,
                                    ddpm_figures.labels_in_turn(ddpm_run.task, NUM_ROWS))[0]
    sampler = ddpm_figures.describe(options, ddpm_run.task.schedule.num_timesteps)
    title = f"One-step denoiser vs DDPM ({sampler}), same noise"
  yield "ink_blots", ddpm_figures.ink_blot_figure(_host(blots), ddpm, noise=_host(noise), title=title)
  curve = _training_curve(workdir, ("loss", "eval_loss"), log_scale=True,
                          title="Denoiser training loss")
  if curve is not None:
    yield "training_curve", curve


# ----------------------------------------------------------------------------
# EBM (the figures: ebm.figures.figure_set).


def _ebm_figures(config, workdir, run, state, key) -> Iterator[tuple[str, object]]:
  task = run.task
  x_test = next(data_lib.eval_batches(config.data, config.data.eval_split,
                                      ebm_figures.OOD_IMAGES))["image"]
  yield from ebm_figures.figure_set(task, task.sample_params(state), key, x_test,
                                    state.extras["buffer"][:100],
                                    data_lib.class_names(config.data.name),
                                    split=config.data.eval_split)
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
