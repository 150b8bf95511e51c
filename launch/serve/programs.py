"""Per-task adapters of the server: request options -> plan -> compiled program.

A served model is a trained workdir (its newest checkpoint; EMA parameters by
default) and a sampling adapter chosen by the task's name (`SAMPLING`). The
adapter turns the options of a request into a `Plan`: a hashable `static`
part (sampler, steps, ... the discrete options, which select the compiled
program) and per-image arrays (label, guidance, eta, step_size: every
continuous option) that are inputs of the program, so requests that differ
only in those share one program and one device call. A DDPM plan is the
run's `ddpm.samplers.SamplingSpec` with the request's options,
`replace(spec, **request).validate()`: the spec owns the sampling rules.

Programs. For a static part and a bucket size B (a multiple of
`limits.chunk` = c), the program is

    images[b] = task.sample(params, fold_in(key(seed[b]), index[b]), 1, ...)[0]

computed c images at a time: a loop (`lax.map`) over B / c chunks, each a
vmap over c images, compiled once (`jax.jit(...).lower(...).compile()`), one
device call. Image `i` of a request with seed `s` is drawn from the key
fold_in(key(s), i) alone, and every request starts a chunk
(`launch.serve.queue.Batcher.layout`), so image i is always computed at place
i mod c of a chunk of the same shape, whatever the bucket, the padding and
the other requests of the call: its float32 values, and so its PNG bytes,
depend only on (model, options, seed, index) (tests/test_serve_determinism.py).
A plain vmap over the whole bucket does not give that: XLA:CPU's kernels
round differently with the batch size and an image's place in it (48 of 688
smoke-DDPM images differed by up to 3e-7, a grey level now and then). The
price: a request of n images takes ceil(n / c) chunks, and a bucket runs
its chunks one after another. Measured on 2 CPU cores, a 16-image DDIM-10
call of the smoke DDPM (medians of 7): 290 ms at c = 4 (the default), 274 ms
as one vmap of 16 (c = 16), 397 ms at c = 1. A GPU wants c = the largest
bucket, every call padded to it.

Devices. A process with several local devices (the CPU split into 2, or
several GPUs) splits a bucket of k chunks across its n devices
(`limits.devices`, 0 = all) when n divides k: a `shard_map` of the same
chunk loop, params replicated, each device computing k / n chunks; a bucket
of fewer chunks runs on one device. Each chunk is the same computation on
whichever device, so the bytes do not change (the determinism test runs with
2 CPU devices).

Compile count: per model, one program per (static part, bucket); static parts
are (DDPM) sampler x steps x guidance on/off, (EBM) operation (generate,
inpaint, denoise; energy has one) x Langevin steps x, for a class-conditional
EBM, labelled or marginal, (denoiser) one. The image of /inpaint and
/denoise, its mask and σ are per-image inputs too. A request's steps must be the sampler's default or one of
`limits.step_choices` (`STEP_CHOICES`, 28 values) within the sampler's range,
so a client can cause at most (len(step_choices) + 1) programs per sampler,
guidance setting and bucket, whatever it sends. No float of a request
selects a program. The warm-up programs are kept; others live in an LRU of
`limits.max_programs`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from core import images as image_lib
from ddpm import samplers as ddpm_samplers
from launch.serve.schema import (IMAGE_OPS, MAX_SIGMA, ImageOptions, Limits, Options, Plan,
                                 RequestError, SamplerInfo)

def _step_choices(limits: "Limits", lo: int, hi: int, default: int) -> tuple[int, ...]:
  """The steps a request may send: limits.step_choices within [lo, hi], and the default."""
  return tuple(sorted({v for v in limits.step_choices if lo <= v <= hi} | {default}))


def _check_steps(steps: int, choices: tuple[int, ...], sampler: str) -> None:
  if steps not in choices:
    raise RequestError("steps", f"{steps} is not one of the chain lengths this server runs for "
                                f"{sampler} ({', '.join(map(str, choices))}; limits.step_choices)")


def _labels(options: Options, num_classes: int, default: int | None) -> tuple[np.ndarray, Any]:
  """([num] int32 labels, echo) of a request; classes in turn when no label."""
  n = options.num_images
  if not num_classes:
    if options.label is not None:
      raise RequestError("label", "the model is unconditional: leave label out (or null)")
    return np.zeros((n,), np.int32), None
  label = default if options.label is None else options.label
  if label is None:
    labels = np.arange(n, dtype=np.int32) % num_classes
  else:
    if not 0 <= label < num_classes:
      raise RequestError("label", f"must be in [0, {num_classes - 1}], got {label}")
    labels = np.full((n,), label, np.int32)
  return labels, labels.tolist()


def _in_range(field: str, value: float, lo: float, hi: float, lo_open: bool = False) -> float:
  if not np.isfinite(value) or (value <= lo if lo_open else value < lo) or value > hi:
    raise RequestError(field, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], "
                              f"got {value!r}")
  return float(value)


def _reject(options: Options, fields: tuple[str, ...], why: str) -> None:
  for field in fields:
    if getattr(options, field) is not None:
      raise RequestError(field, why)


class Sampling(abc.ABC):
  """The interface of a task's sampling adapter (and its defaults).

  Attributes:
    default_sampler: the sampler of requests that name none.
    num_classes: classes a request may pick with "label" (0: none).
    guidance_ok: requests may set "guidance"; `guidance` is its default.
    max_guidance, max_step_size: bounds of those options (0: not taken).
  """
  default_sampler: str = ""
  num_classes: int = 0
  guidance_ok: bool = False
  guidance: float = 1.0
  max_guidance: float = 0.0
  max_step_size: float = 0.0
  image_ops: tuple[str, ...] = ()

  @abc.abstractmethod
  def samplers(self) -> list[SamplerInfo]:
    """The samplers and their options, for GET /models."""

  @abc.abstractmethod
  def plan(self, options: Options) -> Plan:
    """The plan of a request; RequestError naming the field it cannot serve."""

  def plan_image(self, options: ImageOptions) -> Plan:
    """The plan of an image request (models with `image_ops` only)."""
    raise RequestError("model", f"/{options.op} needs an energy-based model; this one takes "
                                "no images")

  def image_options(self) -> dict[str, Any]:
    """The defaults and ranges of the image operations (for GET /models)."""
    return {}

  @abc.abstractmethod
  def extras_like(self, static: tuple, bucket: int) -> dict[str, np.ndarray]:
    """Per-image inputs of a bucket of the program `static` (their shapes and dtypes)."""

  def output_shape(self, static: tuple) -> tuple[int, ...]:
    """What the program `static` returns per image: an image [H, W, C] unless said otherwise."""
    return tuple(self.task.image_shape)

  @abc.abstractmethod
  def warm_statics(self, which: str) -> list[tuple]:
    """The static parts compiled at start ("all" or "default")."""

  @abc.abstractmethod
  def sample_one(self, static: tuple) -> Callable:
    """(params, key, extras of one image) -> one image [H, W, C]."""

  def warm_buckets(self, static: tuple, buckets: tuple[int, ...]) -> tuple[int, ...]:
    """The buckets the warm-up compiles `static` in."""
    del static
    return buckets


class _DDPMSampling(Sampling):
  """DDPM: the samplers of `ddpm.samplers.SAMPLERS`; a request is a SamplingSpec.

  The plan of a request is `replace(task.spec, **request).validate()`: the
  sampling rules (which sampler takes which steps and options, the label and
  guidance rules) are the spec's. The server adds only its own policy: its
  limits (max_guidance), the steps range GET /models states, and that a
  request's label is a class (not the null label). The program is selected
  by the spec's static fields (sampler, steps, ...) and whether guidance is
  on; eta, guidance and the label are per-image inputs.
  """

  def __init__(self, task, config, limits: Limits):
    del config  # the task's spec is config.sample, validated
    self.task = task
    self.spec = task.spec
    self.T = self.spec.num_timesteps
    self.default_sampler = self.spec.sampler
    # A request that switches to a sampler taking fewer steps, without naming steps.
    self.short_steps = (self.spec.steps if self.spec.rule.timesteps is not None and
                        self.spec.steps else min(50, self.T))
    self.num_classes = self.spec.num_classes
    self.guidance_ok = self.spec.null_label
    self.max_guidance = max(limits.max_guidance, self.spec.guidance)
    self.guidance = self.spec.guidance
    self.limits = limits

  def _steps_default(self, sampler: str) -> int:
    if sampler == self.spec.sampler:
      return self.spec.num_steps
    rule = ddpm_samplers.SAMPLERS[sampler]
    if rule.timesteps is None:
      return self.T
    if rule.default_steps:  # the ODE solvers' own short default
      return dataclasses.replace(self.spec, sampler=sampler, steps=0).num_steps
    return self.short_steps

  def _max_steps(self, rule) -> int:
    """The longest chain the sampler's step rule allows (T, or T - 1 for the ODE solvers)."""
    if rule.timesteps is None:
      return self.T
    if rule.max_steps:
      return min(rule.max_steps, self.T)
    try:
      rule.timesteps(self.T, self.T, self.spec.spacing)
      return self.T
    except ValueError:
      return self.T - 1

  def samplers(self) -> list[SamplerInfo]:
    out = []
    for name in self.spec.sampler_names():
      rule = ddpm_samplers.SAMPLERS[name]
      options = {"spacing": self.spec.spacing} if "spacing" in rule.options else {}
      if "variance" in rule.options:
        options["variance"] = self.spec.variance
      if "eta" in rule.options:
        options["eta"] = {"min": 0.0, "max": 1.0, "default": self.spec.eta}
      lo, hi, default = (self.T if rule.timesteps is None else 1), self._max_steps(rule), \
          self._steps_default(name)
      out.append(SamplerInfo(name, lo, hi, default, options,
                             _step_choices(self.limits, lo, hi, default)))
    return out

  def extras_like(self, static: tuple, bucket: int) -> dict[str, np.ndarray]:
    del static
    return {"label": np.zeros((bucket,), np.int32), "guidance": np.ones((bucket,), np.float32),
            "eta": np.zeros((bucket,), np.float32)}

  def plan(self, o: Options) -> Plan:
    _reject(o, ("step_size",), "only energy-based (Langevin) models take step_size")
    sampler = self.spec.sampler if o.sampler is None else o.sampler
    if sampler not in self.spec.sampler_names():
      raise RequestError("sampler", f"{sampler!r} is not a sampler of this model "
                                    f"(allowed: {', '.join(self.spec.sampler_names())})")
    rule = ddpm_samplers.SAMPLERS[sampler]
    if o.eta is not None and "eta" not in rule.options:
      raise RequestError("eta", f"the {sampler!r} sampler takes no eta (only "
                         f"{', '.join(n for n, r in ddpm_samplers.SAMPLERS.items() if 'eta' in r.options)})")
    if o.guidance is not None:
      _in_range("guidance", o.guidance, 0.0, self.max_guidance)  # the server's limit
    changes = {"sampler": sampler,
               "steps": self._steps_default(sampler) if o.steps is None else o.steps,
               "eta": self.spec.eta if o.eta is None else o.eta,
               "guidance": self.spec.guidance if o.guidance is None else o.guidance}
    if o.label is not None:
      if self.num_classes and not 0 <= o.label < self.num_classes:  # the null label is not a class
        raise RequestError("label", f"must be in [0, {self.num_classes - 1}], got {o.label}")
      changes["label"] = o.label
    if rule.timesteps is not None:  # as GET /models says
      hi = self._max_steps(rule)
      if not 1 <= changes["steps"] <= hi:
        raise RequestError("steps", f"must be in [1, {hi}] for {sampler}, got "
                                    f"{changes['steps']}")
      if isinstance(changes["steps"], int):  # a non-integer is the spec's error
        _check_steps(changes["steps"], _step_choices(
            self.limits, 1, self._max_steps(rule), self._steps_default(sampler)), sampler)
    try:
      spec = dataclasses.replace(self.spec, **changes).validate()
    except ddpm_samplers.SpecError as e:
      raise RequestError(e.field, f"{e.reason}, got {e.value!r}" if e.reason else str(e)) from None
    n = o.num_images
    labels = spec.labels(n)
    guided = spec.null_label and spec.guidance != 1.0
    info = {"sampler": spec.sampler, "steps": spec.num_steps,
            "labels": None if labels is None else labels.tolist()}
    if "eta" in rule.options:
      info["eta"] = spec.eta
    if self.guidance_ok:
      info["guidance"] = spec.guidance
    return Plan(static=self._static(spec, guided),
                extras={"label": np.zeros((n,), np.int32) if labels is None else labels,
                        "guidance": np.full((n,), spec.guidance, np.float32),
                        "eta": np.full((n,), spec.eta, np.float32)},
                info=info)

  @staticmethod
  def _static(spec: ddpm_samplers.SamplingSpec, guided: bool) -> tuple:
    """What selects the program: the spec less its per-image values, and guidance on/off.

    steps is made explicit (0 means T) so that both spellings share a program.
    """
    return (dataclasses.replace(spec, steps=spec.num_steps, eta=0.0, guidance=1.0, label=None),
            guided)

  def warm_statics(self, which: str) -> list[tuple]:
    guided = self.guidance_ok and self.spec.guidance != 1.0
    default = self._static(self.spec, guided)
    if which == "default":
      return [default]
    others = [self._static(dataclasses.replace(self.spec, sampler=name,
                                               steps=self._steps_default(name)), guided)
              for name in self.spec.sampler_names()]
    return [default] + [s for s in others if s != default]

  def sample_one(self, static: tuple) -> Callable:
    spec, guided = static
    task, conditional = self.task, self.num_classes > 0

    def one(params, key, ex):
      return task.sample(params, key, 1, sampler=spec.sampler, steps=spec.steps, eta=ex["eta"],
                         spacing=spec.spacing, variance=spec.variance, clip_x0=spec.clip_x0,
                         label=ex["label"][None] if conditional else None,
                         guidance=ex["guidance"] if guided else 1.0)[0]
    return one


class _EBMSampling(Sampling):
  """EBM: Langevin chains on the energy, from noise (/generate) or from an image.

  Every operation is the task's (`ebm.task.EBMTask`): /generate runs
  `task.sample` from uniform noise; /inpaint `task.inpaint` (the known
  pixels clamped, the others from uniform noise); /denoise `task.denoise`
  (noise-free steps from the image, after adding N(0, σ²) when σ > 0);
  /energy `task.energy` (E(x); the marginal of a class-conditional EBM) and
  `task.class_logits` (E(x, y) = -f(x)[y] for every y). The step size, σ,
  the label, the image and its mask are per-image inputs of the program
  (any value in range reuses it); what selects it is the operation, the
  number of steps (one of `limits.step_choices` up to
  `limits.max_langevin_steps`, or the default) and whether the chain runs
  on E(x, y) (labelled) or on E(x).

  Labels, as the task's: /generate from a class-conditional EBM samples
  `label`, or without one config.sample.label (-1: the classes in turn,
  image i of class i mod K); /inpaint and /denoise run on E(x, label), or
  without one on the marginal E(x).
  """

  image_ops = IMAGE_OPS

  def __init__(self, task, config, limits: Limits):
    del config  # the task was built from it and validated it
    self.task = task
    chain = task.sample_langevin
    default_steps = int(chain.num_steps)
    self.max_steps = max(limits.max_langevin_steps, default_steps)
    self.steps = default_steps
    self.step_size = float(chain.step_size)
    self.max_step_size = max(limits.max_step_size, self.step_size)
    self.default_sampler = "langevin"
    self.step_choices = _step_choices(limits, 1, self.max_steps, self.steps)
    self.num_classes = int(task.num_classes)
    # The protocol of --mode evaluate / figures gives the defaults of the image operations.
    restoration = task.restoration
    self.op_steps = {"inpaint": min(restoration.inpaint_steps or self.steps, self.max_steps),
                     "denoise": min(restoration.denoise_steps or 1, self.max_steps)}
    self.op_choices = {op: _step_choices(limits, 1, self.max_steps, steps)
                       for op, steps in self.op_steps.items()}

  def samplers(self) -> list[SamplerInfo]:
    return [SamplerInfo("langevin", 1, self.max_steps, self.steps,
                        {"step_size": {"min": 0.0, "max": self.max_step_size,
                                       "default": self.step_size}}, self.step_choices)]

  def image_options(self) -> dict[str, Any]:
    """The defaults and ranges of the image operations, for GET /models."""
    ops = {op: {"steps_default": steps, "steps_choices": list(self.op_choices[op]),
                "step_size_default": self.step_size, "step_size_max": self.max_step_size}
           for op, steps in self.op_steps.items()}
    return {**ops, "sigma_max": MAX_SIGMA,
            "sigma_default": float(self.task.restoration.denoise_sigma)}

  def _labels(self, label: int | None, n: int, marginal: bool) -> tuple[np.ndarray, Any]:
    """([n] int32 labels, echo) of a request; echo None = the chain runs on E(x).

    `marginal`: a missing label means E(x) (image operations), not the
    task's default labels (generation).
    """
    if label is None and (marginal or not self.num_classes):
      return np.zeros((n,), np.int32), None
    try:
      with jax.default_device(jax.local_devices(backend="cpu")[0]):  # host arithmetic only
        labels = (self.task.sample_labels(n) if label is None
                  else self.task.sample_labels(n, int(label)))
    except ValueError as e:
      raise RequestError("label", "the model is unconditional: leave label out (or null)"
                         if not self.num_classes else str(e)) from None
    if labels is None:
      return np.zeros((n,), np.int32), None
    labels = np.asarray(labels, np.int32)
    return labels, labels.tolist()

  def _steps(self, steps: int | None, default: int, choices: tuple[int, ...], what: str) -> int:
    steps = default if steps is None else steps
    if not 1 <= steps <= self.max_steps:
      raise RequestError("steps", f"must be in [1, {self.max_steps}], got {steps}")
    _check_steps(steps, choices, what)
    return steps

  def _step_size(self, step_size: float | None) -> float:
    return self.step_size if step_size is None else _in_range(
        "step_size", step_size, 0.0, self.max_step_size, lo_open=True)

  def plan(self, o: Options) -> Plan:
    sampler = "langevin" if o.sampler is None else o.sampler
    if sampler != "langevin":
      raise RequestError("sampler", f"{sampler!r} is not a sampler of this model "
                                    "(allowed: langevin)")
    _reject(o, ("eta",), "only DDPM models (sampler 'ddim') take eta")
    _reject(o, ("guidance",), "energy-based models take no guidance")
    steps = self._steps(o.steps, self.steps, self.step_choices, "langevin")
    step_size = self._step_size(o.step_size)
    n = o.num_images
    labels, echo = self._labels(o.label, n, marginal=False)
    return Plan(static=("langevin", steps, echo is not None),
                extras={"step_size": np.full((n,), step_size, np.float32), "label": labels},
                info={"sampler": "langevin", "steps": steps, "step_size": step_size,
                      "labels": echo})

  def plan_image(self, o: ImageOptions) -> Plan:
    n = o.num_images
    x = np.broadcast_to(image_lib.from_uint8(o.image), (n,) + o.image.shape)
    if o.op == "energy":  # the image alone: E(x), and E(x, y) for every class y
      return Plan(static=("energy",), extras={"x": x},
                  info={"op": "energy", "num_classes": self.num_classes})
    steps = self._steps(o.steps, self.op_steps[o.op], self.op_choices[o.op], o.op)
    step_size = self._step_size(o.step_size)
    labels, echo = self._labels(o.label, n, marginal=True)
    extras = {"x": x, "step_size": np.full((n,), step_size, np.float32), "label": labels}
    info = {"op": o.op, "steps": steps, "step_size": step_size, "labels": echo}
    if o.op == "inpaint":
      extras["known"] = np.broadcast_to(o.known, (n,) + o.known.shape)
    else:
      sigma = 0.0 if o.sigma is None else _in_range("sigma", o.sigma, 0.0, MAX_SIGMA)
      extras["sigma"] = np.full((n,), sigma, np.float32)
      info["sigma"] = sigma
    return Plan(static=(o.op, steps, echo is not None), extras=extras, info=info)

  def extras_like(self, static: tuple, bucket: int) -> dict[str, np.ndarray]:
    shape = (bucket,) + tuple(self.task.image_shape)
    per_image = {"step_size": np.full((bucket,), self.step_size, np.float32),
                 "label": np.zeros((bucket,), np.int32)}
    if static[0] == "energy":
      return {"x": np.zeros(shape, np.float32)}
    if static[0] == "inpaint":
      return {"x": np.zeros(shape, np.float32), "known": np.ones(shape[:-1] + (1,), bool),
              **per_image}
    if static[0] == "denoise":
      return {"x": np.zeros(shape, np.float32), "sigma": np.zeros((bucket,), np.float32),
              **per_image}
    return per_image

  def output_shape(self, static: tuple) -> tuple[int, ...]:
    image_shape = tuple(self.task.image_shape)
    if static[0] == "energy":
      return (1 + self.num_classes,)  # E(x), then E(x, y) for y = 0..K-1
    if static[0] in ("inpaint", "denoise"):
      return (2,) + image_shape  # the chain's start (the corrupted input), its end
    return image_shape

  def warm_statics(self, which: str) -> list[tuple]:
    default = ("langevin", self.steps, self.num_classes > 0)
    if which != "all":
      return [default]
    return [default, ("energy",)] + [(op, steps, False) for op, steps in self.op_steps.items()]

  def warm_buckets(self, static: tuple, buckets: tuple[int, ...]) -> tuple[int, ...]:
    # An image request is usually one image: its programs are warmed in the smallest bucket.
    return buckets[:1] if static[0] in IMAGE_OPS else buckets

  def sample_one(self, static: tuple) -> Callable:
    return self.task.image_program(*static)   # ("energy",) or (op, steps, labelled)


class _DenoiserSampling(Sampling):
  """The one-step 50/50 denoiser ("ink blots"): one network call from noise."""

  def __init__(self, task, config, limits: Limits):
    del limits
    self.task = task
    self.num_classes = int(task.num_classes)
    self.default_sampler = "one_step"
    label = config.sample.label
    self.default_label = int(label) if 0 <= label < max(self.num_classes, 1) else None

  def samplers(self) -> list[SamplerInfo]:
    return [SamplerInfo("one_step", 1, 1, 1)]

  def plan(self, o: Options) -> Plan:
    if o.sampler not in (None, "one_step"):
      raise RequestError("sampler", f"{o.sampler!r} is not a sampler of this model "
                                    "(allowed: one_step)")
    if o.steps not in (None, 1):
      raise RequestError("steps", f"the one-step denoiser takes 1 step, got {o.steps}")
    _reject(o, ("eta", "guidance", "step_size"), "the one-step denoiser takes no such option")
    labels, echo = _labels(o, self.num_classes, self.default_label)
    return Plan(static=("one_step",), extras={"label": labels},
                info={"sampler": "one_step", "steps": 1, "labels": echo})

  def extras_like(self, static: tuple, bucket: int) -> dict[str, np.ndarray]:
    del static
    return {"label": np.zeros((bucket,), np.int32)}

  def warm_statics(self, which: str) -> list[tuple]:
    del which
    return [("one_step",)]

  def sample_one(self, static: tuple) -> Callable:
    del static
    task, conditional = self.task, self.num_classes > 0

    def one(params, key, ex):
      return task.sample(params, key, 1, label=ex["label"][None] if conditional else None)[0]
    return one


# task name -> sampling adapter
SAMPLING = {"ddpm": _DDPMSampling, "ebm": _EBMSampling, "denoiser": _DenoiserSampling}


def servable_tasks() -> tuple[str, ...]:
  return tuple(sorted(SAMPLING))


def sampler_names() -> tuple[str, ...]:
  """Every sampler name of every servable task."""
  return tuple(ddpm_samplers.SAMPLERS) + ("langevin", "one_step")
