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
# Solvers of the probability-flow ODE: DPM-Solver++ and EDM's Heun.
#
# Both see the discrete VP schedule through the continuous quantities of its
# integer timesteps t (0-based, as everywhere here):
#   alpha_t = sqrt(alpha_bar_t),  sigma_t = sqrt(1 - alpha_bar_t)   (VP),
#   lambda_t = log(alpha_t / sigma_t)                                 (half log-SNR),
#   s_t = sigma_t / alpha_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)  (EDM's sigma),
# and only ever call eps_fn at integer t, so any network trained here (and the
# eps/x0/v conversions that gather schedule tables at t) works unchanged. Their
# per-step coefficients are static: computed once in float64 NumPy from the
# schedule's tables and cast to x_T's dtype. Both are deterministic: `key` is
# accepted for the common signature and unused.

DPM_SPACINGS = ("linspace", "leading", "trailing", "karras")
DPM_FINAL_SIGMAS = ("zero", "sigma_min")
DPM_SOLVER_TYPES = ("midpoint", "heun")
HEUN_SPACINGS = ("karras", "linspace")


def _alpha_bars_f64(schedule: Schedule) -> np.ndarray:
  """The schedule's alpha_bar table as float64 NumPy [T] (it must be concrete)."""
  try:
    return np.asarray(schedule.alpha_bars, np.float64)
  except jax.errors.TracerArrayConversionError:
    raise ValueError("the ODE solvers precompute their coefficients: pass a concrete "
                     "schedule (NumPy tables), not one traced through jit") from None


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int,
                  rho: float = 7.0) -> np.ndarray:
  """Karras et al. 2022, eq. 5: (s_max^(1/rho) + i / (N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho.

  Args:
    sigma_min, sigma_max: the end points.
    num_steps: N >= 2 levels, i = 0 .. N - 1 (the paper's sigma_N = 0 is not included).
    rho: the warping exponent (7 in the paper).

  Returns:
    float64 [N], decreasing from sigma_max to sigma_min.
  """
  ramp = np.linspace(0.0, 1.0, num_steps)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, alpha_bars: np.ndarray) -> np.ndarray:
  """Fractional 0-based timesteps of EDM sigmas by linear interpolation in log sigma.

  A transcription of diffusers' `_sigma_to_t` (k-diffusion's
  DiscreteSchedule.sigma_to_t): with lo the last index whose log s_lo is at
  most log sigma, t = lo + w, w = (log s_lo - log sigma) / (log s_lo -
  log s_{lo+1}) clipped to [0, 1] (so sigma outside the table clips to 0 or T - 1).

  Args:
    sigma: float64 [N] EDM sigmas.
    alpha_bars: float64 [T].

  Returns:
    float64 [N].
  """
  log_sigmas = 0.5 * np.log((1.0 - alpha_bars) / alpha_bars)
  log_sigma = np.log(np.maximum(sigma, 1e-10))
  dists = log_sigma - log_sigmas[:, None]
  lo = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
  w = np.clip((log_sigmas[lo] - log_sigma) / (log_sigmas[lo] - log_sigmas[lo + 1]), 0.0, 1.0)
  return (1.0 - w) * lo + w * (lo + 1)


def solver_timesteps(schedule: Schedule, num_steps: int, spacing: str, *, rho: float = 7.0,
                     sigma_max: float | None = None) -> np.ndarray:
  """The decreasing 0-based timesteps t_0 > ... > t_{N-1} an ODE solver visits.

  The spacings of diffusers' DPMSolverMultistepScheduler / HeunDiscreteScheduler
  (steps_offset = 0, no lambda clipping; Lin et al. 2024, Table 2), on
  integer timesteps:
    "linspace": round(linspace(0, T - 1, N + 1))[::-1][:-1] (starts at T - 1 and
      stops one stride above 0: DPM-Solver's final step goes to sigma = 0);
    "leading":  (arange(N + 1) * (T // (N + 1)))[::-1][:-1];
    "trailing": round(arange(T, 0, -T / N)) - 1 (starts at T - 1);
    "karras": the rho-spaced EDM sigmas (Karras et al. 2022, eq. 5) from
      sigma_max (default s_{T-1}) down to sigma_min = s_0, each mapped to the
      integer timestep round(sigma_to_t(sigma)) as diffusers does with
      use_karras_sigmas; ends at t = 0. The solvers then use that timestep's
      own sigma, so eps_fn always sees x at exactly the noise level of its t
      (diffusers keeps the unrounded sigma). A smaller sigma_max (EDM uses
      80) spreads the steps over the useful range of schedules whose s_{T-1}
      is huge (the cosine schedule's is ~2e4); x_T is then taken as the
      sample at t_0 < T - 1.
    "heun_linspace": round(linspace(T - 1, 0, N)) (HeunDiscreteScheduler's
      "linspace", whose fractional timesteps are rounded here); ends at t = 0.

  Args:
    schedule: the noise schedule (concrete tables).
    num_steps: N.
    spacing: one of the above.
    rho: the Karras exponent.
    sigma_max: the largest Karras sigma (clipped to s_{T-1}; "karras" only).

  Returns:
    int32 [N], strictly decreasing; a ValueError when N steps do not fit.
  """
  alpha_bars = _alpha_bars_f64(schedule)
  num_timesteps = len(alpha_bars)
  if spacing != "karras":
    return ode_timesteps(num_timesteps, num_steps, spacing)
  if not 1 <= num_steps < num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps - 1}], got {num_steps}")
  s = np.sqrt((1.0 - alpha_bars) / alpha_bars)
  hi = s[-1] if sigma_max is None else min(float(sigma_max), s[-1])
  if not hi > s[0]:
    raise ValueError(f"sigma_max must exceed sigma_min = {s[0]:.4g}, got {sigma_max}")
  if num_steps < 2:
    raise ValueError(f"'karras' spacing needs num_steps >= 2, got {num_steps}")
  ts = sigma_to_t(karras_sigmas(s[0], hi, num_steps, rho), alpha_bars).round()
  ts = ts.astype(np.int64)
  if len(ts) != num_steps or np.any(np.diff(ts) >= 0) or ts[-1] < 0:
    raise ValueError(f"'karras' spacing cannot fit {num_steps} distinct integer steps "
                     f"in T = {num_timesteps} timesteps; use fewer steps or a lower sigma_max "
                     f"(this schedule's s_(T-1) is {s[-1]:.4g}; EDM uses 80)")
  return ts.astype(np.int32)


def dpm_solver_coefficients(alpha_bars: np.ndarray, ts: np.ndarray, *, order: int = 2,
                            solver_type: str = "midpoint", final_sigma: str = "zero",
                            lower_order_final: bool = True, euler_at_final: bool = False,
                            sde: bool = False) -> dict[str, np.ndarray]:
  """Float64 per-step coefficients of the multistep DPM-Solver++ (Lu et al. 2022b).

  Step i goes from s = t_i to the next level u (t_{i+1}; after the last step
  sigma = 0 for "zero" or t = 0 for "sigma_min"), with h = lambda_u - lambda_s,
  m_k the data predictions x0_hat made at t_{i-k}, r0 = h_{i-1} / h,
  r1 = h_{i-2} / h and A = alpha_u (1 - e^{-h}):
    order 1 (DPM-Solver++'s first-order update, = DDIM): x_u = sigma_u / sigma_s x_s + A m0;
    order 2 (2M, Algorithm 2, "midpoint"): D1 = (m0 - m1) / r0 and
      x_u = sigma_u / sigma_s x_s + A m0 + A / 2 D1; "heun" replaces A / 2 by
      B = alpha_u ((e^{-h} - 1) / h + 1) (diffusers' solver_type="heun");
    order 3 (3M): the third-order multistep update of diffusers'
      multistep_dpm_solver_third_order_update (and of the authors' code).
  sde = True gives SDE-DPM-Solver++ (the same paper's solvers of the reverse
  diffusion SDE in the data-prediction form, orders 1 and 2; diffusers'
  algorithm_type="sde-dpmsolver++"), with A2 = alpha_u (1 - e^{-2h}):
    order 1: x_u = sigma_u / sigma_s e^{-h} x_s + A2 m0 + sigma_u sqrt(1 - e^{-2h}) z;
    order 2: adds A2 / 2 D1 ("midpoint") or alpha_u ((1 - e^{-2h}) / (-2h) + 1) D1
      ("heun"), z ~ N(0, I) fresh at every step.
  Every update is written x_u = c_x x_s + c_0 m0 + c_1 (m0 - m1) + c_2 (m1 - m2)
  + c_n z (c_n = 0 for the ODE).
  The order of step i is min(order, i + 1), lowered as diffusers' `step` does:
  the last step is first order when final_sigma = "zero" (h is infinite there
  and x_u = x0_hat), with euler_at_final, or with lower_order_final and N < 15;
  with lower_order_final and N < 15 the second-to-last step is at most second
  order. The paper's 1-based t_0 = T .. t_M = 0 run from our t_0 = T - 1 down.

  Args:
    alpha_bars: float64 [T] alpha_bar table.
    ts: int [N] decreasing timesteps (`solver_timesteps`).
    order: 1, 2 or 3.
    solver_type: "midpoint" or "heun" (the second-order term).
    final_sigma: "zero" or "sigma_min".
    lower_order_final: see above.
    euler_at_final: see above.
    sde: the SDE solver (order 1 or 2) instead of the ODE one.

  Returns:
    dict of float64 [N] arrays: alpha and sigma (alpha_s, sigma_s of the step's
    input, to form x0_hat), c_x, c_0, c_1, c_2, c_n.
  """
  if order not in (1, 2, 3):
    raise ValueError(f"order must be 1, 2 or 3, got {order}")
  if sde and order == 3:
    raise ValueError("the SDE solver has orders 1 and 2 (DPM-Solver++'s SDE-2M), got 3")
  if solver_type not in DPM_SOLVER_TYPES:
    raise ValueError(f"unknown solver_type {solver_type!r}; allowed: {DPM_SOLVER_TYPES}")
  if final_sigma not in DPM_FINAL_SIGMAS:
    raise ValueError(f"unknown final_sigma {final_sigma!r}; allowed: {DPM_FINAL_SIGMAS}")
  if final_sigma == "sigma_min" and ts[-1] == 0:
    raise ValueError("final_sigma='sigma_min' needs timesteps that stop above t = 0 "
                     "(the final level is t = 0)")
  n = len(ts)
  alpha = np.sqrt(alpha_bars[ts])
  sigma = np.sqrt(1.0 - alpha_bars[ts])
  lam = np.log(alpha) - np.log(sigma)
  if final_sigma == "zero":
    alpha_u, sigma_u, lam_u = 1.0, 0.0, np.inf
  else:
    alpha_u, sigma_u = np.sqrt(alpha_bars[0]), np.sqrt(1.0 - alpha_bars[0])
    lam_u = np.log(alpha_u) - np.log(sigma_u)
  alpha_next = np.append(alpha[1:], alpha_u)
  sigma_next = np.append(sigma[1:], sigma_u)
  lam_next = np.append(lam[1:], lam_u)
  coefs = {k: np.zeros(n) for k in ("c_x", "c_0", "c_1", "c_2", "c_n")}
  for i in range(n):
    step_order = min(order, i + 1)
    if i == n - 1 and (euler_at_final or (lower_order_final and n < 15) or final_sigma == "zero"):
      step_order = 1
    if i == n - 2 and lower_order_final and n < 15:
      step_order = min(step_order, 2)
    if np.isinf(lam_next[i]):   # to sigma = 0 (first order): x_u = x0_hat
      coefs["c_0"][i] = alpha_next[i]
      continue
    h = lam_next[i] - lam[i]
    if sde:
      a = alpha_next[i] * -np.expm1(-2.0 * h)             # alpha_u (1 - e^{-2h})
      b = alpha_next[i] * (np.expm1(-2.0 * h) / (2.0 * h) + 1.0)
      coefs["c_x"][i] = sigma_next[i] / sigma[i] * np.exp(-h)
      coefs["c_n"][i] = sigma_next[i] * np.sqrt(-np.expm1(-2.0 * h))
    else:
      a = alpha_next[i] * -np.expm1(-h)                   # alpha_u (1 - e^{-h})
      b = alpha_next[i] * (np.expm1(-h) / h + 1.0)        # alpha_u ((e^{-h} - 1) / h + 1)
      coefs["c_x"][i] = sigma_next[i] / sigma[i]
    coefs["c_0"][i] = a
    if step_order == 2:
      r0 = (lam[i] - lam[i - 1]) / h
      coefs["c_1"][i] = (0.5 * a if solver_type == "midpoint" else b) / r0
    elif step_order == 3:
      r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
      c = alpha_next[i] * ((np.expm1(-h) + h) / h ** 2 - 0.5)
      q = r0 / (r0 + r1)
      # D1 = D1_0 + q (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1), x += B D1 - C D2.
      coefs["c_1"][i] = (b * (1.0 + q) - c / (r0 + r1)) / r0
      coefs["c_2"][i] = (c / (r0 + r1) - b * q) / r1
  return dict(alpha=alpha, sigma=sigma, **coefs)


def dpm_solver_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array, *,
                      num_steps: int = 20, order: int = 2, spacing: str = "linspace",
                      solver_type: str = "midpoint", final_sigma: str = "zero",
                      lower_order_final: bool = True, euler_at_final: bool = False,
                      rho: float = 7.0, sigma_max: float | None = None,
                      clip_x0: bool = False, sde: bool = False, capture_every: int = 0):
  """Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Algorithm 2 = 2M).

  The data-prediction exponential integrator of the probability-flow ODE: at
  each visited timestep x0_hat = (x - sigma_s eps_hat) / alpha_s, and the step
  is x_u = sigma_u / sigma_s x + alpha_u (1 - e^{-h}) (x0_hat + D1 / 2) with
  D1 from the previous x0_hat (`dpm_solver_coefficients`). One eps_fn call per
  step (N NFE). The defaults are those of diffusers' DPMSolverMultistepScheduler
  (solver_order 2, "dpmsolver++", "midpoint", timestep_spacing "linspace",
  final_sigmas_type "zero", lower_order_final): with final_sigma = "zero" the
  last step returns x0_hat at t_{N-1}. x_T is the sample at t_0 (T - 1 for
  every spacing but "leading" and a lowered Karras sigma_max, as in diffusers).
  With sde = True it is SDE-DPM-Solver++(2M) (diffusers' "sde-dpmsolver++"):
  the reverse SDE's multistep solver, which injects fresh noise at every step
  like the ancestral sampler (step i's noise from fold_in(key, i)).

  Args:
    eps_fn: (x_t, t [B] int32) -> eps_hat.
    schedule: the noise schedule (concrete tables).
    x_T: [B, H, W, C] starting noise.
    key: PRNG key of the per-step noise (read only with sde).
    num_steps: N (= NFE).
    order: 1 (DDIM on these timesteps), 2 (2M) or 3 (3M).
    spacing: "linspace", "leading", "trailing" or "karras" (`solver_timesteps`).
    solver_type: "midpoint" (the paper's 2M) or "heun".
    final_sigma: "zero" (end at x0_hat) or "sigma_min" (end at x at t = 0;
      not with "karras", which already ends at t = 0).
    lower_order_final: lower the order of the last steps when N < 15.
    euler_at_final: a first-order last step.
    rho, sigma_max: the Karras spacing's parameters.
    clip_x0: clip every x0_hat to [-1, 1] (diffusers' thresholding with
      sample_max_value = 1).
    sde: SDE-DPM-Solver++ (orders 1 and 2) instead of the ODE solver.
    capture_every: see the module docstring.

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when capture_every > 0.
  """
  if spacing not in DPM_SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {DPM_SPACINGS}")
  ts = solver_timesteps(schedule, num_steps, spacing, rho=rho, sigma_max=sigma_max)
  coefs = dpm_solver_coefficients(_alpha_bars_f64(schedule), ts, order=order,
                                  solver_type=solver_type, final_sigma=final_sigma,
                                  lower_order_final=lower_order_final,
                                  euler_at_final=euler_at_final, sde=sde)
  xs = (jnp.arange(len(ts), dtype=jnp.int32), jnp.asarray(ts),
        {k: jnp.asarray(v, x_T.dtype) for k, v in coefs.items()})

  def step(carry, s):
    x, m1, m2 = carry
    i, t, c = s
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    m0 = (x - c["sigma"] * eps) / c["alpha"]
    if clip_x0:
      m0 = jnp.clip(m0, -1.0, 1.0)
    # The differences keep the second- and third-order terms accurate in float32.
    x = c["c_x"] * x + c["c_0"] * m0 + c["c_1"] * (m0 - m1) + c["c_2"] * (m1 - m2)
    if sde:
      x = x + c["c_n"] * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return x, m0, m1

  zeros = jnp.zeros_like(x_T)
  # The carry holds the two previous x0_hat; a capture records it whole and keeps x.
  out = _run_chain(step, (x_T, zeros, zeros), xs, capture_every)
  if capture_every:
    return out[0][0], out[1][0]
  return out[0]


def ode_timesteps(num_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
  """`solver_timesteps` for the spacings that depend on T alone (not "karras").

  Args:
    num_timesteps: T.
    num_steps: N, 1 <= N < T.
    spacing: "linspace", "leading", "trailing" or "heun_linspace".

  Returns:
    int32 [N], strictly decreasing; a ValueError when N steps do not fit.
  """
  if not 1 <= num_steps < num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps - 1}], got {num_steps}")
  if spacing == "linspace":
    ts = np.linspace(0, num_timesteps - 1, num_steps + 1).round()[::-1][:-1]
  elif spacing == "leading":
    ts = (np.arange(num_steps + 1) * (num_timesteps // (num_steps + 1)))[::-1][:-1]
  elif spacing == "trailing":
    ts = np.arange(num_timesteps, 0, -num_timesteps / num_steps).round() - 1
  elif spacing == "heun_linspace":
    ts = np.linspace(num_timesteps - 1, 0, num_steps).round()
  else:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: "
                     f"{DPM_SPACINGS + ('heun_linspace',)}")
  ts = ts.astype(np.int64)
  if len(ts) != num_steps or np.any(np.diff(ts) >= 0) or ts[-1] < 0:
    raise ValueError(f"{spacing!r} spacing cannot fit {num_steps} distinct integer steps "
                     f"in T = {num_timesteps} timesteps; use fewer steps")
  return ts.astype(np.int32)


def heun_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array, *,
                num_steps: int = 10, spacing: str = "karras", rho: float = 7.0,
                sigma_max: float | None = None, clip_x0: bool = False,
                capture_every: int = 0):
  """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on the VP schedule.

  In EDM's variables y = x / alpha_t = x sqrt(1 + s_t^2) (x the VP sample) and
  s_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the ODE is dy/ds = (y - D(y; s)) / s
  (eqs. 1 and 3 with sigma(t) = t) with the denoiser D(y; s) = y - s eps_hat(x, t)
  (eq. 7 with c_skip = 1, c_out = -s, c_in = alpha_t: the VP network reads the
  unscaled x). Over s_0 > ... > s_{N-1} > s_N = 0 (the paper's 0-based i; the
  s_i are the sigmas of the integer timesteps of `solver_timesteps`, "karras"
  or "heun_linspace", which end at t = 0; x_T is the sample at t_0):
    d_i = (y_i - D(y_i; s_i)) / s_i,
    y' = y_i + (s_{i+1} - s_i) d_i                              (Euler, line 5),
    d' = (y' - D(y'; s_{i+1})) / s_{i+1}                       (line 7),
    y_{i+1} = y_i + (s_{i+1} - s_i) (d_i + d') / 2              (line 8),
  and the last step (to s_N = 0) is the Euler step alone, y_N = D(y_{N-1}; s_{N-1}).
  2N - 1 eps_fn calls. Step by step this is diffusers' HeunDiscreteScheduler
  given these integer timesteps (its own "linspace" visits fractional t, which
  an integer-t eps_fn cannot take) and k-diffusion's sample_heun with
  s_churn = 0 on the same sigmas. With clip_x0, D is clipped to [-1, 1]
  (diffusers' clip_sample). The chain carries the VP x (so a captured
  trajectory holds x_t like the other samplers). Deterministic.

  Args:
    eps_fn: (x_t, t [B] int32) -> eps_hat.
    schedule: the noise schedule (concrete tables).
    x_T: [B, H, W, C] starting noise.
    key: unused (the common sampler signature).
    num_steps: N noise levels (2N - 1 NFE).
    spacing: "karras" or "linspace" (`solver_timesteps`' "heun_linspace").
    rho, sigma_max: the Karras spacing's parameters.
    clip_x0: clip D to [-1, 1].
    capture_every: see the module docstring.

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when capture_every > 0.
  """
  del key
  if spacing not in HEUN_SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {HEUN_SPACINGS}")
  if num_steps < 2:
    raise ValueError(f"num_steps must be >= 2, got {num_steps}")
  alpha_bars = _alpha_bars_f64(schedule)
  ts = solver_timesteps(schedule, num_steps, "karras" if spacing == "karras" else "heun_linspace",
                        rho=rho, sigma_max=sigma_max)
  sig = np.sqrt((1.0 - alpha_bars[ts]) / alpha_bars[ts])
  sig_next = np.append(sig[1:], 0.0)
  t_next = np.append(ts[1:], 0).astype(np.int32)
  scale, scale_next = np.sqrt(1.0 + sig ** 2), np.sqrt(1.0 + sig_next ** 2)
  xs = (jnp.asarray(ts), jnp.asarray(t_next),
        *(jnp.asarray(a, x_T.dtype) for a in (sig, sig_next, scale, scale_next)))

  def denoise(y, x, t, s):
    d = y - s * eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    return jnp.clip(d, -1.0, 1.0) if clip_x0 else d

  def step(x, xs_i):
    t, t_n, s, s_n, c, c_n = xs_i
    y = x * c
    d = (y - denoise(y, x, t, s)) / s
    y_euler = y + (s_n - s) * d

    def correct(y_euler):
      d_n = (y_euler - denoise(y_euler, y_euler / c_n, t_n, s_n)) / s_n
      return y + (s_n - s) * 0.5 * (d + d_n)

    # Only the last step (s_n = 0) skips the correction; cond runs one branch.
    y = jax.lax.cond(s_n > 0, correct, lambda y_e: y_e, y_euler)
    return y / c_n

  return _run_chain(step, x_T, xs, capture_every)


CONSISTENCY_MAX_STEPS = 8


def trailing_timesteps(num_timesteps: int, num: int) -> np.ndarray:
  """`num` increasing int32 timesteps with "trailing" spacing, the last T - 1.

  tau_i = T - 1 - (num - 1 - i) T / num (rounded), 0-based: the grid of
  `ddpm.distill` and the timesteps of the consistency sampler. Raises
  ValueError when they are not distinct (num > T).
  """
  if not 1 <= num <= num_timesteps:
    raise ValueError(f"must be in [1, T={num_timesteps}], got {num}")
  ts = np.round(num_timesteps - 1 - np.arange(num)[::-1] * num_timesteps / num)
  return np.maximum(ts, 0).astype(np.int32)


def consistency_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The increasing int32 [S] timesteps of the S-step consistency sampler (`trailing_timesteps`):

  1 step visits T - 1; 2 steps T - 1 and T/2 - 1; 4 steps (T = 1000) 999,
  749, 499, 249. 0-based.
  """
  if not 1 <= num_steps <= min(CONSISTENCY_MAX_STEPS, num_timesteps):
    raise ValueError(f"the consistency sampler takes 1 to "
                     f"{min(CONSISTENCY_MAX_STEPS, num_timesteps)} steps, got {num_steps}")
  return trailing_timesteps(num_timesteps, num_steps)


def consistency_sample(eps_fn: EpsFn, schedule: Schedule, x_T: jax.Array, key: jax.Array, *,
                       num_steps: int = 1, clip_x0: bool = True, capture_every: int = 0):
  """Multistep consistency sampling (Song et al. 2023, Algorithm 1) in the VP setting.

  x0 = f(x_T, tau_0) with tau_0 = T - 1; then for each later tau_i of
  `consistency_timesteps` (decreasing): x = sqrt(a_i) x0 + sqrt(1 - a_i) z,
  z ~ N(0, I), and x0 = f(x, tau_i). f(x_t, t) is the x0 prediction of
  eps_fn, (x_t - sqrt(1 - a) eps) / sqrt(a): for a consistency-distilled
  student (`ddpm.distill`), the endpoint of the teacher's PF-ODE. One network
  call per step.

  Args:
    eps_fn: (x_t, t [B]) -> eps_hat.
    schedule: the noise schedule.
    x_T: [B, H, W, C] starting noise.
    key: PRNG key of the re-noising.
    num_steps: S in [1, CONSISTENCY_MAX_STEPS].
    clip_x0: clip every x0 to [-1, 1].
    capture_every: see the module docstring (the chain holds each step's x0).

  Returns:
    x_0 [B, H, W, C], or (x_0, trajectory) when capture_every > 0.
  """
  schedule = schedules.to_device(schedule)
  ts = jnp.asarray(consistency_timesteps(schedule.num_timesteps, num_steps)[::-1].copy())

  def step(x0, s):
    i, t = s
    a = schedule.alpha_bars[t]
    z = jax.random.normal(jax.random.fold_in(key, i), x0.shape, x0.dtype)
    x = jnp.where(i == 0, x_T, jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * z)
    eps = eps_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    x0 = (x - jnp.sqrt(1.0 - a) * eps) * jax.lax.rsqrt(a)
    return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0

  # The carry is the latest x0; the first step starts from x_T.
  return _run_chain(step, jnp.zeros_like(x_T), (jnp.arange(num_steps, dtype=jnp.int32), ts),
                    capture_every)


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
    distilled: the model is a consistency-distilled student (`ddpm.distill`),
      which the "consistency" sampler needs.
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
  distilled: bool = False

  @property
  def num_steps(self) -> int:
    """The number of network evaluations of the chain (steps, 0 meaning T)."""
    if self.steps:
      return self.steps
    default = SAMPLERS[self.sampler].default_steps if self.sampler in SAMPLERS else 0
    return min(default, self.num_timesteps - 1) if default else self.num_timesteps

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
    if not isinstance(self.distilled, (bool, np.bool_)):
      raise SpecError("distilled", self.distilled, reason="must be a bool")
    rule = self.rule
    if rule.needs_distilled and not self.distilled:
      raise SpecError("sampler", self.sampler,
                      reason="it needs a consistency-distilled student (a workdir trained "
                             "with distill.teacher_workdir, e.g. configs/distill_fashion_mnist.py)",
                      allowed=self.sampler_names())
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
        rule.timesteps(t_max, self.num_steps, self.spacing)
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

  def sampler_names(self) -> tuple[str, ...]:
    """The names of the samplers this model can run (all but those needing a student)."""
    return tuple(n for n, r in SAMPLERS.items() if self.distilled or not r.needs_distilled)

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
                 "num_classes", "null_label", "distilled"])


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
    default_steps: the chain length of steps = 0; 0 means T (the ODE
      solvers, which take at most T - 1 steps, default to a short chain).
    max_steps: the longest chain (0: as many as the step rule allows).
    needs_distilled: only a consistency-distilled student can run it.
  """
  run: Callable[..., Any]
  timesteps: Callable[[int, int, str], np.ndarray] | None = None
  options: tuple[str, ...] = ()
  default_steps: int = 0
  max_steps: int = 0
  needs_distilled: bool = False


def _dpm_solver_rule(sde: bool) -> SamplerRule:
  """DPM-Solver++(2M) on diffusers' "linspace" timesteps (ODE, or SDE with sde)."""
  return SamplerRule(
      run=lambda eps_fn, schedule, x_T, key, spec, capture_every: dpm_solver_sample(
          eps_fn, schedule, x_T, key, num_steps=spec.num_steps, order=2, spacing="linspace",
          clip_x0=spec.clip_x0, sde=sde, capture_every=capture_every),
      timesteps=lambda t, s, _: ode_timesteps(t, s, "linspace")[::-1].copy(),
      options=("steps",), default_steps=20)


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
    # The ODE solvers on T-only spacings (diffusers' defaults), so that the
    # step rule needs T alone: DPM-Solver++ 2M on "linspace", EDM's Heun on
    # "heun_linspace" (2N - 1 network calls for N steps).
    "dpmpp_2m": _dpm_solver_rule(sde=False),
    # SDE-DPM-Solver++(2M): the same timesteps, fresh noise at every step.
    "dpmpp_2m_sde": _dpm_solver_rule(sde=True),
    "heun": SamplerRule(
        run=lambda eps_fn, schedule, x_T, key, spec, capture_every: heun_sample(
            eps_fn, schedule, x_T, key, num_steps=spec.num_steps, spacing="linspace",
            clip_x0=spec.clip_x0, capture_every=capture_every),
        timesteps=lambda t, s, _: ode_timesteps(t, s, "heun_linspace")[::-1].copy(),
        options=("steps",), default_steps=10),
    # Multistep consistency sampling of a distilled student (ddpm.distill):
    # 1 to CONSISTENCY_MAX_STEPS network calls, 1 by default.
    "consistency": SamplerRule(
        run=lambda eps_fn, schedule, x_T, key, spec, capture_every: consistency_sample(
            eps_fn, schedule, x_T, key, num_steps=spec.num_steps, clip_x0=spec.clip_x0,
            capture_every=capture_every),
        timesteps=lambda t, s, _: consistency_timesteps(t, s),
        options=("steps",), default_steps=1, max_steps=CONSISTENCY_MAX_STEPS,
        needs_distilled=True),
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
