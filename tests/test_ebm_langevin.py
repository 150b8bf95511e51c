"""Langevin dynamics: the update rule, stationary statistics, capture, clamping."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm import langevin


def quadratic_energy(x):
  """E = |x|²/2 per chain: [B, D] -> [B]."""
  return 0.5 * jnp.sum(jnp.square(x), axis=-1)


@pytest.mark.parametrize("noise_first", [False, True])
def test_quadratic_energy_is_ar1_with_known_stationary_variance(noise_first):
  # E = x²/2, ∇E = x: the default order gives x' = (1-α)x + σz, stationary
  # variance σ²/(2α - α²); the tutorial's order gives x' = (1-α)(x + σz),
  # variance (1-α)²σ²/(2α - α²). Mean 0 either way.
  alpha, sigma = 0.2, 0.3
  x0 = jnp.full((2000, 8), 3.0)      # far from the mode: tests convergence too
  x = langevin.langevin_sample(quadratic_energy, x0, jax.random.key(0), 200, alpha, sigma,
                               grad_clip=None, x_range=None, noise_first=noise_first)
  var = sigma ** 2 / (2 * alpha - alpha ** 2)
  if noise_first:
    var *= (1 - alpha) ** 2
  x = np.asarray(x)
  # 16000 nearly independent draws: std error of the variance ~1.1%.
  np.testing.assert_allclose(x.mean(), 0.0, atol=4 * math.sqrt(var / x.size))
  np.testing.assert_allclose(x.var(), var, rtol=0.05)


def test_update_order_without_noise_is_clipped_gradient_step():
  x0 = jnp.array([[0.5, -0.9, 0.0]])
  energy = lambda x: jnp.sum(3.0 * x, axis=-1)    # ∇E = 3 everywhere
  x1 = langevin.langevin_sample(energy, x0, jax.random.key(0), 1, 0.2, 0.0, grad_clip=1.0)
  # x - 0.2 * clip(3, -1, 1), then clipped to [-1, 1]
  np.testing.assert_allclose(x1, [[0.3, -1.0, -0.2]], rtol=1e-6)


def test_zero_energy_chain_adds_gaussian_noise():
  x0 = jnp.zeros((20000, 1))
  x = langevin.langevin_sample(lambda x: jnp.zeros(x.shape[0]), x0, jax.random.key(1), 4,
                               1.0, 0.1, x_range=None)
  np.testing.assert_allclose(np.std(x), 0.1 * 2.0, rtol=0.03)   # sqrt(4) steps


def _mixture_energy(pi_left, mu, s):
  def energy(x):
    x = x[:, 0]
    log_left = jnp.log(pi_left) - 0.5 * ((x + mu) / s) ** 2
    log_right = jnp.log(1 - pi_left) - 0.5 * ((x - mu) / s) ** 2
    return -jnp.logaddexp(log_left, log_right)
  return energy


def test_gaussian_mixture_visits_both_modes_in_right_proportion():
  pi_left, mu, s = 0.3, 1.5, 0.7
  alpha = 0.02
  # All chains start in the left mode: the right proportion can only come
  # from crossing the barrier.
  x0 = jnp.full((2000, 1), -mu)
  x, traj = langevin.langevin_sample(_mixture_energy(pi_left, mu, s), x0, jax.random.key(2),
                                     3000, alpha, math.sqrt(2 * alpha), x_range=None,
                                     capture_every=100)
  phi = 0.5 * (1 + math.erf(mu / s / math.sqrt(2)))   # P(N(mu, s²) > 0)
  p_right = pi_left * (1 - phi) + (1 - pi_left) * phi
  np.testing.assert_allclose(np.mean(np.asarray(x) > 0), p_right, atol=0.04)
  traj = np.asarray(traj)[:, :, 0]
  visited_both = (traj < -0.5).any(axis=0) & (traj > 0.5).any(axis=0)
  assert visited_both.mean() > 0.9
  # the time average of one chain agrees too (it is ergodic, not stuck)
  np.testing.assert_allclose(np.mean(traj[10:] > 0), p_right, atol=0.04)


def test_states_stay_in_range_and_gradient_clip_bounds_the_move():
  x0 = jnp.zeros((4, 3, 3, 1))
  energy = lambda x: jnp.sum(-100.0 * x, axis=(1, 2, 3))   # pushes x up hard
  result = langevin.langevin_chain(energy, x0, jax.random.key(3), 1, 10.0, 0.0, grad_clip=0.03)
  np.testing.assert_allclose(result.x, 0.3, rtol=1e-6)     # 10 * 0.03
  np.testing.assert_allclose(result.grad_norm, 100.0 * 3, rtol=1e-5)   # unclipped, per chain
  x = langevin.langevin_sample(energy, x0, jax.random.key(3), 10, 10.0, 0.5, grad_clip=0.03)
  assert float(jnp.max(x)) <= 1.0 and float(jnp.min(x)) >= -1.0


def test_capture_shapes_start_and_remainder():
  x0 = jax.random.normal(jax.random.key(4), (5, 2))
  x, traj = langevin.langevin_sample(quadratic_energy, x0, jax.random.key(5), 10, 0.1, 0.1,
                                     x_range=None, capture_every=3)
  assert traj.shape == (4, 5, 2)            # start + after steps 3, 6, 9
  np.testing.assert_array_equal(traj[0], x0)
  # the same key gives the same chain with or without capture
  x_plain = langevin.langevin_sample(quadratic_energy, x0, jax.random.key(5), 10, 0.1, 0.1,
                                     x_range=None)
  np.testing.assert_allclose(x, x_plain, rtol=1e-6, atol=1e-6)


def test_project_fn_clamps_after_every_step():
  mask = jnp.array([True, False, True, False])
  known = jnp.array([0.25, 0.0, -0.5, 0.0])
  x0 = jnp.zeros((3, 4))
  _, traj = langevin.langevin_sample(quadratic_energy, x0, jax.random.key(6), 6, 0.3, 0.5,
                                     capture_every=1, noise_first=True,
                                     project_fn=lambda x: jnp.where(mask, known, x))
  traj = np.asarray(traj)
  np.testing.assert_array_equal(traj[:, :, 0], 0.25)
  np.testing.assert_array_equal(traj[:, :, 2], -0.5)
  assert np.all(traj[1:, :, 1] != 0.0)


def test_chain_is_deterministic_and_jittable():
  x0 = jnp.zeros((3, 2))
  run = jax.jit(lambda k: langevin.langevin_sample(quadratic_energy, x0, k, 5, 0.1, 0.2))
  np.testing.assert_array_equal(run(jax.random.key(7)), run(jax.random.key(7)))
  assert not np.array_equal(run(jax.random.key(7)), run(jax.random.key(8)))


def test_chain_noise_is_standard_normal_of_the_right_shape():
  key = jax.random.key(7)
  z = np.asarray(langevin._standard_normal(key, (64, 16, 16, 3), jnp.float32), np.float64)
  assert z.shape == (64, 16, 16, 3)
  n = z.size
  assert abs(z.mean()) < 5 / np.sqrt(n)
  assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
  assert abs(np.mean(z ** 4) - 3) < 5 * np.sqrt(96 / n)   # Var(z^4) = 105 - 9
  # per-row draws are not copies of each other
  assert np.abs(np.corrcoef(z[0].ravel(), z[1].ravel())[0, 1]) < 5 / np.sqrt(z[0].size)
  np.testing.assert_array_equal(langevin._standard_normal(key, (5, 4), jnp.float32),
                                jax.random.normal(key, (5, 4), jnp.float32))
