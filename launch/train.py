"""The one training loop, for every task.

`train_and_evaluate(config, workdir)` builds the task's state abstract-first,
resumes from the newest complete checkpoint in the workdir if there is one,
and runs the task's jit-compiled `train_step` data-parallel over every device
of a 1-D mesh. It owns every side effect: metric writers and the progress bar,
checkpoints (every N steps, at the end, and on SIGTERM/SIGINT), sample grids
and the loss curve, the non-finite check and the divergence guard. It never
looks inside the task's parameters or extras.

Workdir contract:
  config.json           the resolved config of the latest start
  checkpoints/<step>/   Orbax checkpoints (state, config, loop metadata)
  metrics.jsonl         one JSON record per log step
  tb/                   TensorBoard event files
  samples/step_<N>.png  sample grids
  figures/loss_curve.png
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from core import images as image_lib
from core import plots
from launch import config as config_lib
from launch import data as data_lib
from launch import sample as sample_lib
from launch import posthoc_ema as posthoc_lib
from launch import sharding
from launch import workdir as workdir_lib
from launch import writers


class TrainingDiverged(RuntimeError):
  """The loss or a guarded metric became non-finite or exceeded its bound."""


def make_train_fn(task, state_shardings, batch_sharding, steps_per_dispatch: int) -> Callable:
  """jit(train_step), or a `lax.scan` over `steps_per_dispatch` steps; state donated.

  Returns a function (state, batches, key) -> (state, metrics [k]) where
  batches have a leading axis of size k <= steps_per_dispatch. The loop passes
  k = steps_per_dispatch except for a shorter dispatch at the end of a run (or
  after resuming at a step that is not a multiple of it); each k compiles once.
  """
  del steps_per_dispatch  # the batches' leading axis says how many steps to run
  repl = sharding.replicated(batch_sharding.mesh)

  def multi_step(state, batches, key):
    if jax.tree.leaves(batches)[0].shape[0] == 1:
      state, metrics = task.train_step(state, jax.tree.map(lambda b: b[0], batches), key)
      return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(lambda s, b: task.train_step(s, b, key), state, batches)

  return jax.jit(multi_step, in_shardings=(state_shardings, _stack_sharding(batch_sharding), repl),
                 out_shardings=(state_shardings, repl), donate_argnums=0)


def _stack_sharding(batch_sharding):
  return jax.sharding.NamedSharding(
      batch_sharding.mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec))


class _StopFlag:
  """Set by SIGTERM/SIGINT; the loop saves a checkpoint and returns."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def install(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def uninstall(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _first_bad_step(history: list[tuple[int, dict[str, np.ndarray]]], guard) -> tuple[int, str, float] | None:
  """(step, metric, value) of the first non-finite / out-of-bound metric, else None."""
  guarded = set(guard.metrics) if guard.enabled else set()
  for end_step, metrics in history:
    k = len(next(iter(metrics.values())))
    for i in range(k):
      step = end_step - k + i + 1
      for name, values in metrics.items():
        value = float(values[i])
        if name in ("loss", "grad_norm") or name in guarded:
          if not np.isfinite(value):
            return step, name, value
          if name in guarded and abs(value) > guard.bound:
            return step, name, value
  return None


def _sample_grid(run: workdir_lib.Run, config, state, workdir: epath.Path, step: int) -> None:
  from launch import figures
  if run.task.sample is None or not config.train.num_samples:
    return
  images = sample_lib.sample_images(run.task, run.task.sample_params(state), run.keys["sample"],
                                    config.train.num_samples)
  if jax.process_index() == 0:
    grid = image_lib.image_grid(image_lib.to_uint8(images), nrow=int(np.ceil(np.sqrt(len(images)))))
    out = workdir / "samples"
    out.mkdir(parents=True, exist_ok=True)
    grid = figures.save_grid(grid, out / f"step_{step}.png")
    writers.log_image(workdir, step, "samples", grid)


def _loss_curve(workdir: epath.Path) -> None:
  from launch import figures
  records = writers.read_metrics(workdir)
  series = {}
  for name in ("loss", "eval_loss", "energy_pos", "energy_neg"):
    points = [(r["step"], r[name]) for r in records if name in r]
    if points:
      steps, values = zip(*points)
      series[name] = (np.asarray(steps), np.asarray(values))
  if series:
    (workdir / "figures").mkdir(parents=True, exist_ok=True)
    fig = plots.training_curves_figure(series, log_scale="loss" in series)
    figures.save_figure(fig, workdir / "figures" / "loss_curve.png")


def train_and_evaluate(config, workdir: str, task=None) -> Any:
  """Trains `config` in `workdir`, resuming from its newest checkpoint.

  `task` is the one `config_lib.validate(config)` built (built here if None).
  With config.train.restore_step = N >= 0 it resumes from checkpoint N and
  deletes the newer checkpoints (the way out of a damaged one).

  Returns:
    The final `TrainState` (replicated over the mesh).

  Raises:
    TrainingDiverged: naming the step, when the loss or gradient norm is
      non-finite (or a guarded metric diverges past the guard's restarts).
      The last good checkpoint is kept.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run = workdir_lib.prepare(config, task)
  task, mesh = run.task, run.mesh
  total = config.train.steps
  k = config.train.steps_per_dispatch
  sharding.check_batch_size(config.train.batch_size, mesh)
  source = data_lib.make_train_batches(
      config.data, global_batch_size=config.train.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  if tuple(source.info.image_shape) != tuple(task.image_shape):
    raise ValueError(f"data gives images of shape {source.info.image_shape} but the task "
                     f"expects {task.image_shape}; check config.data.pad_to_32")

  ckpt = workdir_lib.checkpointer(workdir, keep=config.train.keep_ckpts)
  try:
    restore_from = workdir_lib.restore_step(config)
    state, meta = workdir_lib.restore_or_init(run, ckpt, restore_from)
  except BaseException:
    ckpt.close()  # its background threads would otherwise die noisily at exit
    raise
  if restore_from is not None:
    for newer in (s for s in ckpt.all_steps() if s > restore_from):
      logging.warning("Resuming from step %d: deleting the newer checkpoint %d.",
                      restore_from, newer)
      ckpt.delete(newer)
  _, snapshot_every, _ = posthoc_lib.settings(config, task)
  snapshots = posthoc_lib.Snapshots(workdir, async_save=True) if snapshot_every else None
  if snapshots is not None:
    snapshots.drop_after(int(jax.device_get(state.step)))
  # the newest snapshot on disk (a finished run started again saves none)
  last_snapshot = max(snapshots.steps(), default=None) if snapshots is not None else None
  config_json = config_lib.to_json(config)
  if jax.process_index() == 0:  # only now: a failed restore leaves the workdir as it was
    (workdir / "config.json").write_text(config_json)
  restarts = int(meta.get("restarts", 0))
  step = int(jax.device_get(state.step))
  if step:
    logging.info("Resumed from %s at step %d.", ckpt.directory, step)

  train_fn = make_train_fn(task, run.state_shardings, run.batch_sharding, k)
  stacked_sharding = _stack_sharding(run.batch_sharding)
  writer = writers.MetricWriter(workdir)
  progress = writers.Progress(total, step)
  stop = _StopFlag().install()

  def train_key():
    return jax.random.fold_in(run.keys["train"], restarts) if restarts else run.keys["train"]

  def save(at_step: int, force: bool = False):
    ckpt.save(at_step, state, config_json, restarts, force=force)

  def snapshot(at_step: int):
    nonlocal last_snapshot
    if snapshots is not None and last_snapshot != at_step:
      snapshots.save(at_step, task.ema_snapshot(state), task.power_ema_stds)
      last_snapshot = at_step

  key = train_key()
  pending: list[tuple[int, dict]] = []
  last_log_time, last_log_step = time.perf_counter(), step
  batches = source.iterate(step)
  budget_s = float(config.train.time_budget_s)
  loop_start = time.perf_counter()
  out_of_time = False
  first_step = step  # at least one dispatch per invocation, whatever the budget
  try:
    while step < total and stop.signal is None:
      if budget_s and step > first_step and time.perf_counter() - loop_start >= budget_s:
        out_of_time = True
        break
      # A shorter dispatch ends a run whose length is not a multiple of k, and
      # realigns a run resumed at such a step, so that log and checkpoint steps
      # (multiples of k) are still reached.
      n = min(k - step % k, total - step)
      local = [next(batches)[1] for _ in range(n)]
      stacked = {name: np.stack([b[name] for b in local]) for name in local[0]}
      state, metrics = train_fn(state, sharding.global_batch(stacked, stacked_sharding), key)
      step += n
      pending.append((step, metrics))
      if snapshot_every and step % snapshot_every == 0 and step < total:
        snapshot(step)

      log_now = step % config.train.log_every == 0 if config.train.log_every else False
      ckpt_now = step % config.train.ckpt_every == 0 if config.train.ckpt_every else False
      if log_now or ckpt_now or step >= total:
        history = [(s, jax.device_get(m)) for s, m in pending]
        pending = []
        bad = _first_bad_step(history, config.guard)
        if bad is not None:
          bad_step, name, value = bad
          last_good = ckpt.latest_step()
          can_restart = config.guard.enabled and restarts < config.guard.max_restarts
          if not can_restart:
            raise TrainingDiverged(
                f"training diverged at step {bad_step}: {name}={value:g}"
                + (f" (guard bound {config.guard.bound:g}, {restarts} restart(s) used)"
                   if config.guard.enabled else "")
                + f". The last good checkpoint (step {last_good}) is kept in {ckpt.directory}.")
          restarts += 1
          logging.warning("Diverged at step %d (%s=%g): restoring step %s, lr_scale x%g, "
                          "reseeding (restart %d of %d).", bad_step, name, value,
                          last_good if last_good is not None else "0 (initial state)",
                          config.guard.lr_factor, restarts, config.guard.max_restarts)
          ckpt.wait()
          state, _ = workdir_lib.restore_or_init(run, ckpt)
          # lr_factor ** restarts: each restart lowers the rate further, also
          # when it restores the same checkpoint as the previous one did.
          state = state.replace(lr_scale=jnp.asarray(config.guard.lr_factor ** restarts,
                                                     jnp.float32))
          key = train_key()
          step = int(jax.device_get(state.step))
          if snapshots is not None:
            snapshots.wait()
            snapshots.drop_after(step)
            last_snapshot = max(snapshots.steps(), default=None)
          batches = source.iterate(step)
          writer.write(step, {"guard_restart": restarts, "lr_scale": float(state.lr_scale)})
          continue
        if log_now or step >= total:
          now = time.perf_counter()
          means = {name: float(np.mean(np.concatenate([m[name] for _, m in history])))
                   for name in history[-1][1]}
          means["steps_per_sec"] = (step - last_log_step) / max(now - last_log_time, 1e-9)
          means["elapsed_s"] = now - loop_start  # wall time of this invocation's loop
          last_log_time, last_log_step = now, step
          writer.write(step, means)
          progress.update_to(step, {
              "loss": means["loss"], "steps/s": means["steps_per_sec"]})
        if ckpt_now and step < total:
          save(step)
          _loss_curve_safe(workdir)
        if config.train.sample_every and step % config.train.sample_every == 0 and step < total:
          _sample_grid(run, config, state, workdir, step)
    if pending:  # stopped by a signal between log points: check before saving
      history = [(s, jax.device_get(m)) for s, m in pending]
      bad = _first_bad_step(history, config.guard)
      if bad is not None:
        raise TrainingDiverged(f"training diverged at step {bad[0]}: {bad[1]}={bad[2]:g}. "
                               f"The last good checkpoint (step {ckpt.latest_step()}) is kept.")
    if ckpt.latest_step() != step:
      save(step, force=True)
    snapshot(step)   # where the run stops: the end, a time budget or a signal
    ckpt.wait()
    if snapshots is not None:
      snapshots.wait()
    if stop.signal is not None:
      logging.warning("Stopped by signal %d at step %d; checkpoint saved in %s.",
                      stop.signal, step, ckpt.directory)
    elif step >= total or out_of_time:
      if out_of_time:
        logging.warning("Stopped at step %d of %d: train.time_budget_s=%g reached; "
                        "checkpoint saved in %s.", step, total, budget_s, ckpt.directory)
      if jax.process_index() == 0:
        _loss_curve_safe(workdir)
      _sample_grid(run, config, state, workdir, step)
  finally:
    stop.uninstall()
    progress.close()
    writer.close()
    ckpt.wait()
    ckpt.close()
    if snapshots is not None:
      snapshots.close()
  return state


def distill_and_evaluate(config, workdir: str, task=None) -> Any:
  """`--mode distill`: `train_and_evaluate` of a config that distils a teacher.

  The same loop (the task's train step is consistency distillation,
  `ddpm.distill`); this mode only insists that config.distill.teacher_workdir
  names the teacher, so a distillation is never run as plain training.
  """
  from launch.config_errors import ConfigError
  if config.task != "ddpm" or not config.distill.teacher_workdir:
    raise ConfigError("distill.teacher_workdir", config.distill.teacher_workdir,
                      reason="--mode distill needs a trained DDPM workdir to distil (e.g. "
                             "configs/distill_fashion_mnist.py)")
  task = config_lib.validate(config) if task is None else task
  if not (epath.Path(workdir) / "checkpoints").exists():
    task.teacher_params()   # a bad teacher stops here, before the workdir is made
  return train_and_evaluate(config, workdir, task)


def _loss_curve_safe(workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    _loss_curve(workdir)
