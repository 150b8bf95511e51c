"""The workdir layer: a run's task and abstract state, its checkpoints, its config.

Every mode goes through here to get from a config or a workdir to a state:

  prepare(config, task=None, device=None)   the task, mesh, keys and the
      abstract state with its shardings (no parameters yet);
  restore_or_init / restore(run, ckpt)       the newest (or
      `config.train.restore_step`) checkpoint restored straight into those
      shardings, or a fresh state;
  load_config(workdir)                       the config a workdir was trained
      with, keys added to the code since then filled with their defaults;
  load_trained(workdir, config=None, device=None)   (run, state) of a trained
      workdir, restored straight onto `device` (one device: sampling,
      evaluation, serving) or replicated over the mesh (default); with
      `sample.ema_sigma_rel` > 0 its EMA is the post-hoc one of that width
      (`launch.posthoc_ema`).

Workdir contract (see launch/train.py for what the loop writes):
  config.json           the resolved config of the latest start (written only
                        after the checkpoint was restored)
  checkpoints/<step>/   Orbax checkpoints (state, config, loop metadata)
  ema_snapshots/<step>/ power-EMA snapshots for post-hoc EMA (launch/posthoc_ema.py)

Reading never creates anything: a mode that loads a workdir without
`checkpoints/` stops with one line before Orbax would create the folder.
A damaged checkpoint stops with one line naming it, the newest intact step
and the flag that resumes from it (`--config.train.restore_step=N`); the
files are left as they are.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
from etils import epath

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import sharding
from launch import tasks
from launch.checkpoint import CheckpointError


@dataclasses.dataclass
class Run:
  """What the modes need about a prepared run.

  Attributes:
    task: the built task.
    mesh: the 1-D data mesh.
    state_shardings: a sharding per leaf of the state (replicated over the
      mesh, or all on one device after `prepare(..., device=d)`).
    abstract_state: the shapes of the task's `init_state` (`tasks.abstract_state`).
    batch_sharding: batches split over the mesh's data axis.
    keys: the run's "init", "train" and "sample" keys (from config.seed).
  """
  task: Any
  mesh: jax.sharding.Mesh
  state_shardings: Any
  abstract_state: Any
  batch_sharding: jax.sharding.NamedSharding
  keys: dict[str, jax.Array]

  @property
  def restore_target(self) -> Any:
    """The abstract state with its shardings: the Orbax restore target."""
    return checkpoint_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)


def run_keys(seed: int) -> dict[str, jax.Array]:
  root = jax.random.key(seed)
  init, train, sample = jax.random.split(root, 3)
  return {"init": init, "train": train, "sample": sample}


def example_batch(task, batch_size: int = 1) -> dict[str, np.ndarray]:
  """A zero batch of the task's shapes (for `init_state` and `eval_shape`)."""
  return {"image": np.zeros((batch_size, *task.image_shape), np.float32),
          "label": np.zeros((batch_size,), np.int32)}


def prepare(config, task=None, *, device: jax.Device | None = None) -> Run:
  """Builds the task (unless given, e.g. by `config.validate`), the mesh and the abstract state.

  Args:
    config: a validated config.
    task: the task `config_lib.validate(config)` returned, so it is not built twice.
    device: put every leaf of the state on this one device (default:
      replicate it over the mesh, as the training loop needs).
  """
  task = tasks.build(config) if task is None else task
  mesh = sharding.make_mesh(config.mesh.data_axis)
  keys = run_keys(config.seed)
  abstract = tasks.abstract_state(task, keys["init"], example_batch(task))
  where = (sharding.replicated(mesh) if device is None
           else jax.sharding.SingleDeviceSharding(device))
  state_shardings = jax.tree.map(lambda _: where, abstract)
  return Run(task=task, mesh=mesh, state_shardings=state_shardings, abstract_state=abstract,
             batch_sharding=sharding.data_sharded(mesh), keys=keys)


def init_state(run: Run):
  """A fresh state in the run's shardings."""
  return jax.jit(run.task.init_state, out_shardings=run.state_shardings)(
      run.keys["init"], example_batch(run.task))


def restore_step(config) -> int | None:
  """config.train.restore_step, None for "the newest" (-1, or a config from before the key)."""
  step = config.train.get("restore_step", -1)
  return None if step == -1 else int(step)


def checkpointer(workdir: str | os.PathLike, *, must_exist: bool = False,
                 **kwargs) -> checkpoint_lib.Checkpointer:
  """The workdir's Checkpointer; with must_exist, a one-line error instead of creating checkpoints/.

  Raises:
    CheckpointError: must_exist and the workdir holds no checkpoints/.
  """
  directory = epath.Path(workdir) / "checkpoints"
  if must_exist and not directory.exists():
    what = "does not exist" if not epath.Path(workdir).exists() else "holds no checkpoints/"
    raise CheckpointError(f"no checkpoint to load: workdir {workdir} {what}; train first with "
                          "--mode train, or check --workdir")
  return checkpoint_lib.Checkpointer(workdir, **kwargs)


def restore(run: Run, ckpt: checkpoint_lib.Checkpointer, step: int | None = None
            ) -> tuple[Any, dict]:
  """Checkpoint `step` (default newest) restored straight into the run's shardings.

  Returns:
    (state, meta), meta being the loop's metadata, e.g. {"restarts": 0}.

  Raises:
    CheckpointError: one line: no checkpoint, no checkpoint `step`, or a
      damaged one (naming it, the newest intact step and how to resume
      from it). Nothing on disk is changed.
  """
  steps = ckpt.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoint in {ckpt.directory}")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise CheckpointError(f"config.train.restore_step={step}: {ckpt.directory} holds steps "
                          f"{sorted(steps)}")
  target = run.restore_target
  try:
    return ckpt.restore(target, step)
  except CheckpointError as e:
    damage = type(e.__cause__).__name__ if e.__cause__ is not None else "unreadable"
  intact = None
  for older in sorted((s for s in steps if s < step), reverse=True):
    try:
      ckpt.restore(target, older)
    except CheckpointError:
      continue
    intact = older
    break
  where = f"checkpoint {ckpt.directory / str(step)}"
  if intact is None:
    advice = (f"no older intact checkpoint; move {ckpt.directory} away to start afresh")
  else:
    advice = (f"the newest intact checkpoint is step {intact}: resume from it with "
              f"--config.train.restore_step={intact} (training then deletes the newer steps)")
  raise CheckpointError(f"{where} cannot be restored: it is damaged or was written by a "
                        f"different config ({damage}); {advice}. Nothing on disk was changed.")


def restore_or_init(run: Run, ckpt: checkpoint_lib.Checkpointer, step: int | None = None
                    ) -> tuple[Any, dict]:
  """Checkpoint `step` (default newest) if there is a checkpoint, else a fresh state."""
  if step is None and ckpt.latest_step() is None:
    return init_state(run), {"restarts": 0}
  return restore(run, ckpt, step)


def _with_base_defaults(d: dict) -> dict:
  """`d` with the keys of the base config it lacks (added to the code since the run)."""
  from configs import base

  def merge(default, given):
    if not isinstance(default, dict) or not isinstance(given, dict):
      return given
    out = dict(default)
    for k, v in given.items():
      out[k] = merge(default.get(k), v)
    return out

  return merge(base.get_base().to_dict(), d)


def load_config(workdir: str | os.PathLike):
  """The resolved config a workdir was trained with (config.json, else its newest checkpoint).

  Keys added to the code since the run started get the base config's defaults,
  so an older workdir loads (and serves, evaluates) like a new one.

  Raises:
    CheckpointError: the workdir holds neither config.json nor checkpoints/.
  """
  workdir = epath.Path(workdir)
  path = workdir / "config.json"
  if path.exists():
    d = json.loads(path.read_text())
  elif (workdir / "checkpoints").exists():
    ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
    try:
      d = ckpt.restore_config()
    finally:
      ckpt.close()
  else:
    raise CheckpointError(f"{workdir} holds neither config.json nor checkpoints")
  return config_lib.from_dict(_with_base_defaults(d))


def load_trained(workdir: str | os.PathLike, config=None, task=None, *,
                 device: jax.Device | None = None) -> tuple[Run, Any]:
  """(run, state) of a workdir's newest checkpoint (or config.train.restore_step).

  Args:
    workdir: a trained workdir; nothing is created in it.
    config: the config to build the task from (default: `load_config(workdir)`).
    task: the task `config` builds, when the caller has it already.
    device: restore every array straight onto this device (no copy through
      the host, no replicas); default: replicated over the mesh.

  Raises:
    CheckpointError: one line, when the workdir has no or a damaged checkpoint.
  """
  config = load_config(workdir) if config is None else config
  run = prepare(config, task, device=device)
  ckpt = checkpointer(workdir, must_exist=True, async_save=False)
  try:
    state, _ = restore(run, ckpt, restore_step(config))
  finally:
    ckpt.close()
  sigma_rel = float(config.sample.get("ema_sigma_rel", 0.0))
  if sigma_rel:   # the post-hoc EMA of that width replaces the state's EMA
    from launch import posthoc_ema
    step = int(jax.device_get(state.step))
    params, _ = posthoc_ema.reconstruct(workdir, sigma_rel, step, state.ema_params)
    state = state.replace(ema_params=jax.tree.map(
        lambda new, old: jax.device_put(new, old.sharding), params, state.ema_params))
  return run, state
