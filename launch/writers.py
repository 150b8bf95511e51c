"""Metric writers: TensorBoard event files, `metrics.jsonl`, a progress bar.

Only process 0 writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable, Mapping

import jax
import numpy as np
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

  def write_image(self, step: int, tag: str, image) -> None:
    """Logs a uint8 image [H, W, C] or [H, W] (a sample grid) to TensorBoard."""
    if self.enabled:
      _add_image(self._tb, step, tag, image)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _add_image(tb, step: int, tag: str, image) -> None:
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got {x.dtype}")
  if x.ndim == 2:
    x = x[..., None]
  tb.add_image(tag, x, int(step), dataformats="HWC")


def log_image(workdir: str | epath.Path, step: int, tag: str, image, *,
              enabled: bool | None = None) -> None:
  """Logs one image to WORKDIR/tb without a `MetricWriter` at hand (process 0 only).

  Opens its own event file, with a suffix naming the tag and step so that it
  never shares a file name with the run's metric writer (tensorboardX names
  files by the second).
  """
  if not (jax.process_index() == 0 if enabled is None else enabled):
    return
  from tensorboardX import SummaryWriter
  suffix = "." + "".join(ch if ch.isalnum() else "_" for ch in tag) + f".{int(step)}"
  tb = SummaryWriter(str(epath.Path(workdir) / "tb"), filename_suffix=suffix)
  try:
    _add_image(tb, step, tag, image)
  finally:
    tb.close()


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
  """A progress bar with loss, steps/s and ETA (tqdm), on process 0 only.

  steps/s and the ETA are the bar's own measurement from its first update on:
  the first update comes after the first compiled step has run (at a log
  step, where the loop has waited for the device), so neither counts compile
  time, and the ETA is always (total - step) / steps/s, the rate it shows.
  Before the second update there is no rate yet ("?"). A "steps/s" in the
  postfix given to `update_to` is replaced by this measurement.
  """

  BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

  def __init__(self, total: int, initial: int, *, enabled: bool | None = None,
               clock: Callable[[], float] = time.perf_counter, file=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.total = int(total)
    self.step = int(initial)
    self._clock = clock
    self._start: tuple[float, int] | None = None   # (time, step) of the first update
    self._last: tuple[float, int] | None = None    # (time, step) of the latest update
    self._bar = None
    if self.enabled:
      from tqdm.auto import tqdm
      file = sys.stderr if file is None else file
      interactive = hasattr(file, "isatty") and file.isatty()
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       mininterval=0.5 if interactive else 30.0, file=file,
                       bar_format=self.BAR_FORMAT)

  def steps_per_sec(self) -> float | None:
    """Steps per second since the first update (None before two updates)."""
    if self._start is None or self._last is None or self._last[1] <= self._start[1]:
      return None
    (t0, n0), (t1, n1) = self._start, self._last
    return (n1 - n0) / max(t1 - t0, 1e-9)

  def eta_s(self) -> float | None:
    """Seconds left at the measured rate: (total - step) / steps_per_sec()."""
    rate = self.steps_per_sec()
    return None if rate is None else max(self.total - self.step, 0) / rate

  def update_to(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
    """Moves the bar to `step` (it can move back after a divergence restart)."""
    now = self._clock()
    if self._start is None or step < self.step:  # first update, or a restart moved it back
      self._start = (now, int(step))
    self._last = (now, int(step))
    self.step = int(step)
    if self._bar is None:
      return
    from tqdm import tqdm
    rate, eta = self.steps_per_sec(), self.eta_s()
    fields = {k: f"{v:.4g}" for k, v in (postfix or {}).items() if k != "steps/s"}
    fields["steps/s"] = "?" if rate is None else f"{rate:.3g}"
    fields["eta"] = "?" if eta is None else tqdm.format_interval(eta)
    self._bar.set_postfix(fields, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
