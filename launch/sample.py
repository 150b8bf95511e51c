"""`--mode sample`: N samples from a trained workdir (PNG grid + .npz of uint8).

Sampler options come from the config's `sample` section, so any of them can
be given as flags: `--config.sample.sampler=ddim --config.sample.steps=50`.
Writes `WORKDIR/samples/sample_<step>_<tag>.{png,npz}`.
"""
from __future__ import annotations

import jax
import numpy as np
from absl import logging
from etils import epath

from launch import checkpoint as checkpoint_lib
from launch import train as train_lib
from launch import writers


def load_trained(config, workdir: str):
  """(task, state) of the newest checkpoint in `workdir`."""
  run = train_lib.prepare(config)
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  try:
    if ckpt.latest_step() is None:
      raise checkpoint_lib.CheckpointError(
          f"no checkpoint in {ckpt.directory}: train first with --mode train")
    state, _ = train_lib.restore_or_init(run, ckpt)
  finally:
    ckpt.close()
  return run, state


def sample_to_workdir(config, workdir: str) -> epath.Path:
  from launch import figures
  run, state = load_trained(config, workdir)
  if run.task.sample is None:
    raise ValueError(f"task {config.task!r} does not generate images")
  params = state.ema_params if config.sample.use_ema else state.params
  options = run.task.sample_options(config)
  key = jax.random.fold_in(run.keys["sample"], config.seed)
  images = []
  for start in range(0, config.sample.num, config.sample.batch_size):
    num = min(config.sample.batch_size, config.sample.num - start)
    images.append(train_lib.sample_images(run.task, params, jax.random.fold_in(key, start),
                                          num, options))
  uint8 = figures.to_uint8(np.concatenate(images))
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
      np.savez_compressed(f, images=uint8)
    # The file's copy: the terminal gets the print below (logging_setup.FILE_ONLY).
    logging.info("Wrote %d samples to %s.{png,npz}", len(uint8), stem, extra={"file_only": True})
    print(f"wrote {len(uint8)} samples: {stem}.png, {stem}.npz")
  return stem
