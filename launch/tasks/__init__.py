"""Tasks by name: the one place the loop, the server and the tools look up a task.

A task turns a validated config into an object with typed fields (never the
ConfigDict) that implements the task protocol:

  image_shape: tuple[int, int, int]   # (H, W, C) of the images it trains on
  num_classes: int                    # 0 if it does not use labels
  init_state(key, batch) -> TrainState
      Pure; the loop calls it under `jax.eval_shape` first (abstract-first)
      and then under `jax.jit` with output shardings.
  abstract_state(key, batch) -> the shapes of init_state (optional; default
      `jax.eval_shape(init_state, ...)`): a task whose fresh state reads
      something heavy (a distilled student's teacher) gives its shapes
      without reading it, so restoring a checkpoint never needs it.
  train_step(state, batch, key) -> (state, metrics)
      Pure and jit-compiled once by the loop, with `state` donated. `key` is
      the run's constant train key: the step derives its randomness with
      `jax.random.fold_in(key, state.step)`, so a resumed run repeats the same
      noise. `metrics` is a flat dict of float32 scalars that contains
      "loss" (and "grad_norm" where there are gradients).
  sample(params, key, num, **options) -> images [num, H, W, C] in [-1, 1]
      Pure; the whole chain is one compiled program. With no options it
      samples as the config's `sample` section says: the task owns its
      sampling spec (DDPM: `task.spec`, a `ddpm.samplers.SamplingSpec`; EBM:
      `task.sample_langevin`), and `sample_options()` lists those defaults.
      None for a task that generates nothing (the classifier).
  describe_sampling(options) -> the sampler fields of an evaluation record.
  use_ema: bool                       # config.sample.use_ema
  sample_params(state) -> the parameters to sample (or predict) with: the one
      place that picks EMA or trained weights.

`batch` is {"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}.

Each task module exposes `build(config) -> task` that validates every key it
reads and raises `ConfigError` naming the key and the allowed values.
"""
from __future__ import annotations

import importlib
from typing import Any

from launch.config_errors import ConfigError

# name -> module under launch.tasks exposing build(config)
_TASKS = {
    "ddpm": "launch.tasks.ddpm",
    "denoiser": "launch.tasks.ddpm",
    "ebm": "launch.tasks.ebm",
    "classifier": "launch.tasks.classifier",
}


def abstract_state(task, key, batch) -> Any:
  """The abstract (shape-only) state of `task.init_state(key, batch)`."""
  if hasattr(task, "abstract_state"):
    return task.abstract_state(key, batch)
  import jax
  return jax.eval_shape(task.init_state, key, batch)


def names() -> tuple[str, ...]:
  return tuple(sorted(_TASKS))


def build(config) -> Any:
  """Builds the task named by `config.task` (validating the config)."""
  name = config.task
  if name not in _TASKS:
    raise ConfigError("task", name, allowed=names())
  module = importlib.import_module(_TASKS[name])
  return module.build(config)
