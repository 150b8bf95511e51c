"""What a request to the server may ask for: limits, options, plans, errors.

Pure data, shared by the HTTP layer (launch/serve/app.py validates requests
into `Options` / `ImageOptions`), the per-task adapters
(launch/serve/programs.py turn them into a `Plan`) and the batcher
(launch/serve/queue.py runs plans within `Limits`). The `limits` section of a
serve config becomes a `Limits` (`Limits.from_config`, every key checked).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import ml_collections
import numpy as np

from launch.config_errors import ConfigError

MAX_SEED = 2**32 - 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WARMUP = ("all", "default", "none")


class RequestError(ValueError):
  """A request this model cannot serve; `field` names the request field at fault."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message


# ---------------------------------------------------------------------------
# Limits (from the serve config's `limits` section).


STEP_CHOICES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200,
                250, 300, 500, 750, 1000, 2000)
"""The chain lengths a request may ask for besides a sampler's default (each compiles once)."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for, and how the queue behaves (see configs/serve.py)."""
  buckets: tuple[int, ...] = (4, 16, 64)
  step_choices: tuple[int, ...] = STEP_CHOICES
  chunk: int = 0
  devices: int = 0
  max_langevin_steps: int = 1024
  max_step_size: float = 100.0
  max_guidance: float = 20.0
  queue_size: int = 32
  timeout_s: float = 120.0
  max_body_bytes: int = 4096
  batch_wait_ms: float = 2.0
  max_programs: int = 32
  max_connections: int = 2048
  max_requests: int = 256
  header_timeout_s: float = 10.0
  keep_alive_s: float = 5.0
  request_timeout_s: float = 30.0
  min_body_rate: float = 1024.0
  body_rate_grace_s: float = 5.0
  max_header_bytes: int = 16384
  max_upload_bytes: int = 262144
  max_image_pixels: int = 1048576
  max_examples: int = 16

  def __post_init__(self):
    if not self.chunk:  # 0: the smallest bucket
      object.__setattr__(self, "chunk", self.buckets[0])

  @property
  def max_images(self) -> int:
    return self.buckets[-1]

  def slots(self, num: int) -> int:
    """Places a request of `num` images takes in a batch: whole chunks (see the module doc)."""
    return -(-num // self.chunk) * self.chunk

  def bucket(self, num: int) -> int:
    """The smallest bucket that holds `num` images (num <= max_images)."""
    for b in self.buckets:
      if b >= num:
        return b
    raise ValueError(f"{num} images exceed the largest bucket {self.max_images}")

  @classmethod
  def from_config(cls, limits: ml_collections.ConfigDict) -> "Limits":
    """Validated limits; ConfigError names the bad `limits.*` key."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in limits.keys():
      if key not in known:
        raise ConfigError(f"limits.{key}", limits[key], allowed=sorted(known),
                          reason="unknown key")
    values = {k: limits[k] for k in limits.keys()}
    buckets = values.get("buckets", cls.buckets)
    try:
      buckets = tuple(buckets)
    except TypeError:
      raise ConfigError("limits.buckets", buckets, reason="must be a tuple of integers") from None
    if (not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)
        or list(buckets) != sorted(set(buckets)) or buckets[-1] > 4096):
      raise ConfigError("limits.buckets", buckets,
                        reason="must be increasing integers in [1, 4096]")
    values["buckets"] = buckets
    chunk = values.get("chunk", cls.chunk) or buckets[0]
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0 or any(
        b % chunk for b in buckets):
      raise ConfigError("limits.chunk", chunk,
                        reason=f"must divide every bucket {buckets} (0: the smallest bucket)")
    values["chunk"] = chunk
    choices = values.get("step_choices", cls.step_choices)
    try:
      choices = tuple(choices)
    except TypeError:
      choices = None
    if (not choices or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in choices)
        or list(choices) != sorted(set(choices)) or len(choices) > 64):
      raise ConfigError("limits.step_choices", values.get("step_choices"),
                        reason="must be at most 64 increasing integers >= 1")
    values["step_choices"] = choices
    for key, lo in (("devices", 0), ("max_langevin_steps", 1), ("queue_size", 1),
                    ("max_body_bytes", 256), ("max_programs", 0), ("max_connections", 1),
                    ("max_requests", 1),
                    ("max_header_bytes", 1024), ("max_upload_bytes", 1024),
                    ("max_image_pixels", 1), ("max_examples", 0)):
      v = values.get(key, getattr(cls, key))
      if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"limits.{key}", v, allowed=f"an integer >= {lo}")
    for key, lo_open in (("max_step_size", True), ("max_guidance", False), ("timeout_s", True),
                         ("batch_wait_ms", False), ("header_timeout_s", True),
                         ("keep_alive_s", True), ("request_timeout_s", True),
                         ("min_body_rate", False), ("body_rate_grace_s", False)):
      v = values.get(key, getattr(cls, key))
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or (
          v <= 0 if lo_open else v < 0):
        raise ConfigError(f"limits.{key}", v,
                          allowed="a positive number" if lo_open else "a number >= 0")
      values[key] = float(v)
    return cls(**values)


# ---------------------------------------------------------------------------
# Requests and plans.


@dataclasses.dataclass(frozen=True)
class Options:
  """The sampling options of one request; None = the model's default."""
  num_images: int = 1
  seed: int = 0
  sampler: str | None = None
  steps: int | None = None
  eta: float | None = None
  label: int | None = None
  guidance: float | None = None
  step_size: float | None = None


IMAGE_OPS = ("inpaint", "denoise", "energy")
MAX_SIGMA = 2.0
"""The largest noise σ /denoise adds (pixels are in [-1, 1]: σ = 2 drowns any image)."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageOptions:
  """An image request (/inpaint, /denoise, /energy); None = the model's default.

  Attributes:
    op: one of IMAGE_OPS.
    image: the uploaded image, uint8 [H, W, C] of the model's shape.
    known: inpaint only: bool [H, W, 1], True = a pixel kept exactly.
    sigma: denoise only: σ of the Gaussian noise added before denoising
      (0: the image is already noisy).
    The others as in `Options`; num_images restorations of one image, image
    i drawn with fold_in(key(seed), i) as a generated one.
  """
  op: str
  image: np.ndarray
  num_images: int = 1
  seed: int = 0
  steps: int | None = None
  step_size: float | None = None
  label: int | None = None
  known: np.ndarray | None = None
  sigma: float | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the worker runs for one request.

  Attributes:
    static: hashable options that select the compiled program (with the bucket).
    extras: name -> [num_images] array, per-image inputs of the program.
    info: the resolved options, echoed in the response.
  """
  static: tuple
  extras: Mapping[str, np.ndarray]
  info: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class SamplerInfo:
  """A sampler of a model: its steps range and which extra options it takes.

  steps_choices: the steps a request may ask for (the default included).
  """
  name: str
  steps_min: int
  steps_max: int
  steps_default: int
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  steps_choices: tuple[int, ...] = ()
