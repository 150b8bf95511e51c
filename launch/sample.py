"""`--mode sample`: N samples from a trained workdir (PNG grid + .npz of uint8).

Sampler options come from the config's `sample` section (the task builds its
sampling spec from it), so any of them can be given as flags:
`--config.sample.sampler=ddim --config.sample.steps=50`.
Class-conditional models sample config.sample.label (-1 = the classes in
turn, K = class K): `--config.sample.label=3`. Writes
`WORKDIR/samples/sample_<step>_<tag>.{png,npz}`; the .npz holds `images`
(uint8) and, for a task that states them (`task.sample_labels`, the EBM),
the `labels` the images were sampled for, so
`python -m launch.eval.evaluate --npz` scores their class accuracy.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import numpy as np
from absl import logging
from etils import epath

from launch import tasks
from launch import workdir as workdir_lib
from launch import writers
from launch.config_errors import ConfigError


@functools.lru_cache(maxsize=8)
def _compiled_sampler(task, num: int) -> Callable:
  return jax.jit(functools.partial(task.sample, num=num))


def sample_images(task, params, key, num: int) -> np.ndarray:
  """`num` images with the task's own sampling options; float [num, H, W, C] on the host."""
  out = _compiled_sampler(task, num)(params, key)
  images = out[0] if isinstance(out, tuple) else out
  return np.asarray(jax.device_get(images))


def sample_to_workdir(config, workdir: str, task=None) -> epath.Path:
  """Writes config.sample.num samples of the workdir's newest checkpoint; returns the stem.

  Raises:
    CheckpointError: (one line) the workdir has no or a damaged checkpoint;
      nothing is created in it.
  """
  from launch import figures
  task = tasks.build(config) if task is None else task
  if task.sample is None:  # before anything is read
    raise ConfigError("task", config.task, reason="--mode sample needs a task that generates "
                      "images")
  run, state = workdir_lib.load_trained(workdir, config, task, device=jax.local_devices()[0])
  params = run.task.sample_params(state)
  options = run.task.sample_options()
  key = jax.random.fold_in(run.keys["sample"], config.seed)
  images, labels = [], []
  label_rule = getattr(run.task, "sample_labels", None)   # the labels `sample` uses by default
  for start in range(0, config.sample.num, config.sample.batch_size):
    num = min(config.sample.batch_size, config.sample.num - start)
    images.append(sample_images(run.task, params, jax.random.fold_in(key, start), num))
    if label_rule is not None:
      labels.append(label_rule(num))
  uint8 = figures.to_uint8(np.concatenate(images))
  arrays = {"images": uint8}
  if labels and labels[0] is not None:
    arrays["labels"] = np.concatenate([np.asarray(l) for l in labels]).astype(np.int32)
  step = int(state.step)
  tag = "_".join(f"{k}-{v}" for k, v in sorted(options.items()) if v is not None)
  out = epath.Path(workdir) / "samples"
  out.mkdir(parents=True, exist_ok=True)
  stem = out / f"sample_{step}_{tag}" if tag else out / f"sample_{step}"
  if jax.process_index() == 0:
    grid = figures.save_grid(figures.image_grid(uint8, nrow=int(np.ceil(np.sqrt(len(uint8))))),
                             epath.Path(f"{stem}.png"))
    writers.log_image(workdir, step, f"sample/{stem.name}", grid)
    with epath.Path(f"{stem}.npz").open("wb") as f:
      np.savez_compressed(f, **arrays)
    # The file's copy: the terminal gets the print below (logging_setup.FILE_ONLY).
    logging.info("Wrote %d samples to %s.{png,npz}", len(uint8), stem, extra={"file_only": True})
    print(f"wrote {len(uint8)} samples: {stem}.png, {stem}.npz")
  return stem
