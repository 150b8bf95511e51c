"""The server's bounded request queue and its one device worker.

The event loop never touches the device. A request handler validates its
request into a `Plan`, `submit`s a `Job` (which fails at once with `QueueFull`
when `limits.queue_size` requests are already waiting, or `NotReady` while the
programs are compiling) and awaits the job's future with the request's
deadline (`wait`).

One worker thread owns the device: it compiles and runs the warm-up programs,
then repeatedly takes the oldest waiting job together with every other
waiting job for the same model and static options (sampler, steps, ...) that
still fits in the largest bucket — waiting up to `limits.batch_wait_ms` for
more to arrive — pads their images to the smallest bucket that holds them,
runs the compiled program once, and hands each job its slice. Jobs whose
deadline passed before they started are dropped unrun.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import math
import threading
import time
from typing import Any, Mapping

import numpy as np
from absl import logging

from launch.serve.models import ServedModel
from launch.serve.schema import WARMUP, Limits, Plan


class QueueFull(Exception):
  """The queue holds `limits.queue_size` requests (answered 429)."""

  def __init__(self, retry_after: int, waiting: int):
    super().__init__(f"the queue is full ({waiting} requests waiting); retry after "
                     f"{retry_after} s")
    self.retry_after = retry_after


class NotReady(Exception):
  """The server is warming up, failed or stopping (answered 503)."""

  def __init__(self, status: str, retry_after: int, detail: str = ""):
    super().__init__(f"the server is not ready ({status}){': ' + detail if detail else ''}")
    self.status = status
    self.retry_after = retry_after


class Timeout(Exception):
  """The request's time limit passed before its images were ready (answered 503)."""

  def __init__(self, limit_s: float, retry_after: int):
    super().__init__(f"the request did not finish within the server's limit of {limit_s:g} s")
    self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Result:
  """The images of one job and how they were made.

  Attributes:
    images: float32 [num, H, W, C] in [-1, 1] (or the program's other output per image:
      `ServedModel.output_shape`).
    batch_images: images in the device call (this job's and others', before padding).
    bucket: the padded size of the device call.
    batch_requests: jobs in the device call.
    queued_s: seconds from submission to the start of the device call.
    run_s: seconds of the device call (compiling included, if it compiled).
  """
  images: np.ndarray
  batch_images: int
  bucket: int
  batch_requests: int
  queued_s: float
  run_s: float


@dataclasses.dataclass(eq=False)
class Job:
  """One request in the queue."""
  model: ServedModel
  plan: Plan
  seed: int
  num: int
  deadline: float
  loop: asyncio.AbstractEventLoop
  future: asyncio.Future
  submitted: float
  cancelled: bool = False

  @property
  def key(self) -> tuple:
    return (self.model.name, self.plan.static)


def _deliver(job: Job, value: Any, error: BaseException | None = None) -> None:
  def settle():
    if not job.future.done():
      if error is not None:
        job.future.set_exception(error)
      else:
        job.future.set_result(value)
  try:
    job.loop.call_soon_threadsafe(settle)
  except RuntimeError:  # the request's event loop is gone (client test harness closed)
    pass


def _malloc_trim():
  """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc.malloc_trim
  except (OSError, AttributeError):
    return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
  """Returns the C heap's free pages to the OS (glibc `malloc_trim(0)`; elsewhere nothing).

  Decoding uploads, encoding PNGs and compiling programs on many threads leave
  glibc's per-thread arenas holding freed memory that RSS still counts; the
  worker calls this when the queue goes idle after work, so RSS after a
  burst returns to the level of what is live (the models, the compiled
  programs, at most `limits.max_programs` per model). A few ms.
  """
  if _MALLOC_TRIM is not None:
    _MALLOC_TRIM(0)


class Batcher:
  """The queue and the worker of a set of served models (see the module docstring)."""

  def __init__(self, models: Mapping[str, ServedModel], limits: Limits, warmup: str = "all"):
    if warmup not in WARMUP:
      raise ValueError(f"warmup must be one of {WARMUP}, got {warmup!r}")
    self.models = dict(models)
    self.limits = limits
    self.warmup = warmup
    self.status = "starting"
    self.error: str | None = None
    self._queue: collections.deque[Job] = collections.deque()
    self._cond = threading.Condition()
    self._held = 0
    self._stopping = False
    self._thread: threading.Thread | None = None
    self._dirty = False  # a batch ran since the heap was last trimmed
    self._batch_s = 1.0  # moving average of a device call's seconds, for Retry-After
    self.stats = collections.Counter(requests=0, batches=0, images=0, rejected=0, timeouts=0,
                                     errors=0)

  def _count(self, name: str, n: int = 1) -> None:
    with self._cond:
      self.stats[name] += n

  # -- lifecycle --------------------------------------------------------------

  def start(self) -> "Batcher":
    """Starts the worker (warm-up first); returns at once. Idempotent."""
    with self._cond:
      if self._thread is not None:
        return self
      self._stopping = False
      self.status = "warming_up"
      self._thread = threading.Thread(target=self._work, name="serve-worker", daemon=True)
      self._thread.start()
    return self

  def stop(self, timeout: float = 30.0) -> None:
    """Fails the waiting jobs, lets the running device call finish, stops the worker."""
    with self._cond:
      self._stopping = True
      self.status = "stopped"
      waiting, self._queue = list(self._queue), collections.deque()
      self._cond.notify_all()
      thread, self._thread = self._thread, None
    for job in waiting:
      _deliver(job, None, NotReady("stopping", 5))
    if thread is not None:
      thread.join(timeout)
      logging.info("serve: stopped (%d waiting requests answered 503)", len(waiting))

  def wait_ready(self, timeout: float) -> bool:
    """Blocks until the warm-up is done (True) or failed / timed out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
      if self.status == "ready":
        return True
      if self.status in ("failed", "stopped"):
        return False
      time.sleep(0.05)
    return self.status == "ready"

  @property
  def ready(self) -> bool:
    return self.status == "ready"

  @contextlib.contextmanager
  def hold(self):
    """While held, the worker starts no new device call (requests keep queueing)."""
    with self._cond:
      self._held += 1
    try:
      yield self
    finally:
      with self._cond:
        self._held -= 1
        self._cond.notify_all()

  # -- requests ---------------------------------------------------------------

  @property
  def waiting(self) -> int:
    return len(self._queue)

  def retry_after(self) -> int:
    """Seconds a rejected client should wait: the time to drain the queue, roughly."""
    waiting_images = sum(job.num for job in list(self._queue))
    calls = 1 + waiting_images / self.limits.max_images
    return int(min(600, max(1, math.ceil(self._batch_s * calls))))

  def submit(self, model: ServedModel, plan: Plan, seed: int, num: int) -> Job:
    """Queues a request; call from the request's event loop.

    Raises:
      NotReady: while warming up, after a failed warm-up, or when stopping.
      QueueFull: when `limits.queue_size` requests are waiting.
    """
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    job = Job(model=model, plan=plan, seed=seed, num=num, deadline=now + self.limits.timeout_s,
              loop=loop, future=loop.create_future(), submitted=now)
    with self._cond:
      if self.status != "ready":
        self.stats["rejected"] += 1
        raise NotReady(self.status, 5 if self.status == "warming_up" else 30, self.error or "")
      if len(self._queue) >= self.limits.queue_size:
        self.stats["rejected"] += 1
        raise QueueFull(self.retry_after(), len(self._queue))
      self._queue.append(job)
      self.stats["requests"] += 1
      self._cond.notify_all()
    return job

  async def wait(self, job: Job) -> Result:
    """The job's result, or Timeout at its deadline (the job is then dropped)."""
    remaining = job.deadline - time.monotonic()
    try:
      return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(remaining, 0.0))
    except asyncio.TimeoutError:
      job.cancelled = True
      self._count("timeouts")
      raise Timeout(self.limits.timeout_s, self.retry_after()) from None
    except asyncio.CancelledError:  # the client went away
      job.cancelled = True
      raise

  # -- the worker -------------------------------------------------------------

  def _work(self) -> None:
    try:
      for model in self.models.values():
        n = model.warm(self.warmup, self.limits.buckets)
        logging.info("serve: %s warm (%d programs)", model.name, n)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("serve: warm-up failed")
      with self._cond:
        self.error = f"warm-up failed: {type(e).__name__}: {e}"
        self.status = "failed"
      return
    with self._cond:
      if self._stopping:
        return
      self.status = "ready"
    logging.info("serve: ready")
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      self._run(batch)

  def _take_same_key(self, batch: list[Job], total: int) -> int:
    """Moves waiting jobs with the batch's key that still fit into `batch` (total: slots)."""
    key = batch[0].key
    for job in list(self._queue):
      if job.key == key and total + self.limits.slots(job.num) <= self.limits.max_images:
        self._queue.remove(job)
        if not job.cancelled:
          batch.append(job)
          total += self.limits.slots(job.num)
    return total

  def _next_batch(self) -> list[Job] | None:
    with self._cond:
      while True:
        if self._stopping:
          return None
        if self._held or not self._queue:
          if self._dirty:  # idle after work: give freed heap pages back to the OS
            self._dirty = False
            self._cond.release()
            try:
              release_free_memory()
            finally:
              self._cond.acquire()
            continue
          self._cond.wait()
          continue
        head = self._queue.popleft()
        if head.cancelled:
          continue
        if head.deadline <= time.monotonic():
          self.stats["timeouts"] += 1
          _deliver(head, None, Timeout(self.limits.timeout_s, self.retry_after()))
          continue
        break
      batch = [head]
      total = self._take_same_key(batch, self.limits.slots(head.num))
      wait_until = time.monotonic() + self.limits.batch_wait_ms / 1000.0
      while total < self.limits.max_images and not self._stopping:
        remaining = wait_until - time.monotonic()
        if remaining <= 0:
          break
        self._cond.wait(remaining)
        total = self._take_same_key(batch, total)
      return batch

  def _run(self, batch: list[Job]) -> None:
    batch = [job for job in batch if not job.cancelled]
    if not batch:
      return
    model, static = batch[0].model, batch[0].plan.static
    total = sum(job.num for job in batch)
    bucket, offsets, seeds, index, extras = self.layout(batch)
    start = time.monotonic()
    try:
      images = model.run(static, bucket, seeds, index, extras)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("serve: %s %s failed", model.name, static)
      self._count("errors", len(batch))
      for job in batch:
        _deliver(job, None, e)
      return
    self._dirty = True
    run_s = time.monotonic() - start
    self._batch_s = 0.8 * self._batch_s + 0.2 * run_s
    self._count("batches")
    self._count("images", total)
    for job, offset in zip(batch, offsets):
      _deliver(job, Result(images=images[offset:offset + job.num], batch_images=total,
                           bucket=bucket, batch_requests=len(batch),
                           queued_s=start - job.submitted, run_s=run_s))

  def layout(self, batch: list[Job]):
    """The inputs of one device call: each job starts a chunk, padding fills the rest.

    Image i of a job sits at place i mod chunk of a chunk whatever the job
    was batched with, so it is computed the same way in every batch (see
    `launch.serve.programs`).

    Returns:
      (bucket, offsets: each job's first place, seeds [bucket], index
      [bucket], extras: name -> [bucket, ...] (a number or an image per place)).
    """
    slots = [self.limits.slots(job.num) for job in batch]
    bucket = self.limits.bucket(sum(slots))
    offsets = np.cumsum([0] + slots)[:-1].tolist()
    seeds = np.zeros((bucket,), np.uint32)
    index = np.zeros((bucket,), np.int32)
    extras = {name: np.zeros((bucket,) + value.shape[1:], value.dtype)
              for name, value in batch[0].plan.extras.items()}
    for job, offset in zip(batch, offsets):
      seeds[offset:offset + job.num] = job.seed
      index[offset:offset + job.num] = np.arange(job.num)
      for name, value in job.plan.extras.items():
        extras[name][offset:offset + job.num] = value
    return bucket, offsets, seeds, index, extras
