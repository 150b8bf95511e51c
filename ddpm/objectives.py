"""Training objectives: what the network predicts, and the loss.

With x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (0-based t, see
`ddpm.schedules`) the network predicts one of

  "eps": eps (Ho et al.'s Algorithm 1, the simple loss),
  "x0":  x0,
  "v":   v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho),

and any prediction converts to the others given x_t.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddpm import schedules
from ddpm.schedules import Schedule

OBJECTIVES = ("eps", "x0", "v")
T_SAMPLINGS = ("uniform", "importance")


def _coefs(schedule: Schedule, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
  """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), shaped [B, 1, 1, 1]."""
  return (schedules.gather(schedule.sqrt_alpha_bars, t, ndim),
          schedules.gather(schedule.sqrt_one_minus_alpha_bars, t, ndim))


def eps_to_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
  a, s = _coefs(schedule, t, x_t.ndim)
  return (x_t - s * eps) / a


def x0_to_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
  a, s = _coefs(schedule, t, x_t.ndim)
  return (x_t - a * x0) / s


def v_target(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0."""
  a, s = _coefs(schedule, t, x0.ndim)
  return a * eps - s * x0


def v_to_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
  a, s = _coefs(schedule, t, x_t.ndim)
  return a * x_t - s * v


def v_to_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
  a, s = _coefs(schedule, t, x_t.ndim)
  return s * x_t + a * v


def target(objective: str, schedule: Schedule, x0: jax.Array, t: jax.Array,
           eps: jax.Array) -> jax.Array:
  """The regression target of `objective` for (x0, eps) at timesteps t."""
  if objective == "eps":
    return eps
  if objective == "x0":
    return x0
  if objective == "v":
    return v_target(schedule, x0, t, eps)
  raise ValueError(f"unknown objective {objective!r}; allowed: {OBJECTIVES}")


def output_to_eps(objective: str, schedule: Schedule, x_t: jax.Array, t: jax.Array,
                  out: jax.Array) -> jax.Array:
  """eps_hat from the network output `out` of the given objective."""
  if objective == "eps":
    return out
  if objective == "x0":
    return x0_to_eps(schedule, x_t, t, out)
  if objective == "v":
    return v_to_eps(schedule, x_t, t, out)
  raise ValueError(f"unknown objective {objective!r}; allowed: {OBJECTIVES}")


def output_to_x0(objective: str, schedule: Schedule, x_t: jax.Array, t: jax.Array,
                 out: jax.Array) -> jax.Array:
  """x0_hat from the network output `out` of the given objective."""
  if objective == "eps":
    return eps_to_x0(schedule, x_t, t, out)
  if objective == "x0":
    return out
  if objective == "v":
    return v_to_x0(schedule, x_t, t, out)
  raise ValueError(f"unknown objective {objective!r}; allowed: {OBJECTIVES}")


def drop_labels(key: jax.Array, label: jax.Array, p: float, null_label: int) -> jax.Array:
  """Replaces each label by `null_label` with probability p (classifier-free guidance).

  Args:
    key: PRNG key.
    label: [B] int labels.
    p: drop probability.
    null_label: the "no label" index (num_classes).

  Returns:
    [B] int32 labels.
  """
  drop = jax.random.bernoulli(key, p, label.shape)
  return jnp.where(drop, null_label, label).astype(jnp.int32)


def min_snr_weight(objective: str, schedule: Schedule, t: jax.Array,
                   gamma: float) -> jax.Array:
  """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion
  Training via Min-SNR Weighting Strategy", eq. 8 and Sec. 3.4).

  With SNR_t = alpha_bar_t / (1 - alpha_bar_t), the x0-loss weight
  min(SNR_t, gamma), expressed for the objective actually regressed:
  eps: min(SNR, gamma) / SNR; x0: min(SNR, gamma); v: min(SNR, gamma) / (SNR + 1)
  (since ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and
  ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2).

  Args:
    objective: "eps", "x0" or "v".
    schedule: the noise schedule.
    t: [B] int 0-based timesteps.
    gamma: the clamp (5 in the paper).

  Returns:
    [B] float32 weights.
  """
  a_bar = jnp.asarray(schedule.alpha_bars)[t]
  snr = a_bar / (1.0 - a_bar)
  clamped = jnp.minimum(snr, gamma)
  if objective == "eps":
    return clamped / snr
  if objective == "x0":
    return clamped
  if objective == "v":
    return clamped / (snr + 1.0)
  raise ValueError(f"unknown objective {objective!r}; allowed: {OBJECTIVES}")


def timestep_weights(objective: str, schedule: Schedule, min_snr_gamma: float) -> jax.Array:
  """[T] float32 per-timestep loss weights: min-SNR-gamma's, or ones for gamma 0."""
  t = jnp.arange(schedule.num_timesteps)
  if min_snr_gamma > 0:
    return min_snr_weight(objective, schedule, t, min_snr_gamma)
  return jnp.ones((schedule.num_timesteps,), jnp.float32)


def sample_timesteps(key: jax.Array, batch: int, weights: jax.Array, t_sampling: str
                     ) -> tuple[jax.Array, jax.Array]:
  """Timesteps for one batch and the per-example factor that keeps the loss unbiased.

  The loss is the weighted mean (1/T) sum_t w(t) E[err(t)] over 0-based t.

  "uniform": t ~ U{0, ..., T-1}, factor w(t) (Ho et al.'s Algorithm 1 for w = 1).
  "importance": t ~ p(t) = w(t) / sum_s w(s), factor mean_s w(s), the same
    for every t. Since p(t) factor = w(t) / T, the expected loss and gradient
    equal the uniform estimator's; only the variance changes: no draw is
    spent on timesteps whose weight is near 0 (Kingma & Gao 2023, "Understanding
    Diffusion Objectives", Sec. 4: a weighting is equivalent to a sampling
    distribution). With min-SNR-5 and v on the linear schedule, ~40% of
    uniform draws (t > 600) carry weights below 0.03.

  Args:
    key: PRNG key.
    batch: B.
    weights: [T] non-negative weights w (`timestep_weights`).
    t_sampling: "uniform" or "importance".

  Returns:
    (t [B] int32, factor [B] float32).
  """
  num = weights.shape[0]
  if t_sampling == "uniform":
    t = jax.random.randint(key, (batch,), 0, num)
    return t, weights[t]
  if t_sampling == "importance":
    # inverse CDF: t = #{s : cdf(s) <= u}, u ~ U[0, 1); cdf[-1] is exactly 1 and a
    # zero-weight t (cdf(t) = cdf(t - 1)) is never drawn. O(B log T), where a
    # Gumbel-max draw (`jax.random.categorical`) would draw B x T Gumbel variates.
    cdf = jnp.cumsum(weights)
    cdf = cdf / cdf[-1]
    u = jax.random.uniform(key, (batch,))
    t = jnp.searchsorted(cdf, u, side="right").astype(jnp.int32)
    return t, jnp.broadcast_to(jnp.mean(weights), (batch,))
  raise ValueError(f"unknown t_sampling {t_sampling!r}; allowed: {T_SAMPLINGS}")


def diffusion_loss(model_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
                   x0: jax.Array, key: jax.Array, *, objective: str = "eps",
                   min_snr_gamma: float = 0.0, t_sampling: str = "uniform") -> jax.Array:
  """Monte-Carlo estimate of the simple loss (Algorithm 1) for one batch.

  t ~ U{0, ..., T-1} (0-based), eps ~ N(0, I), x_t by `q_sample`, and the
  mean squared error between model_fn(x_t, t) and the objective's target,
  optionally weighted per example by `min_snr_weight`. With
  t_sampling="importance" t is drawn in proportion to those weights instead
  (`sample_timesteps`): the same loss in expectation, lower variance.

  Args:
    model_fn: (x_t [B, H, W, C], t [B] int32) -> [B, H, W, C] prediction.
    schedule: the noise schedule.
    x0: [B, H, W, C] data.
    key: PRNG key (split for t and eps).
    objective: "eps", "x0" or "v".
    min_snr_gamma: > 0 weights each example's error by the min-SNR-gamma
      weight; 0 is the unweighted simple loss.
    t_sampling: "uniform" or "importance" (`sample_timesteps`).

  Returns:
    Scalar float32 loss (mean over every pixel of the batch).
  """
  k_t, k_eps = jax.random.split(key)
  t, factor = sample_timesteps(k_t, x0.shape[0],
                               timestep_weights(objective, schedule, min_snr_gamma), t_sampling)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  x_t = schedules.q_sample(schedule, x0, t, eps)
  out = model_fn(x_t, t).astype(jnp.float32)
  err = jnp.mean(jnp.square(out - target(objective, schedule, x0, t, eps)),
                 axis=tuple(range(1, x0.ndim)))
  return jnp.mean(err * factor)   # factor 1 for the simple loss: the same bits
