"""Orbax checkpoints of the whole `TrainState` plus the resolved config.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`. Orbax writes each
checkpoint into a temporary directory and renames it when complete, so a
process killed at any moment (even `kill -9` during a save) leaves only
complete checkpoints visible; `latest_step()` never sees a partial one.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read (corrupt or from another config)."""


class Checkpointer:
  """Saves every `every` steps (keeping `keep`), restores the newest."""

  def __init__(self, workdir: str | epath.Path, *, keep: int = 3, async_save: bool = True):
    workdir = str(workdir)
    if "://" not in workdir:  # Orbax needs absolute local paths (a relative one fails at save)
      workdir = os.path.abspath(workdir)
    self.directory = epath.Path(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "config", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config_json: str, restarts: int = 0, *,
           force: bool = False) -> bool:
    """Saves `state`, the resolved config and the loop's metadata at `step`."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                config=ocp.args.JsonSave(json.loads(config_json)),
                                meta=ocp.args.JsonSave({"restarts": restarts})),
        force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores `step` (default newest) into the shapes/shardings of `abstract_state`.

    Returns:
      (state, meta) where meta is the loop's metadata, e.g. {"restarts": 0}.

    Raises:
      CheckpointError: naming the checkpoint directory, when it is unreadable
        or its arrays do not fit the state this config builds.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for bad files
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} cannot be restored "
          f"({type(e).__name__}: {str(e)[:500]}). It is corrupt or was written by a "
          "different config; the files were left untouched.") from e
    return restored.state, dict(restored.meta)

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore())).config
    except Exception as e:
      raise CheckpointError(f"config of checkpoint {self.directory / str(step)} is unreadable "
                            f"({type(e).__name__}: {e})") from e

  def delete(self, step: int) -> None:
    """Deletes checkpoint `step` (resuming from an older one: see launch.workdir)."""
    self._manager.delete(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
