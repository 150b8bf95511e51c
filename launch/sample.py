"""`--mode sample`: N samples from a trained workdir (PNG grid + .npz of uint8).

Sampler options come from the config's `sample` section (the task builds its
sampling spec from it), so any of them can be given as flags:
`--config.sample.sampler=ddim --config.sample.steps=50`.
Class-conditional models sample config.sample.label (-1 = the classes in
turn, K = class K): `--config.sample.label=3`. Writes
`WORKDIR/samples/sample_<step>_<tag>.{png,npz}`; the .npz holds `images`
(uint8), for a class-conditional model the `labels` [N] the images were
sampled for (image i of the run, whatever `sample.batch_size`, gets label
i mod K with label -1), and `sampling`, a JSON string of the sampler's
settings (sampler, steps, guidance, ..., label rule, weights, step, seed),
so `python -m launch.eval.evaluate --npz` scores their class accuracy.
"""
from __future__ import annotations

import functools
import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from core import images as image_lib
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


def generate(task, params, key: jax.Array, num: int, batch_size: int, options: dict,
             labels: np.ndarray | None = None) -> np.ndarray:
  """`num` samples in batches of one compiled shape; float [num, H, W, C] on the host.

  Args:
    task: a task with `sample`.
    params: its sampling parameters.
    key: PRNG key; batch b uses fold_in(key, b * batch_size).
    num: number of samples.
    batch_size: samples per call (the last call is padded and cut).
    options: static keyword options of `task.sample` (no label).
    labels: optional [num] int labels (conditional models): image i gets
      labels[i], whatever the batch size.
  """
  bs = max(1, min(int(batch_size), num))
  fn = jax.jit(functools.partial(task.sample, num=bs, **options))
  out = []
  for start in range(0, num, bs):
    k = jax.random.fold_in(key, start)
    if labels is None:
      images = fn(params, k)
    else:
      lab = np.resize(np.asarray(labels[start:start + bs], np.int32), bs)
      images = fn(params, k, label=jnp.asarray(lab))
    images = images[0] if isinstance(images, tuple) else images
    out.append(np.asarray(jax.device_get(images))[:num - start])
  return np.concatenate(out)


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
  num = int(config.sample.num)
  # The labels of the whole run, so that image i's label does not depend on the batch size.
  labels = run.task.sample_labels(num) if run.task.num_classes else None
  labels = None if labels is None else np.asarray(jax.device_get(labels), np.int32)
  sample_kwargs = {k: v for k, v in options.items() if k != "label"}
  uint8 = image_lib.to_uint8(generate(run.task, params, key, num, config.sample.batch_size, {},
                                    labels))
  step = int(state.step)
  sampling = {**run.task.describe_sampling(sample_kwargs), "label": config.sample.label,
              "weights": "ema" if run.task.use_ema else "raw", "step": step,
              "seed": int(config.seed)}
  if run.task.use_ema and config.sample.ema_sigma_rel:   # the post-hoc EMA (launch.posthoc_ema)
    sampling["ema_sigma_rel"] = float(config.sample.ema_sigma_rel)
    options = dict(options, ema=float(config.sample.ema_sigma_rel))
  arrays = {"images": uint8, "sampling": np.array(json.dumps(sampling))}
  if labels is not None:
    arrays["labels"] = labels
  tag = "_".join(f"{k}-{v}" for k, v in sorted(options.items()) if v is not None)
  out = epath.Path(workdir) / "samples"
  out.mkdir(parents=True, exist_ok=True)
  stem = out / f"sample_{step}_{tag}" if tag else out / f"sample_{step}"
  if jax.process_index() == 0:
    grid = figures.save_grid(image_lib.image_grid(uint8, nrow=int(np.ceil(np.sqrt(len(uint8))))),
                             epath.Path(f"{stem}.png"))
    writers.log_image(workdir, step, f"sample/{stem.name}", grid)
    with epath.Path(f"{stem}.npz").open("wb") as f:
      np.savez_compressed(f, **arrays)
    # The file's copy: the terminal gets the print below (logging_setup.FILE_ONLY).
    logging.info("Wrote %d samples to %s.{png,npz}", len(uint8), stem, extra={"file_only": True})
    print(f"wrote {len(uint8)} samples: {stem}.png, {stem}.npz")
  return stem
