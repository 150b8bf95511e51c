"""Metric writers: TensorBoard event files, `metrics.jsonl`, a progress bar.

Only process 0 writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Mapping

import jax
from etils import epath


class MetricWriter:
  """Writes scalars to `WORKDIR/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str | epath.Path, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(epath.Path(workdir) / "tb"), flush_secs=30)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str | epath.Path) -> list[dict]:
  """All records of `metrics.jsonl` (steps after a resume overwrite earlier ones)."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  by_step: dict[tuple, dict] = {}
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
      by_step[(record["step"], tuple(sorted(k for k in record if k not in ("step", "time"))))] = record
  return sorted(by_step.values(), key=lambda r: r["step"])


class Progress:
  """A progress bar with loss, steps/s and ETA (tqdm), on process 0 only."""

  def __init__(self, total: int, initial: int, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = None
    if self.enabled:
      from tqdm.auto import tqdm
      interactive = sys.stderr.isatty()
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       mininterval=0.5 if interactive else 30.0, file=sys.stderr)

  def update_to(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
    """Moves the bar to `step` (it can move back after a divergence restart)."""
    if self._bar is None:
      return
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
