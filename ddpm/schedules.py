"""DDPM noise schedules and the closed-form forward process.

Timesteps are 0-based in code: index t = 0 .. T-1 is the paper's t = 1 .. T.
So `betas[t]` is the paper's beta_{t+1}, `alpha_bars[t]` is
alpha_bar_{t+1} = prod_{s <= t} (1 - betas[s]), and `alpha_bars_prev[t]` is
the paper's alpha_bar_t (with alpha_bar_0 = 1 for code index t = 0).

Every table is computed in float64 NumPy and then cast to float32, as the
DDPM code does, so that alpha_bar near t = T is accurate. The tables stay
NumPy arrays: building a schedule needs no JAX device (the launcher validates
configs, building their tasks, before it sets JAX up). Under `jit` they become
constants; `gather` and the samplers move them with `jnp.asarray`.
"""
from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def linear_betas(num_timesteps: int, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """Ho et al.'s linear schedule beta_1 .. beta_T, float64 [T] (no rescaling)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                        reference_timesteps: int = 1000,
                        max_beta: float = 0.999) -> np.ndarray:
  """The linear schedule with its end points rescaled to T steps, float64 [T].

  Ho et al.'s beta_1 = 1e-4 .. beta_T = 0.02 are tuned for T = 1000; with
  them unchanged a shorter chain never reaches N(0, I) (alpha_bar_T ~ 0.81
  at T = 20). As Improved DDPM does (Nichol & Dhariwal 2021,
  `get_named_beta_schedule`), both end points are multiplied by
  reference_timesteps / T, which keeps sum(beta) -- and so roughly
  log alpha_bar_T -- the same for every T. Betas are clipped to max_beta, as
  the cosine schedule is, because for T <= 20 the rescaled beta_end reaches 1
  (alpha_bar_T = 0 would divide by zero in x0 = (x_t - sqrt(1 - ab) eps) /
  sqrt(ab)). At T = reference_timesteps the result equals `linear_betas`.

  Args:
    num_timesteps: T.
    beta_start: beta_1 at T = reference_timesteps.
    beta_end: beta_T at T = reference_timesteps.
    reference_timesteps: the T that beta_start and beta_end are given for.
    max_beta: the largest beta after rescaling.

  Returns:
    float64 [T] betas.
  """
  scale = reference_timesteps / num_timesteps
  return np.minimum(linear_betas(num_timesteps, scale * beta_start, scale * beta_end), max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule, float64 [T].

  alpha_bar(u) = cos^2(((u / T) + s) / (1 + s) * pi / 2) and
  beta_t = min(1 - alpha_bar(t + 1) / alpha_bar(t), max_beta) for the 0-based
  code index t (the paper's t + 1).
  """
  def alpha_bar(u):
    return math.cos((u / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1.0 - alpha_bar(t + 1) / alpha_bar(t), max_beta)
                   for t in range(num_timesteps)], dtype=np.float64)


_BETAS: dict[str, Callable[..., np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


def names() -> tuple[str, ...]:
  return tuple(sorted(_BETAS))


@flax.struct.dataclass
class Schedule:
  """Precomputed float32 tables (NumPy) of a discrete schedule, all of shape [T].

  Attributes:
    betas: beta_t.
    alphas: 1 - beta_t.
    alpha_bars: prod_{s <= t} alpha_s.
    alpha_bars_prev: alpha_bar_{t-1} (1 at t = 0).
    sqrt_alpha_bars: sqrt(alpha_bar_t).
    sqrt_one_minus_alpha_bars: sqrt(1 - alpha_bar_t).
    posterior_variance: beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) /
      (1 - alpha_bar_t), the variance of q(x_{t-1} | x_t, x_0) (0 at t = 0).
    posterior_log_variance_clipped: log beta_tilde_t with the t = 0 entry
      replaced by the t = 1 one (log 0 is -inf), as in the DDPM code.
    posterior_mean_coef1: beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t),
      the coefficient of x_0 in the posterior mean (paper eq. 7).
    posterior_mean_coef2: (1 - alpha_bar_{t-1}) sqrt(alpha_t) /
      (1 - alpha_bar_t), the coefficient of x_t.
    num_timesteps: T (static).
  """
  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array
  alpha_bars_prev: jax.Array
  sqrt_alpha_bars: jax.Array
  sqrt_one_minus_alpha_bars: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  num_timesteps: int = flax.struct.field(pytree_node=False)


def tables_from_betas(betas: np.ndarray) -> dict[str, np.ndarray]:
  """The float64 NumPy tables of `Schedule` (without num_timesteps)."""
  betas = np.asarray(betas, np.float64)
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  alpha_bars_prev = np.append(1.0, alpha_bars[:-1])
  posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
  log_var = np.log(np.append(posterior_variance[1], posterior_variance[1:])
                   if len(betas) > 1 else betas)
  return dict(
      betas=betas,
      alphas=alphas,
      alpha_bars=alpha_bars,
      alpha_bars_prev=alpha_bars_prev,
      sqrt_alpha_bars=np.sqrt(alpha_bars),
      sqrt_one_minus_alpha_bars=np.sqrt(1.0 - alpha_bars),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=log_var,
      posterior_mean_coef1=betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
      posterior_mean_coef2=(1.0 - alpha_bars_prev) * np.sqrt(alphas) / (1.0 - alpha_bars),
  )


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """The float32 `Schedule` of the given float64 betas."""
  tables = tables_from_betas(betas)
  return Schedule(num_timesteps=len(betas),
                  **{k: v.astype(np.float32) for k, v in tables.items()})


def to_device(schedule: Schedule) -> Schedule:
  """The schedule with jax.Array tables (indexable by traced timesteps)."""
  return jax.tree.map(jnp.asarray, schedule)


def make_schedule(name: str, num_timesteps: int, *, beta_start: float = 1e-4,
                  beta_end: float = 0.02, cosine_s: float = 0.008,
                  beta_reference_timesteps: int = 1000) -> Schedule:
  """Builds a schedule by name ("linear" or "cosine").

  Args:
    name: "linear" or "cosine".
    num_timesteps: T.
    beta_start: linear: beta_1 for T = beta_reference_timesteps.
    beta_end: linear: beta_T for T = beta_reference_timesteps.
    cosine_s: cosine: the offset s.
    beta_reference_timesteps: linear: the T that beta_start/beta_end are
      given for; other T rescale them by this / T (`scaled_linear_betas`).
      0 uses beta_start and beta_end as given for every T.
  """
  if name == "linear":
    betas = (scaled_linear_betas(num_timesteps, beta_start, beta_end, beta_reference_timesteps)
             if beta_reference_timesteps else linear_betas(num_timesteps, beta_start, beta_end))
  elif name == "cosine":
    betas = cosine_betas(num_timesteps, cosine_s)
  else:
    raise ValueError(f"unknown schedule {name!r}; allowed: {names()}")
  return schedule_from_betas(betas)


def gather(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """table[t] reshaped to [B, 1, ..., 1] (ndim axes) to broadcast over x."""
  return jnp.asarray(table)[t].reshape((-1,) + (1,) * (ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples x_t ~ q(x_t | x_0) in closed form (paper eq. 4).

  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

  Args:
    schedule: the noise schedule.
    x0: [B, H, W, C] clean data.
    t: [B] int 0-based timesteps (the paper's t + 1).
    noise: [B, H, W, C] standard normal eps.

  Returns:
    [B, H, W, C] x_t.
  """
  return (gather(schedule.sqrt_alpha_bars, t, x0.ndim) * x0 +
          gather(schedule.sqrt_one_minus_alpha_bars, t, x0.ndim) * noise)


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array,
                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eq. 6-7).

  Args:
    schedule: the noise schedule.
    x0: [B, H, W, C] (predicted) clean data.
    x_t: [B, H, W, C] the current sample.
    t: [B] int 0-based timesteps.

  Returns:
    (mean [B, H, W, C], variance [B, 1, 1, 1], log_variance [B, 1, 1, 1]).
  """
  n = x_t.ndim
  mean = (gather(schedule.posterior_mean_coef1, t, n) * x0 +
          gather(schedule.posterior_mean_coef2, t, n) * x_t)
  return (mean, gather(schedule.posterior_variance, t, n),
          gather(schedule.posterior_log_variance_clipped, t, n))
