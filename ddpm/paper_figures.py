"""The data of the DDPM paper's figures (Ho et al. 2020, Figs. 5-8), each one compiled program.

  progressive_generation  Fig. 6: the x0_hat predicted along one ancestral chain.
  shared_latent_samples   Fig. 7: several reverse chains from one x_t, for several t.
  interpolate             Fig. 8: two images encoded to x_t with the same noise,
                          mixed linearly, decoded by the reverse chain.
  rate_distortion_curve   Fig. 5: bits received vs distortion of x0_hat along the
                          reverse chain (`ddpm.likelihood`).

Every chain is Algorithm 2 with the samplers' conventions (see
`ddpm.samplers.ancestral_sample`): timesteps are 0-based (code t = the
paper's t + 1), the step at code t maps x at code t to x at code t - 1 (t =
-1 is the data), its mean is the posterior mean at x0_hat (clipped with
clip_x0) and its noise is drawn from `fold_in(key, T - 1 - t)`: a full chain
from x_T here draws the same noise as `ancestral_sample` with the same key.
A chain that starts at x_t (a latent at code t) runs the steps t, t - 1, ..., 0,
all rows in one `lax.scan`; rows that start later wait (their x is kept).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm import likelihood
from ddpm import objectives
from ddpm import schedules
from ddpm.samplers import EpsFn, VARIANCES
from ddpm.schedules import Schedule


def _check(schedule: Schedule, variance: str, timesteps: Sequence[int], name: str) -> None:
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; allowed: {VARIANCES}")
  num_t = schedule.num_timesteps
  bad = [int(t) for t in timesteps if not 0 <= int(t) < num_t]
  if bad:
    raise ValueError(f"{name} must be 0-based timesteps in [0, {num_t - 1}], got {bad}")


def _reverse_chain(eps_fn: EpsFn, schedule: Schedule, x: jax.Array, key: jax.Array, *,
                   t_max: int, t_start: jax.Array | None = None,
                   capture_t: Sequence[int] = (), variance: str = "beta",
                   clip_x0: bool = True, noise_group: int = 1):
  """Algorithm 2 from code t_max down to 0, optionally recording x0_hat.

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x: [B, H, W, C] the latents (row b at code t_start[b]).
    key: PRNG key of the per-step noise (module docstring).
    t_max: static, the first step's code t (>= every t_start).
    t_start: optional [B] int, row b runs the steps t <= t_start[b] (default
      t_max for all).
    capture_t: static code timesteps at which to record x0_hat (the
      prediction from x at that t, before the step).
    variance: sigma_t^2 = beta_t ("beta") or beta_tilde_t ("beta_tilde").
    clip_x0: clip x0_hat to [-1, 1] (in the mean and in the record).
    noise_group: G > 1 draws one noise per group of G consecutive rows
      (B / G draws shared by the G rows), e.g. one per interpolation pair.

  Returns:
    (x_0 [B, H, W, C], x0_hat [len(capture_t), B, H, W, C]).
  """
  s = schedules.to_device(schedule)
  num_t = schedule.num_timesteps
  var_table = s.betas if variance == "beta" else s.posterior_variance
  b = x.shape[0]
  if b % noise_group:
    raise ValueError(f"noise_group={noise_group} must divide the batch {b}")
  ts = np.arange(t_max, -1, -1, dtype=np.int32)
  slot = np.full(num_t, -1, np.int32)
  slot[np.asarray(capture_t, np.int32)] = np.arange(len(capture_t), dtype=np.int32)
  slot_table = jnp.asarray(slot)
  buf = jnp.zeros((len(capture_t),) + x.shape, x.dtype)

  def step(carry, t):
    x, buf = carry
    t_b = jnp.full((b,), t, jnp.int32)
    eps = eps_fn(x, t_b).astype(x.dtype)
    x0_hat = objectives.eps_to_x0(s, x, t_b, eps)
    if clip_x0:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
      mean = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x
    else:
      mean = (x - s.betas[t] / s.sqrt_one_minus_alpha_bars[t] * eps) * jax.lax.rsqrt(s.alphas[t])
    key_t = jax.random.fold_in(key, num_t - 1 - t)
    if noise_group == 1:
      z = jax.random.normal(key_t, x.shape, x.dtype)
    else:
      z = jax.random.normal(key_t, (b // noise_group, 1) + x.shape[1:], x.dtype)
      z = jnp.broadcast_to(z, (b // noise_group, noise_group) + x.shape[1:]).reshape(x.shape)
    x_new = mean + jnp.where(t > 0, jnp.sqrt(var_table[t]), 0.0) * z
    if t_start is not None:
      active = (t <= t_start).reshape((b,) + (1,) * (x.ndim - 1))
      x_new = jnp.where(active, x_new, x)
    if len(capture_t):
      buf = jax.lax.cond(slot_table[t] >= 0,
                         lambda bf: bf.at[slot_table[t]].set(x0_hat), lambda bf: bf, buf)
    return (x_new, buf), None

  (x, buf), _ = jax.lax.scan(step, (x, buf), jnp.asarray(ts))
  return x, buf


def progressive_generation(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array,
                           capture_t: Sequence[int], *, variance: str = "beta",
                           clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """Fig. 6: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t) along the chain.

  At code t = 0 the step has no noise and its mean is x0_hat, so the last
  record (capture_t ending with 0) is the final sample.

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x_T: [B, H, W, C] starting noise.
    key: PRNG key (the same noise as `ancestral_sample` with this key).
    capture_t: S code timesteps at which to record x0_hat, e.g. decreasing
      from T - 1 to 0.
    variance: "beta" or "beta_tilde".
    clip_x0: clip x0_hat to [-1, 1] (the chain's mean and the records).

  Returns:
    (x_0 [B, H, W, C], x0_hat [S, B, H, W, C]).
  """
  _check(schedule, variance, capture_t, "capture_t")
  return _reverse_chain(eps_fn, schedule, x_T, key, t_max=schedule.num_timesteps - 1,
                        capture_t=capture_t, variance=variance, clip_x0=clip_x0)


def shared_latent_samples(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, key: jax.Array,
                          latent_t: Sequence[int], num_samples: int, *,
                          variance: str = "beta", clip_x0: bool = True
                          ) -> tuple[jax.Array, jax.Array]:
  """Fig. 7: samples of p(x_0 | x_t) that share one x_t ~ q(x_t | x_0), for several t.

  One noise eps encodes x0 to every t (x_t = sqrt(alpha_bar_t) x0 +
  sqrt(1 - alpha_bar_t) eps), and each x_t is continued by num_samples
  independent reverse chains (the paper's t = 1000, 750, 500, 250 are code
  999, 749, 499, 249).

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x0: [H, W, C] one image.
    key: PRNG key; (k_q, k_chain) = split(key): eps ~ normal(k_q, [1, H, W, C]),
      the chains' noise from k_chain (module docstring), one draw per row.
    latent_t: S code timesteps of the shared latents.
    num_samples: K chains per latent.
    variance: "beta" or "beta_tilde".
    clip_x0: clip x0_hat to [-1, 1].

  Returns:
    (x_t [S, H, W, C], samples [S, K, H, W, C]).
  """
  _check(schedule, variance, latent_t, "latent_t")
  k_q, k_chain = jax.random.split(key)
  shape = tuple(x0.shape)
  num_s = len(latent_t)
  t = jnp.asarray(np.asarray(latent_t, np.int32))
  eps = jax.random.normal(k_q, (1,) + shape, jnp.float32)
  x_t = schedules.q_sample(schedule, jnp.broadcast_to(x0, (num_s,) + shape).astype(jnp.float32),
                           t, jnp.broadcast_to(eps, (num_s,) + shape))
  rows = jnp.repeat(x_t, num_samples, axis=0)
  samples, _ = _reverse_chain(eps_fn, schedule, rows, k_chain, t_max=int(max(latent_t)),
                              t_start=jnp.repeat(t, num_samples), variance=variance,
                              clip_x0=clip_x0)
  return x_t, samples.reshape((num_s, num_samples) + shape)


def interpolate(eps_fn: EpsFn, schedule: Schedule, x0_a: jax.Array, x0_b: jax.Array,
                key: jax.Array, t: int, lambdas: Sequence[float], *, variance: str = "beta",
                clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """Fig. 8: decode x_bar_t = (1 - lambda) x_t + lambda x'_t by the reverse chain.

  x_t and x'_t encode x0_a and x0_b with the same noise; every lambda of a
  pair is decoded with the same reverse noise, so lambda = 0 and 1 are the
  reconstructions of the endpoints ("Rec." in the paper).

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x0_a, x0_b: [P, H, W, C] the pairs' endpoints.
    key: PRNG key; (k_q, k_chain) = split(key): eps ~ normal(k_q, [P, H, W, C]),
      the chains' noise from k_chain (module docstring), drawn [P, 1, H, W, C]
      and shared by the L rows of a pair.
    t: static code timestep of the latents (the paper's t = 500 is 499).
    lambdas: L mixing weights (e.g. 0, 0.1, ..., 1).
    variance: "beta" or "beta_tilde".
    clip_x0: clip x0_hat to [-1, 1].

  Returns:
    (decoded [P, L, H, W, C], x_bar_t [P, L, H, W, C]).
  """
  _check(schedule, variance, [t], "t")
  if x0_a.shape != x0_b.shape or x0_a.ndim != 4:
    raise ValueError(f"x0_a and x0_b must be equal [P, H, W, C], got {x0_a.shape}, "
                     f"{x0_b.shape}")
  k_q, k_chain = jax.random.split(key)
  p, shape = x0_a.shape[0], tuple(x0_a.shape[1:])
  lam = jnp.asarray(np.asarray(lambdas, np.float32)).reshape(1, -1, 1, 1, 1)
  t_b = jnp.full((p,), t, jnp.int32)
  eps = jax.random.normal(k_q, x0_a.shape, jnp.float32)
  x_a = schedules.q_sample(schedule, x0_a.astype(jnp.float32), t_b, eps)
  x_b = schedules.q_sample(schedule, x0_b.astype(jnp.float32), t_b, eps)
  x_bar = (1.0 - lam) * x_a[:, None] + lam * x_b[:, None]      # [P, L, H, W, C]
  num_l = x_bar.shape[1]
  decoded, _ = _reverse_chain(eps_fn, schedule, x_bar.reshape((p * num_l,) + shape), k_chain,
                              t_max=int(t), variance=variance, clip_x0=clip_x0,
                              noise_group=num_l)
  return decoded.reshape(x_bar.shape), x_bar


def rate_distortion_curve(eps_fn: EpsFn, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                          variance: str = "beta", clip_x0: bool = True
                          ) -> tuple[jax.Array, jax.Array, likelihood.Bound]:
  """Fig. 5: rate (bits/dim received) and distortion (RMSE of x0_hat) vs t.

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x0: [N, H, W, C] test images on the 256 levels of [-1, 1].
    key: PRNG key of the bound's noise.
    variance: the reverse variance of the bound.
    clip_x0: clip x0_hat to [-1, 1].

  Returns:
    (rate [T], distortion [T], the `likelihood.Bound`), as
    `likelihood.rate_distortion` (index T - 1 is x_T, index 0 is x_1).
  """
  bound = likelihood.variational_bound(eps_fn, schedule, x0, key, variance=variance,
                                       clip_x0=clip_x0)
  rate, distortion = likelihood.rate_distortion(bound)
  return rate, distortion, bound
