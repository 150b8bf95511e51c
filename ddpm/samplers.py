"""Samplers: the whole reverse chain as one `lax.scan`.

Every sampler takes an `eps_fn(x_t [B, H, W, C], t [B] int32) -> eps_hat`
(the network output converted to an eps prediction, guidance included), the
schedule, the starting noise x_T and a PRNG key. The per-step noise of step
i (i = 0 for the first step, at t = T-1) is drawn with
`jax.random.fold_in(key, i)`, so two samplers that visit the same timesteps
use the same noise.

Return convention: with capture_every = 0 a sampler returns x_0
[B, H, W, C]; with capture_every = k > 0 it returns (x_0, trajectory) where
trajectory [ceil(n / k), B, H, W, C] holds the sample after every k steps of
the n-step chain (the last entry is x_0). The capture is a scan of scans,
not a Python loop.

Timesteps are 0-based: the chain visits t = T-1, ..., 0 (the paper's T .. 1)
and the step at t produces x at t - 1 (t = -1 is x_0 of the paper).

Choosing a sampler: a `SamplingSpec` holds every sampling option together
with the model facts the rules need (T, the classes, the null label), and
`SamplingSpec.validate` is the one place that checks them (which sampler
takes which steps, the label and guidance rules). `sample(spec, eps_fn, ...)`
dispatches through the `SAMPLERS` registry: adding a sampler is adding one
`SamplerRule` entry (its chain and its step rule).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm import objectives
from ddpm import schedules
from ddpm.schedules import Schedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

VARIANCES = ("beta", "beta_tilde")
SPACINGS = ("uniform", "quadratic")


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
  """The increasing 0-based timesteps tau_1 < ... < tau_S that DDIM visits.

  "uniform": round(linspace(0, T - 1, S)) (stride 1 when S = T).
  "quadratic": (linspace(0, sqrt(0.8 T), S))^2 as in the DDIM code, made
  strictly increasing.

  Args:
    num_timesteps: T.
    num_steps: S, 1 <= S <= T.
    spacing: "uniform" or "quadratic".

  Returns:
    int32 [S].
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  if spacing == "uniform":
    seq = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
  elif spacing == "quadratic":
    seq = (np.linspace(0, np.sqrt(0.8 * num_timesteps), num_steps) ** 2).astype(np.int64)
    for i in range(1, num_steps):
      seq[i] = max(seq[i], seq[i - 1] + 1)
    if seq[-1] >= num_timesteps:
      raise ValueError(f"quadratic spacing cannot fit {num_steps} steps in {num_timesteps}")
  else:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {SPACINGS}")
  return seq.astype(np.int32)


def _run_chain(step_fn: Callable[[jax.Array, Any], jax.Array], x: jax.Array, xs: Any,
               capture_every: int):
  """Runs x <- step_fn(x, xs[i]) for every i; see the module's return convention."""
  n = jax.tree.leaves(xs)[0].shape[0]
  if not capture_every:
    x, _ = jax.lax.scan(lambda c, s: (step_fn(c, s), None), x, xs)
    return x
  k = int(capture_every)
  m = -(-n // k)
  pad = m * k - n
  valid = jnp.asarray(np.arange(m * k) < n)
  xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), xs)

  def inner(c, s):
    s, ok = s
    if pad:
      return jax.lax.cond(ok, step_fn, lambda c_, _: c_, c, s), None
    return step_fn(c, s), None

  def outer(c, chunk):
    c, _ = jax.lax.scan(inner, c, chunk)
    return c, c

  chunks = jax.tree.map(lambda a: a.reshape((m, k) + a.shape[1:]), (xs, valid))
  return jax.lax.scan(outer, x, chunks)


def ancestral_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array, *,
                     variance: str = "beta", clip_x0: bool = False, deterministic: bool = False,
                     capture_every: int = 0):
  """Ho et al.'s Algorithm 2 over all T steps.

  x_{t-1} = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat)
  + sigma_t z, with z = 0 at the last step (code t = 0, the paper's t = 1).
  With clip_x0 the mean is instead the posterior mean of q(x_{t-1} | x_t, x0)
  at x0_hat clipped to [-1, 1] (the DDPM code's clip_denoised); without
  clipping the two means are equal.

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x_T: [B, H, W, C] starting noise.
    key: PRNG key of the per-step noise.
    variance: sigma_t^2 = beta_t ("beta") or beta_tilde_t ("beta_tilde").
    clip_x0: clip the predicted x0 to [-1, 1].
    deterministic: z = 0 at every step (the mean path).
    capture_every: see the module docstring.

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when capture_every > 0.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; allowed: {VARIANCES}")
  schedule = schedules.to_device(schedule)
  var_table = schedule.betas if variance == "beta" else schedule.posterior_variance
  num_timesteps = schedule.num_timesteps

  def step(x, i):
    t = num_timesteps - 1 - i
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    if clip_x0:
      x0 = jnp.clip(objectives.eps_to_x0(schedule, x, t[None], eps), -1.0, 1.0)
      mean = schedule.posterior_mean_coef1[t] * x0 + schedule.posterior_mean_coef2[t] * x
    else:
      mean = (x - schedule.betas[t] / schedule.sqrt_one_minus_alpha_bars[t] * eps) * \
          jax.lax.rsqrt(schedule.alphas[t])
    if deterministic:
      return mean
    sigma = jnp.where(t > 0, jnp.sqrt(var_table[t]), 0.0)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return mean + sigma * z

  return _run_chain(step, x_T, jnp.arange(num_timesteps, dtype=jnp.int32), capture_every)


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array, *,
                num_steps: int | None = None, eta: float | jax.Array = 0.0,
                spacing: str = "uniform", clip_x0: bool = False, capture_every: int = 0):
  """DDIM (Song et al. 2021, eq. 12) over the timesteps of `ddim_timesteps`.

  From tau_i to tau_{i-1} (alpha_bar = 1 before the first):
    x0_hat = (x - sqrt(1 - a) eps_hat) / sqrt(a),
    sigma = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev),
    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z.
  eta = 0 is the deterministic DDIM; eta = 1 with stride 1 is Algorithm 2 with
  sigma^2 = beta_tilde. With clip_x0, x0_hat is clipped and eps_hat recomputed
  from it (so the eta = 1 equivalence holds with clipping too).

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x_T: [B, H, W, C] starting noise.
    key: PRNG key of the per-step noise.
    num_steps: S (default T).
    eta: stochasticity in [0, 1] (may be traced).
    spacing: "uniform" or "quadratic".
    clip_x0: clip the predicted x0 to [-1, 1].
    capture_every: see the module docstring.

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when capture_every > 0.
  """
  num_steps = num_steps or schedule.num_timesteps
  schedule = schedules.to_device(schedule)
  seq = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
  ts = jnp.asarray(seq[::-1].copy())
  ts_prev = jnp.asarray(np.append(-1, seq[:-1])[::-1].copy())
  eta = jnp.asarray(eta, jnp.float32)

  def step(x, s):
    i, t, t_prev = s
    a = schedule.alpha_bars[t]
    a_prev = jnp.where(t_prev >= 0, schedule.alpha_bars[jnp.maximum(t_prev, 0)], 1.0)
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    x0 = (x - jnp.sqrt(1.0 - a) * eps) * jax.lax.rsqrt(a)
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return jnp.sqrt(a_prev) * x0 + direction + sigma * z

  steps = jnp.arange(num_steps, dtype=jnp.int32)
  return _run_chain(step, x_T, (steps, ts, ts_prev), capture_every)


def guided_eps_fn(model_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                  label: jax.Array, null_label: int, guidance: float | jax.Array) -> EpsFn:
  """Classifier-free guidance (Ho & Salimans): eps_u + s (eps_c - eps_u).

  Written as eps_c + (s - 1)(eps_c - eps_u), so s = 1 gives eps_c exactly; the
  conditional and unconditional predictions share one batched forward pass.
  A static s == 1 skips the unconditional pass altogether.

  Args:
    model_fn: (x_t, t [B], label [B]) -> eps_hat.
    label: [B] int class labels.
    null_label: the "no label" index.
    guidance: the scale s (0 = unconditional, 1 = conditional).

  Returns:
    An eps_fn(x_t, t).
  """
  if isinstance(guidance, (int, float)) and guidance == 1:
    return lambda x, t: model_fn(x, t, label)

  def eps_fn(x, t):
    b = x.shape[0]
    both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([label, jnp.full_like(label, null_label)]))
    eps_c, eps_u = both[:b], both[b:]
    return eps_c + (guidance - 1.0) * (eps_c - eps_u)

  return eps_fn


# ---------------------------------------------------------------------------
# The sampling spec, the registry of samplers and the dispatcher.

class SpecError(ValueError):
  """A `SamplingSpec` field is invalid; names the field (callers map it to a config key or a
  request field).

  Attributes:
    field: the spec field, e.g. "steps".
    value: the bad value.
    reason: why it is invalid ("" when `allowed` says it all).
    allowed: the allowed values, or None.
  """

  def __init__(self, field: str, value: Any, *, reason: str = "", allowed: Any = None):
    msg = f"{field}={value!r} is invalid"
    if reason:
      msg += f": {reason}"
    if allowed is not None:
      msg += f" (allowed: {', '.join(repr(a) for a in allowed)})"
    super().__init__(msg)
    self.field, self.value, self.reason, self.allowed = field, value, reason, allowed


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSpec:
  """How to sample a DDPM, and the model facts that decide what is valid.

  Frozen and hashable. It is also a pytree whose only leaves are `eta` and
  `guidance` (the continuous options): passed as an ordinary argument to a
  jitted function, a new eta or guidance value reuses the compiled program,
  while every other field selects it. Change options with
  `dataclasses.replace(spec, **options).validate()`.

  Attributes:
    sampler: a name of `SAMPLERS`.
    steps: chain length; 0 = T. Only samplers whose rule has `timesteps`
      (DDIM) take 1 <= steps < T.
    eta: DDIM stochasticity in [0, 1]. eta and guidance may be traced
      values; `validate` then skips their range checks.
    spacing: DDIM timestep spacing, one of `SPACINGS`.
    variance: sigma_t^2 of the ancestral samplers, one of `VARIANCES`.
    clip_x0: clip the predicted x0 to [-1, 1] at every step.
    guidance: classifier-free guidance scale s in [0, 100] (1 = the
      conditional model exactly); s != 1 needs a null label.
    label: None (conditional models: classes in turn, i mod num_classes;
      unconditional models: no label) or one class index for every sample
      (num_classes, the null label, when the model has one).
    num_timesteps: the model's T.
    num_classes: 0 for unconditional models.
    null_label: the model has the "no label" index num_classes (trained with
      label dropout), so guidance != 1 is possible.
  """
  sampler: str = "ancestral"
  steps: int = 0
  eta: float = 0.0
  spacing: str = "uniform"
  variance: str = "beta"
  clip_x0: bool = True
  guidance: float = 1.0
  label: int | None = None
  num_timesteps: int = 1000
  num_classes: int = 0
  null_label: bool = False

  @property
  def num_steps(self) -> int:
    """The number of network evaluations of the chain (steps, 0 meaning T)."""
    return self.steps or self.num_timesteps

  @property
  def rule(self) -> SamplerRule:
    """The registry entry of `sampler`."""
    if self.sampler not in SAMPLERS:
      raise SpecError("sampler", self.sampler, reason="unknown sampler", allowed=tuple(SAMPLERS))
    return SAMPLERS[self.sampler]

  def validate(self) -> SamplingSpec:
    """Checks every field; returns self, or raises SpecError naming the first bad field."""
    t_max = _check_int("num_timesteps", self.num_timesteps, 1)
    num_classes = _check_int("num_classes", self.num_classes, 0)
    if not isinstance(self.null_label, (bool, np.bool_)):
      raise SpecError("null_label", self.null_label, reason="must be a bool")
    if self.null_label and not num_classes:
      raise SpecError("null_label", self.null_label, reason="needs num_classes > 0")
    rule = self.rule
    steps = _check_int("steps", self.steps, 0, t_max)
    if self.spacing not in SPACINGS:
      raise SpecError("spacing", self.spacing, allowed=SPACINGS)
    if rule.timesteps is None:
      if steps not in (0, t_max):
        names = [n for n, r in SAMPLERS.items() if r.timesteps is not None]
        raise SpecError("steps", steps, reason=f"the {self.sampler!r} sampler takes all "
                        f"T={t_max} steps; only {' / '.join(map(repr, names))} take fewer")
    else:
      try:
        rule.timesteps(t_max, steps or t_max, self.spacing)
      except ValueError as e:
        raise SpecError("steps", steps, reason=str(e)) from None
    _check_float("eta", self.eta, 0.0, 1.0)
    if self.variance not in VARIANCES:
      raise SpecError("variance", self.variance, allowed=VARIANCES)
    if not isinstance(self.clip_x0, (bool, np.bool_)):
      raise SpecError("clip_x0", self.clip_x0, reason="must be a bool")
    guidance = _check_float("guidance", self.guidance, 0.0, 100.0)
    if guidance != 1.0 and not self.null_label:   # a traced guidance (None) counts as != 1
      raise SpecError("guidance", self.guidance,
                      reason="guidance != 1 needs a conditional model trained with label "
                             "dropout (a null label)")
    if self.label is not None:
      if not num_classes:
        raise SpecError("label", self.label, reason="the model is unconditional (no labels)")
      top = num_classes if self.null_label else num_classes - 1
      _check_int("label", self.label, 0, top)
    return self

  def labels(self, num: int) -> np.ndarray | None:
    """The [num] int32 labels of a sample of `num` images (None: unconditional model).

    label None gives the classes in turn (i mod num_classes), an int gives
    it to every sample.
    """
    if not self.num_classes:
      return None
    if self.label is None:
      return np.arange(num, dtype=np.int32) % self.num_classes
    return np.full((num,), self.label, np.int32)


jax.tree_util.register_dataclass(
    SamplingSpec, data_fields=["eta", "guidance"],
    meta_fields=["sampler", "steps", "spacing", "variance", "clip_x0", "label", "num_timesteps",
                 "num_classes", "null_label"])


def _check_int(field: str, value: Any, lo: int, hi: int | None = None) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise SpecError(field, value, reason="must be an integer")
  if value < lo or (hi is not None and value > hi):
    raise SpecError(field, value, reason=f"must be in [{lo}, {'inf' if hi is None else hi}]")
  return int(value)


def _check_float(field: str, value: Any, lo: float, hi: float) -> float | None:
  """The value as a float; None when it is traced (the caller checked it before tracing)."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (jax.Array, np.ndarray)) and value.shape == ():
    value = value.item()
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
    raise SpecError(field, value, reason="must be a number")
  if not (math.isfinite(value) and lo <= value <= hi):
    raise SpecError(field, value, reason=f"must be in [{lo}, {hi}]")
  return float(value)


@dataclasses.dataclass(frozen=True)
class SamplerRule:
  """One entry of `SAMPLERS`: a sampler's chain and its step rule.

  Attributes:
    run: (eps_fn, schedule, x_T, key, spec, capture_every) -> x_0, or
      (x_0, trajectory) when capture_every > 0 (the module's convention).
    timesteps: None when the sampler visits all T timesteps; otherwise
      (T, S, spacing) -> the increasing int32 [S] timesteps it visits,
      raising ValueError when S steps do not fit (the step rule).
    options: the spec options the sampler reads besides clip_x0 and the
      label / guidance ones (so a server can refuse the others).
  """
  run: Callable[..., Any]
  timesteps: Callable[[int, int, str], np.ndarray] | None = None
  options: tuple[str, ...] = ()


SAMPLERS: dict[str, SamplerRule] = {
    "ancestral": SamplerRule(
        run=lambda eps_fn, schedule, x_T, key, spec, capture_every: ancestral_sample(
            eps_fn, schedule, x_T, key, variance=spec.variance, clip_x0=spec.clip_x0,
            capture_every=capture_every),
        options=("variance",)),
    "deterministic": SamplerRule(
        run=lambda eps_fn, schedule, x_T, key, spec, capture_every: ancestral_sample(
            eps_fn, schedule, x_T, key, clip_x0=spec.clip_x0, deterministic=True,
            capture_every=capture_every)),
    "ddim": SamplerRule(
        run=lambda eps_fn, schedule, x_T, key, spec, capture_every: ddim_sample(
            eps_fn, schedule, x_T, key, num_steps=spec.num_steps, eta=spec.eta,
            spacing=spec.spacing, clip_x0=spec.clip_x0, capture_every=capture_every),
        timesteps=ddim_timesteps, options=("steps", "eta", "spacing")),
}
"""Every sampler by name. Add a sampler by adding an entry (after its function)."""


def sample(spec: SamplingSpec, eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array,
           key: jax.Array, *, capture_every: int = 0):
  """Runs the chain of `spec.sampler` from x_T (validate `spec` first, outside jit).

  Args:
    spec: a validated spec (its eta may be traced); its label and guidance
      are already in `eps_fn` (see `guided_eps_fn` and `SamplingSpec.labels`).
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule (T must equal spec.num_timesteps).
    x_T: [B, H, W, C] starting noise.
    key: PRNG key of the per-step noise.
    capture_every: see the module docstring.

  Returns:
    x_0 [B, H, W, C] (unclipped), or (x_0, trajectory) when capture_every > 0.
  """
  if schedule.num_timesteps != spec.num_timesteps:
    raise ValueError(f"the spec is for T={spec.num_timesteps}, the schedule has "
                     f"T={schedule.num_timesteps}")
  return spec.rule.run(eps_fn, schedule, x_T, key, spec, capture_every)
