"""Post-hoc EMA on disk: the power-EMA snapshots of a run and their reconstruction.

A DDPM config with `optim.power_ema_stds` (e.g. (0.05, 0.10), EDM2's pair)
tracks that many power-function EMAs in `state.extras["power_ema"]`
(`core.posthoc_ema`); the loop saves them every `train.ema_snapshot_every`
steps, and at the step a run stops, into

  WORKDIR/ema_snapshots/<step>/{emas,meta}     (Orbax, one per step, all kept)

A resumed run first deletes the snapshots newer than the step it resumes
from, so they always belong to the checkpointed trajectory.

`sample.ema_sigma_rel = s > 0` in the config a mode loads a trained workdir
with (`launch.workdir.load_trained`: sample, evaluate and figures take it on
the command line; the server from the model's experiment config) samples
with the average of relative width s at the restored step, reconstructed
from those snapshots (`core.posthoc_ema.reconstruct`) in place of the
state's EMA. So an EMA length is swept after training, without retraining:

  python -m launch --mode evaluate --config.sample.ema_sigma_rel=0.07 --workdir runs/X
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from core import posthoc_ema
from launch.checkpoint import CheckpointError
from launch.config_errors import ConfigError, check_int, check_number

DIRNAME = "ema_snapshots"


def check_stds(config) -> tuple[float, ...]:
  """optim.power_ema_stds, validated: distinct sigma_rel values in (0, sqrt(1/12))."""
  raw = config.optim.get("power_ema_stds", ())
  if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
    raise ConfigError("optim.power_ema_stds", raw, reason="must be a tuple of sigma_rel values")
  stds = tuple(raw)
  for s in stds:
    check_number("optim.power_ema_stds", s, 0.0, posthoc_ema.MAX_SIGMA_REL, lo_open=True,
                 hi_open=True)
  if len(set(stds)) != len(stds):
    raise ConfigError("optim.power_ema_stds", raw, reason="values must be distinct")
  return tuple(float(s) for s in stds)


def settings(config, task) -> tuple[tuple[float, ...], int, float]:
  """(optim.power_ema_stds, train.ema_snapshot_every, sample.ema_sigma_rel), validated
  together (ConfigError naming the key)."""
  stds = check_stds(config)
  every = check_int("train.ema_snapshot_every", config.train.get("ema_snapshot_every", 0), 0)
  sigma = check_number("sample.ema_sigma_rel", config.sample.get("ema_sigma_rel", 0.0), 0.0,
                       posthoc_ema.MAX_SIGMA_REL, hi_open=True)
  if stds and not getattr(task, "power_ema_stds", ()):
    raise ConfigError("optim.power_ema_stds", stds,
                      reason=f"task {config.task!r} tracks no power-function EMA (only a "
                             "DDPM or denoiser run does, not a distilled student)")
  if stds and not every:
    raise ConfigError("train.ema_snapshot_every", every,
                      reason="optim.power_ema_stds needs snapshots: set a number of steps > 0")
  if every and not stds:
    raise ConfigError("train.ema_snapshot_every", every,
                      reason="there is nothing to snapshot: set optim.power_ema_stds")
  if every and every % config.train.steps_per_dispatch:
    raise ConfigError("train.ema_snapshot_every", every,
                      reason="must be a multiple of train.steps_per_dispatch")
  if sigma and not config.sample.use_ema:
    raise ConfigError("sample.ema_sigma_rel", sigma, reason="needs sample.use_ema=True")
  return stds, every, float(sigma)


class Snapshots:
  """The snapshots of one workdir (Orbax, all kept); the loop saves them in the
  background (`async_save`), as its checkpoints."""

  def __init__(self, workdir: str | os.PathLike, *, create: bool = True,
               async_save: bool = False):
    workdir = str(workdir)
    if "://" not in workdir:
      workdir = os.path.abspath(workdir)
    self.directory = epath.Path(workdir) / DIRNAME
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=create,
                                             enable_async_checkpointing=async_save),
        item_names=("emas", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, emas: Any, stds: tuple[float, ...]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        emas=ocp.args.StandardSave(list(emas)),
        meta=ocp.args.JsonSave({"stds": list(stds), "step": int(step)})), force=True)

  def drop_after(self, step: int) -> None:
    """Deletes the snapshots newer than `step` (a run resuming from it)."""
    for s in self.steps():
      if s > step:
        logging.warning("Resuming from step %d: deleting the newer EMA snapshot %d.", step, s)
        self._manager.delete(s)

  def load(self, upto: int) -> tuple[tuple[float, ...], list[tuple[int, list[Any]]]]:
    """(stds, [(step, [ema per std])]) of every snapshot at or before step `upto`.

    Raises:
      CheckpointError: none there, unreadable ones, or snapshots of different stds.
    """
    steps = [s for s in self.steps() if s <= upto]
    if not steps:
      raise CheckpointError(f"no EMA snapshot at or before step {upto} in {self.directory} "
                            "(train with optim.power_ema_stds and train.ema_snapshot_every)")
    stds, out = None, []
    for s in steps:
      try:
        r = self._manager.restore(s, args=ocp.args.Composite(
            emas=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for bad files
        raise CheckpointError(f"EMA snapshot {self.directory / str(s)} cannot be restored "
                              f"({type(e).__name__}: {str(e)[:300]}); the files were left "
                              "untouched") from e
      these = tuple(float(v) for v in r.meta["stds"])
      if stds is not None and these != stds:
        raise CheckpointError(f"EMA snapshot {self.directory / str(s)} tracks {these}, the "
                              f"earlier ones {stds}")
      stds = these
      out.append((s, [jax.tree.map(np.asarray, t) for t in r.emas]))
    return stds, out

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def reconstruct(workdir: str | os.PathLike, sigma_rel: float, step: int, like: Any
                ) -> tuple[Any, dict[str, Any]]:
  """The post-hoc EMA of `sigma_rel` at `step` from a workdir's snapshots.

  Args:
    workdir: the trained workdir.
    sigma_rel: the average's relative width.
    step: the restored state's step (the average ends there).
    like: the state's EMA parameters (the tree structure to return).

  Returns:
    (host parameter pytree shaped like `like`, {"ema_sigma_rel", "snapshots",
    "coef_sum"}).
  """
  store = Snapshots(workdir, create=False)
  try:
    stds, snaps = store.load(step)
  finally:
    store.close()
  gammas = tuple(posthoc_ema.sigma_rel_to_gamma(s) for s in stds)
  params, coefs = posthoc_ema.reconstruct(snaps, gammas, sigma_rel, target_step=step)
  params = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(params))
  info = {"ema_sigma_rel": sigma_rel, "snapshots": len(snaps), "coef_sum": float(coefs.sum())}
  logging.info("Post-hoc EMA sigma_rel=%g at step %d from %d snapshots of %s (coefficients "
               "sum to %.4f).", sigma_rel, step, len(snaps), stds, coefs.sum())
  return params, info
