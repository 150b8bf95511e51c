"""The paper's figures (ddpm.paper_figures): shapes, and the chains against a float64 NumPy chain."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm import paper_figures
from ddpm import samplers
from ddpm import schedules

T = 40
BETAS = np.linspace(1e-3, 0.2, T)


def _eps(x_t, t, xp):
  """An analytic, nonlinear stand-in for the network (0-based t [B])."""
  t = xp.reshape(t, (-1,) + (1,) * (x_t.ndim - 1))
  return 0.7 * xp.tanh(1.3 * x_t) + 0.01 * t * x_t - 0.05


def _jax_eps(x_t, t):
  return _eps(x_t, t, jnp)


def _numpy_chain(x, t_start, noise, variance, clip_x0):
  """Algorithm 2 in float64 from code t_start down to 0; noise(t) is the step's z."""
  tab = schedules.tables_from_betas(BETAS)
  ab, alphas, betas = tab["alpha_bars"], tab["alphas"], tab["betas"]
  var = betas if variance == "beta" else tab["posterior_variance"]
  x = np.asarray(x, np.float64)
  for t in range(t_start, -1, -1):
    eps = _eps(x, np.full(len(x), t, np.float64), np)
    if clip_x0:
      x0 = np.clip((x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t]), -1, 1)
      mean = tab["posterior_mean_coef1"][t] * x0 + tab["posterior_mean_coef2"][t] * x
    else:
      mean = (x - betas[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(alphas[t])
    x = mean + (np.sqrt(var[t]) if t > 0 else 0.0) * noise(t)
  return x


def _step_noises(key, shape):
  """[T, *shape]: entry t is the documented noise of the step at code t, fold_in(key, T - 1 - t)."""
  draw = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(key, T - 1 - t), shape))
  return np.asarray(jax.jit(draw)(jnp.arange(T)), np.float64)


@pytest.mark.parametrize("variance, clip_x0", [("beta", True), ("beta_tilde", False)])
def test_progressive_generation_ends_at_the_sample(variance, clip_x0):
  sched = schedules.schedule_from_betas(BETAS)
  x_T = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
  key = jax.random.key(1)
  capture = [T - 1, 25, 10, 0]
  run = jax.jit(lambda x: (
      paper_figures.progressive_generation(_jax_eps, sched, x, key, capture, variance=variance,
                                           clip_x0=clip_x0),
      samplers.ancestral_sample(_jax_eps, sched, x, key, variance=variance, clip_x0=clip_x0)))
  (x_0, x0_hat), reference = run(x_T)
  assert x_0.shape == (3, 4, 4, 1) and x0_hat.shape == (4, 3, 4, 4, 1)
  # The last record (code t = 0: no noise, mean = x0_hat) is the sample, and
  # the chain is the ancestral sampler's with the same key.
  np.testing.assert_allclose(x0_hat[-1], x_0, atol=1e-6)
  np.testing.assert_allclose(x_0, reference, atol=1e-5)
  # The first record is the prediction from x_T itself.
  a = schedules.tables_from_betas(BETAS)["alpha_bars"][-1]
  first = (np.asarray(x_T) - math.sqrt(1 - a) * _eps(np.asarray(x_T, np.float64),
                                                      np.full(3, T - 1.0), np)) / math.sqrt(a)
  np.testing.assert_allclose(x0_hat[0], np.clip(first, -1, 1) if clip_x0 else first, rtol=1e-4,
                             atol=1e-4)
  assert float(jnp.std(x0_hat[1] - x0_hat[2])) > 1e-3   # the records differ


def test_shared_latent_samples_continue_each_latent():
  sched = schedules.schedule_from_betas(BETAS)
  x0 = jnp.linspace(-1, 1, 16).reshape(4, 4, 1)
  key = jax.random.key(3)
  latent_t = [T - 1, 29, 19, 9]
  k = 3
  x_t, samples = jax.jit(lambda x: paper_figures.shared_latent_samples(
      _jax_eps, sched, x, key, latent_t, k, variance="beta", clip_x0=True))(x0)
  assert x_t.shape == (4, 4, 4, 1) and samples.shape == (4, k, 4, 4, 1)
  k_q, k_chain = jax.random.split(key)
  eps = np.asarray(jax.random.normal(k_q, (1, 4, 4, 1)), np.float64)
  ab = schedules.tables_from_betas(BETAS)["alpha_bars"]
  noises = _step_noises(k_chain, (len(latent_t) * k, 4, 4, 1))
  for s, t in enumerate(latent_t):
    expected = math.sqrt(ab[t]) * np.asarray(x0)[None] + math.sqrt(1 - ab[t]) * eps
    np.testing.assert_allclose(x_t[s], expected[0], atol=1e-5)
    rows = slice(s * k, (s + 1) * k)   # this latent's rows of the batch [S * K]
    reference = _numpy_chain(np.repeat(expected, k, 0), t, lambda u: noises[u, rows], "beta",
                             True)
    np.testing.assert_allclose(samples[s], reference, atol=1e-4)
  # The K chains of a latent have their own noise.
  assert float(jnp.min(jnp.std(samples, axis=1).mean(axis=(1, 2, 3)))) > 1e-3


def test_interpolation_endpoints_are_the_reconstructions():
  sched = schedules.schedule_from_betas(BETAS)
  x0_a = jax.random.uniform(jax.random.key(4), (2, 4, 4, 1), minval=-1, maxval=1)
  x0_b = jax.random.uniform(jax.random.key(5), (2, 4, 4, 1), minval=-1, maxval=1)
  key, t = jax.random.key(6), 19
  lambdas = [0.0, 0.25, 0.5, 1.0]
  decoded, x_bar = jax.jit(lambda a, b: paper_figures.interpolate(
      _jax_eps, sched, a, b, key, t, lambdas, variance="beta_tilde", clip_x0=False))(x0_a, x0_b)
  assert decoded.shape == x_bar.shape == (2, 4, 4, 4, 1)
  k_q, k_chain = jax.random.split(key)
  eps = np.asarray(jax.random.normal(k_q, (2, 4, 4, 1)), np.float64)
  ab = schedules.tables_from_betas(BETAS)["alpha_bars"][t]
  x_a = math.sqrt(ab) * np.asarray(x0_a) + math.sqrt(1 - ab) * eps
  x_b = math.sqrt(ab) * np.asarray(x0_b) + math.sqrt(1 - ab) * eps
  np.testing.assert_allclose(x_bar[:, 0], x_a, atol=1e-5)
  np.testing.assert_allclose(x_bar[:, -1], x_b, atol=1e-5)
  np.testing.assert_allclose(x_bar[:, 2], 0.5 * (x_a + x_b), atol=1e-5)
  # One reverse noise per pair, shared by its lambdas: lambda = 0 and 1 are
  # the reverse chains of the endpoints' latents.
  noises = _step_noises(k_chain, (2, 1, 4, 4, 1))[:, :, 0]
  noise = lambda u: noises[u]
  for j, x in ((0, x_a), (-1, x_b)):
    np.testing.assert_allclose(decoded[:, j], _numpy_chain(x, t, noise, "beta_tilde", False),
                               atol=1e-4)
  assert float(jnp.abs(decoded[:, 1] - decoded[:, 2]).max()) > 1e-3


def test_rate_distortion_is_zero_distortion_for_an_exact_eps():
  """Point-mass data x* with eps_hat = (x_t - sqrt(a) x*) / sqrt(1 - a): x0_hat = x* at every t."""
  sched = schedules.make_schedule("linear", 1000)
  k = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1) * 8 % 256
  x_star = jnp.asarray(k / 127.5 - 1, jnp.float32)

  def eps_fn(x_t, t):
    a = jnp.asarray(sched.alpha_bars)[t].reshape(-1, 1, 1, 1)
    return (x_t - jnp.sqrt(a) * x_star) / jnp.sqrt(1 - a)

  rate, distortion, bound = jax.jit(lambda x: paper_figures.rate_distortion_curve(
      eps_fn, sched, x, jax.random.key(0)))(x_star)
  assert rate.shape == distortion.shape == (1000,)
  assert float(distortion[0]) < 1e-3 and float(jnp.max(distortion)) < 0.05
  np.testing.assert_allclose(rate[-1], jnp.mean(bound.prior_bpd), rtol=1e-6)
  np.testing.assert_allclose(rate[0] + jnp.mean(bound.terms_bpd[:, 0]), jnp.mean(bound.total_bpd),
                             rtol=1e-5)
  assert np.all(np.diff(np.asarray(rate)) <= 1e-6)


def test_bad_timesteps_and_variance_are_named():
  sched = schedules.schedule_from_betas(BETAS)
  x = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="capture_t"):
    paper_figures.progressive_generation(_jax_eps, sched, x, jax.random.key(0), [T])
  with pytest.raises(ValueError, match="variance"):
    paper_figures.interpolate(_jax_eps, sched, x, x, jax.random.key(0), 3, [0.0],
                              variance="large")
