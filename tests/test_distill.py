"""Consistency distillation (ddpm/distill.py) against a Gaussian oracle, in float64.

For data x0 ~ N(MU, S^2) per pixel the teacher's ideal eps is closed-form,
E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) MU) / (a S^2 + 1 - a), and in the
DDIM variables xbar = x / sqrt(a), sigma = sqrt((1 - a) / a):
  - one teacher DDIM step maps xbar - MU to (xbar - MU) g with
    g = 1 - (sigma_hi - sigma_lo) sigma_hi / (S^2 + sigma_hi^2);
  - the probability-flow ODE maps it to (xbar - MU) sqrt(S^2 + s_lo^2) /
    sqrt(S^2 + s_hi^2), so its clean endpoint is MU + (xbar - MU) S /
    sqrt(S^2 + sigma^2).
These are derived here in NumPy, independently of the module: the loss's
fixed point (the composed DDIM chain), its convergence to the ODE endpoint,
and one training step by hand.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm import distill
from ddpm import samplers
from ddpm import schedules

MU, S = 0.3, 0.5
T = 1000


def _alpha_bars() -> np.ndarray:
  return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))


def _sigma(a):
  return np.sqrt((1.0 - a) / a)


def _chain_coefs(ab: np.ndarray, grid: np.ndarray, solver: str = "ddim") -> np.ndarray:
  """c_n with Phi_n(x) = MU + (x / sqrt(a_n) - MU) c_n: the teacher's chain from tau_n to
  the clean end (NumPy, float64). With y = xbar - MU the eps is sigma y / (S^2 + sigma^2),
  so a DDIM step multiplies y by g = 1 - (s_hi - s_lo) s_hi / (S^2 + s_hi^2) and a Heun
  step by 1 - (s_hi - s_lo) / 2 (s_hi / (S^2 + s_hi^2) + g s_lo / (S^2 + s_lo^2)); the
  step to the clean end is the DDIM step either way."""
  sig = _sigma(ab[grid])
  coefs, c = [], 1.0
  for n in range(len(grid)):
    hi, lo = sig[n], (sig[n - 1] if n else 0.0)
    g = 1.0 - (hi - lo) * hi / (S * S + hi ** 2)
    if solver == "heun" and n:
      g = 1.0 - 0.5 * (hi - lo) * (hi / (S * S + hi ** 2) + g * lo / (S * S + lo ** 2))
    c *= g
    coefs.append(c)
  return np.asarray(coefs)


def _fixed_point(ab, grid, coefs):
  """(f, args): the linear student with the chain's coefficients on the grid, and the
  arguments of `consistency_loss` after the student for a batch of `_batch()`."""
  coef_by_t = np.full(T, np.nan)
  coef_by_t[grid] = coefs
  f = _linear_x0(ab, coef_by_t)
  x0, noise, n = _batch()
  return f, (_oracle_eps(ab), f, jnp.asarray(ab), jnp.asarray(grid), jnp.asarray(x0),
             jnp.asarray(noise), jnp.asarray(n))


def _oracle_eps(ab):
  ab = jnp.asarray(ab)

  def eps(x, t):
    a = ab[t].reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sqrt(1.0 - a) * (x - jnp.sqrt(a) * MU) / (a * S * S + 1.0 - a)
  return eps


def _linear_x0(ab, coef_by_t):
  """f(x, t) = MU + (x / sqrt(a_t) - MU) coef[t]."""
  ab, coef_by_t = jnp.asarray(ab), jnp.asarray(coef_by_t)

  def f(x, t):
    shape = (-1,) + (1,) * (x.ndim - 1)
    return MU + (x / jnp.sqrt(ab[t]).reshape(shape) - MU) * coef_by_t[t].reshape(shape)
  return f


def _batch(num=256, dim=6, num_intervals=40, seed=0):
  rng = np.random.default_rng(seed)
  x0 = MU + S * rng.standard_normal((num, dim))
  noise = rng.standard_normal((num, dim))
  n = np.arange(num) % num_intervals      # every interval, the boundary one included
  return x0, noise, n


def test_grid_is_trailing_and_holds_the_sampler_timesteps():
  grid = distill.consistency_grid(T, 40)
  assert grid.dtype == np.int32 and len(grid) == 40 and grid[-1] == T - 1
  assert np.all(np.diff(grid) > 0) and grid[0] == 24
  for k in (1, 2, 4):
    assert set(samplers.consistency_timesteps(T, k)) <= set(grid.tolist())
  np.testing.assert_array_equal(distill.consistency_grid(T, T), np.arange(T))
  np.testing.assert_array_equal(samplers.consistency_timesteps(T, 4), [249, 499, 749, 999])
  with pytest.raises(ValueError, match="num_intervals"):
    distill.consistency_grid(T, 0)


def test_the_composed_teacher_chain_is_the_fixed_point_of_the_loss():
  ab = _alpha_bars()
  grid = distill.consistency_grid(T, 40)
  coefs = _chain_coefs(ab, grid)
  x0, noise, n = _batch()
  with jax.enable_x64(True):
    f, args = _fixed_point(ab, grid, coefs)
    loss = distill.consistency_loss(f, *args)
    assert loss.dtype == jnp.float64
    assert float(loss) < 1e-26
    # The target of each interval is the teacher chain's endpoint from x_hi.
    a = ab[grid[n]][:, None]
    x_hi = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    target = distill.consistency_target(_oracle_eps(ab), f, jnp.asarray(ab), jnp.asarray(grid),
                                        jnp.asarray(x_hi), jnp.asarray(n))
    expect = MU + (x_hi / np.sqrt(a) - MU) * coefs[n][:, None]
    np.testing.assert_allclose(np.asarray(target), expect, rtol=1e-12, atol=1e-12)
    # Off the fixed point the loss is not zero, at the boundary interval too.
    for bad in (0, 20):
      wrong = coefs.copy()
      wrong[bad] *= 1.01
      g, _ = _fixed_point(ab, grid, wrong)
      assert float(distill.consistency_loss(g, args[0], g, *args[2:])) > 1e-9
    # Pseudo-Huber has the same fixed point.
    assert float(distill.consistency_loss(f, *args, kind="huber")) < 1e-12


def test_the_fixed_point_tends_to_the_probability_flow_ode_endpoint():
  """A perfectly distilled student maps x_T to the ODE's endpoint as the grid is refined."""
  ab = _alpha_bars()
  exact_top = S / np.sqrt(S * S + _sigma(ab[T - 1]) ** 2)
  errors = []
  for num in (10, 40, 1000):
    grid = distill.consistency_grid(T, num)
    errors.append(abs(_chain_coefs(ab, grid)[-1] / exact_top - 1.0))
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.02, errors
  # The exact ODE endpoint as student: its loss is only the DDIM step's local
  # error, which shrinks with the steps (first order: ~1/N^2 per step).
  losses = []
  for num in (40, 1000):
    grid = distill.consistency_grid(T, num)
    exact_by_t = S / np.sqrt(S * S + _sigma(ab) ** 2)
    x0, noise, n = _batch(num_intervals=num, num=2000)
    with jax.enable_x64(True):
      f = _linear_x0(ab, exact_by_t)
      losses.append(float(distill.consistency_loss(
          f, _oracle_eps(ab), f, jnp.asarray(ab), jnp.asarray(grid), jnp.asarray(x0),
          jnp.asarray(noise), jnp.asarray(n))))
  assert losses[1] < losses[0] / 100, losses


def test_the_heun_teacher_chain_is_the_fixed_point_and_nearer_the_ode():
  ab = _alpha_bars()
  grid = distill.consistency_grid(T, 40)
  coefs = _chain_coefs(ab, grid, "heun")
  x0, noise, n = _batch()
  with jax.enable_x64(True):
    f, args = _fixed_point(ab, grid, coefs)
    assert float(distill.consistency_loss(f, *args, solver="heun")) < 1e-26
    # The DDIM chain is not the Heun loss's fixed point (and vice versa).
    g, _ = _fixed_point(ab, grid, _chain_coefs(ab, grid))
    assert float(distill.consistency_loss(g, args[0], g, *args[2:], solver="heun")) > 1e-9
    assert float(distill.consistency_loss(f, *args, solver="ddim")) > 1e-9
    a = ab[grid[n]][:, None]
    x_hi = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    target = distill.consistency_target(_oracle_eps(ab), f, jnp.asarray(ab), jnp.asarray(grid),
                                        jnp.asarray(x_hi), jnp.asarray(n), solver="heun")
    np.testing.assert_allclose(np.asarray(target), MU + (x_hi / np.sqrt(a) - MU) * coefs[n][:, None],
                               rtol=1e-12, atol=1e-12)
  # Second order: the fixed point's map from x_T is far nearer the ODE's endpoint
  # (N = 40: 1.2% against DDIM's 7.1%) and its error falls faster with N.
  exact_top = S / np.sqrt(S * S + _sigma(ab[T - 1]) ** 2)
  err = {(kind, num): abs(_chain_coefs(ab, distill.consistency_grid(T, num), kind)[-1]
                          / exact_top - 1.0)
         for kind in ("ddim", "heun") for num in (10, 40)}
  assert err["heun", 40] < 0.02 and err["heun", 40] < err["ddim", 40] / 4, err
  assert err["heun", 10] / err["heun", 40] > 8 > err["ddim", 10] / err["ddim", 40], err
  with pytest.raises(ValueError, match="unknown solver 'rk4'"):
    distill.teacher_step(_oracle_eps(ab), jnp.ones((1, 2)), jnp.array([5]), jnp.array([4]),
                         jnp.array([0.9]), jnp.array([0.95]), solver="rk4")


def test_one_training_step_matches_a_hand_computed_gradient():
  """A linear student f(x, tau_m) = w_m x + b_m, online target, one SGD step (float64)."""
  ab = _alpha_bars()
  num_intervals = 8
  grid = distill.consistency_grid(T, num_intervals)
  rng = np.random.default_rng(1)
  w = 1.0 + 0.1 * rng.standard_normal(num_intervals)
  b = 0.1 * rng.standard_normal(num_intervals)
  x0, noise, n = _batch(num=64, dim=5, num_intervals=num_intervals, seed=2)
  index = np.zeros(T, np.int64)
  index[grid] = np.arange(num_intervals)

  # NumPy: x_hi, the teacher's DDIM step, the target from the current parameters.
  a_hi = ab[grid[n]][:, None]
  x_hi = np.sqrt(a_hi) * x0 + np.sqrt(1 - a_hi) * noise
  eps = np.sqrt(1 - a_hi) * (x_hi - np.sqrt(a_hi) * MU) / (a_hi * S * S + 1 - a_hi)
  x0_t = (x_hi - np.sqrt(1 - a_hi) * eps) / np.sqrt(a_hi)
  a_lo = np.where(n > 0, ab[grid[np.maximum(n - 1, 0)]], 1.0)[:, None]
  x_lo = np.sqrt(a_lo) * x0_t + np.sqrt(1 - a_lo) * eps
  m_lo = np.maximum(n - 1, 0)
  target = np.where((n > 0)[:, None], w[m_lo][:, None] * x_lo + b[m_lo][:, None], x_lo)
  resid = w[n][:, None] * x_hi + b[n][:, None] - target
  count = resid.size
  loss = np.mean(resid ** 2)
  grad_w = np.array([2 * np.sum((resid * x_hi)[n == m]) / count for m in range(num_intervals)])
  grad_b = np.array([2 * np.sum(resid[n == m]) / count for m in range(num_intervals)])

  with jax.enable_x64(True):
    idx = jnp.asarray(index)

    def x0_fn(params):
      return lambda x, t: params["w"][idx[t]][:, None] * x + params["b"][idx[t]][:, None]

    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}

    def loss_fn(p):
      return distill.consistency_loss(x0_fn(p), _oracle_eps(ab),
                                      x0_fn(jax.lax.stop_gradient(params)), jnp.asarray(ab),
                                      jnp.asarray(grid), jnp.asarray(x0), jnp.asarray(noise),
                                      jnp.asarray(n))
    value, grads = jax.value_and_grad(loss_fn)(params)
    np.testing.assert_allclose(float(value), loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grads["w"]), grad_w, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.asarray(grads["b"]), grad_b, rtol=1e-10, atol=1e-14)
    tx = optax.sgd(0.1)
    updates, _ = tx.update(grads, tx.init(params))
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(new["w"]), w - 0.1 * grad_w, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(new["b"]), b - 0.1 * grad_b, rtol=1e-12)


def test_consistency_sampler_runs_the_student_and_renoises():
  schedule = schedules.make_schedule("linear", T)
  ab = np.asarray(schedule.alpha_bars, np.float64)
  exact = S / np.sqrt(S * S + _sigma(ab) ** 2)

  def eps_fn(x, t):   # the eps of a student whose x0 is the ODE endpoint
    a = jnp.asarray(schedule.alpha_bars)[t][:, None, None, None]
    f = MU + (x / jnp.sqrt(a) - MU) * jnp.asarray(exact, jnp.float32)[t][:, None, None, None]
    return (x - jnp.sqrt(a) * f) / jnp.sqrt(1.0 - a)

  x_T = jax.random.normal(jax.random.key(0), (512, 4, 4, 1))
  one = samplers.consistency_sample(eps_fn, schedule, x_T, jax.random.key(1), num_steps=1,
                                    clip_x0=False)
  expect = MU + (np.asarray(x_T, np.float64) / np.sqrt(ab[-1]) - MU) * exact[-1]
  np.testing.assert_allclose(np.asarray(one), expect, atol=2e-3)
  # Four steps of a perfect consistency function keep the data distribution.
  four, traj = samplers.consistency_sample(eps_fn, schedule, x_T, jax.random.key(1),
                                           num_steps=4, clip_x0=False, capture_every=1)
  assert traj.shape == (4,) + x_T.shape
  np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(four))
  np.testing.assert_allclose(np.asarray(traj[0]), np.asarray(one), atol=1e-6)
  x = np.asarray(four)
  assert abs(x.mean() - MU) < 0.03 and abs(x.std() - S) < 0.03
  assert not np.allclose(np.asarray(traj[1]), np.asarray(traj[0]))  # it re-noised


def test_spec_rules_of_the_consistency_sampler():
  spec = samplers.SamplingSpec(sampler="consistency", num_timesteps=T, distilled=True).validate()
  assert spec.num_steps == 1 and "consistency" in spec.sampler_names()
  assert dataclasses.replace(spec, steps=4).validate().num_steps == 4
  with pytest.raises(samplers.SpecError, match="steps=9 is invalid.*1 to 8"):
    dataclasses.replace(spec, steps=9).validate()
  with pytest.raises(samplers.SpecError, match="consistency-distilled student"):
    dataclasses.replace(spec, distilled=False).validate()
  assert "consistency" not in samplers.SamplingSpec(num_timesteps=T).sampler_names()
