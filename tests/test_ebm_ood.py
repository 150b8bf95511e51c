"""OOD score, AUROC (against a brute-force Mann-Whitney count), OOD sets, inpainting."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ebm import ood


def _auroc_pairwise(neg, pos) -> float:
  """P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) by counting every pair (Mann-Whitney U / n⁺n⁻)."""
  neg, pos = np.asarray(neg, np.float64), np.asarray(pos, np.float64)
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_equals_the_pairwise_mann_whitney_statistic(seed):
  rng = np.random.default_rng(seed)
  neg = rng.integers(0, 6, size=13).astype(np.float32)     # many ties
  pos = rng.integers(2, 9, size=7).astype(np.float32)
  np.testing.assert_allclose(ood.auroc(neg, pos), _auroc_pairwise(neg, pos), rtol=1e-6)
  neg, pos = rng.normal(size=50), rng.normal(0.5, 1.0, size=30)
  np.testing.assert_allclose(ood.auroc(neg, pos), _auroc_pairwise(neg, pos), rtol=1e-6)


def test_auroc_extremes():
  a = jnp.array([0.1, 0.2, 0.3])
  b = jnp.array([1.0, 2.0])
  np.testing.assert_allclose(ood.auroc(a, b), 1.0)          # perfectly separated
  np.testing.assert_allclose(ood.auroc(b, a), 0.0)          # perfectly reversed
  np.testing.assert_allclose(ood.auroc(a, a), 0.5)          # identical
  np.testing.assert_allclose(ood.auroc(jnp.ones(4), jnp.ones(9)), 0.5)   # all tied


def test_ood_sets_shapes_ranges_and_definitions():
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1, maxval=1)
  sets = ood.make_ood_sets(jax.random.key(1), x)
  for name, s in sets.items():
    assert s.shape == x.shape, name
    assert float(s.min()) >= -1.0 and float(s.max()) <= 1.0, name
  np.testing.assert_array_equal(sets["vflip"][:, 0], x[:, -1])
  np.testing.assert_array_equal(sets["hflip"][:, :, 0], x[:, :, -1])
  np.testing.assert_array_equal(sets["inverted"], -x)
  assert not np.array_equal(sets["gaussian_noised"], x)


def test_ood_score_is_the_energy_and_batches_the_same():
  energy = lambda x: jnp.mean(x, axis=(1, 2, 3))
  x = jax.random.normal(jax.random.key(2), (10, 4, 4, 1))
  np.testing.assert_allclose(ood.ood_score(energy, x, batch_size=3), energy(x), rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("d", [0.0, 0.5, 1.5])
def test_auroc_of_two_gaussians_is_phi_of_d_over_root_two(d):
  # E(x) = the single pixel; in: N(0, 1), out: N(d, 1). P(s+ > s-) with
  # s+ - s- ~ N(d, 2) is Phi(d / sqrt 2). 4000 each: standard error < 0.007.
  rng = np.random.default_rng(int(10 * d))
  x_in = rng.normal(0.0, 1.0, (4000, 1, 1, 1)).astype(np.float32)
  x_out = rng.normal(d, 1.0, (4000, 1, 1, 1)).astype(np.float32)
  energy = lambda x: x[:, 0, 0, 0]
  got = ood.auroc(ood.ood_score(energy, x_in, 512), ood.ood_score(energy, x_out, 512))
  np.testing.assert_allclose(float(got), scipy.stats.norm.cdf(d / np.sqrt(2.0)), atol=0.025)


def _censored_normal_moments(mu, sigma, lo, hi):
  """Mean and variance of clip(Y, lo, hi), Y ~ N(mu, sigma^2) (float64)."""
  a, b = (lo - mu) / sigma, (hi - mu) / sigma
  norm = scipy.stats.norm
  p_in = norm.cdf(b) - norm.cdf(a)
  # E[Y 1{lo<Y<hi}] and E[Y^2 1{lo<Y<hi}] of the normal, plus the clipped tails.
  m1 = mu * p_in + sigma * (norm.pdf(a) - norm.pdf(b))
  m2 = ((mu ** 2 + sigma ** 2) * p_in + 2 * mu * sigma * (norm.pdf(a) - norm.pdf(b))
        + sigma ** 2 * (a * norm.pdf(a) - b * norm.pdf(b)))
  mean = m1 + lo * norm.cdf(a) + hi * norm.sf(b)
  second = m2 + lo ** 2 * norm.cdf(a) + hi ** 2 * norm.sf(b)
  return mean, second - mean ** 2


def test_ood_evaluate_equals_closed_form_aurocs_of_a_mean_pixel_energy():
  # E(x) = mean pixel over P = 64 pixels; in-distribution pixels iid N(m, tau^2).
  # Each score set is (by the CLT) normal, so AUROC = Phi((mu+ - mu-) /
  # sqrt(var+ + var-)) for
  #   in:            mean m, var tau^2 / P
  #   inverted:      -m, tau^2 / P
  #   uniform noise: 0, (1/3) / P
  #   noised:        clip(x + 0.3 eps, -1, 1): censored N(m, tau^2 + 0.09)
  # and the flips leave every score unchanged (up to the summation order): 0.5.
  n, p, m, tau = 3000, 64, -0.05, 0.5
  x_in = jnp.asarray(np.random.default_rng(0).normal(m, tau, (n, 8, 8, 1)), jnp.float32)
  energy = lambda x: jnp.mean(x, axis=(1, 2, 3))
  scores = ood.ood_evaluate(energy, x_in, jax.random.key(4), batch_size=1000, noise_sigma=0.3)
  noised_mean, noised_var = _censored_normal_moments(m, np.sqrt(tau ** 2 + 0.09), -1.0, 1.0)
  var_in = tau ** 2 / p
  phi = lambda mu, var: scipy.stats.norm.cdf((mu - m) / np.sqrt(var + var_in))
  want = {"inverted": phi(-m, tau ** 2 / p),                # ~0.87
          "uniform_noise": phi(0.0, 1.0 / 3.0 / p),         # ~0.70
          "gaussian_noised": phi(noised_mean, noised_var / p)}
  for name, value in want.items():
    np.testing.assert_allclose(float(scores[name]), value, atol=0.03, err_msg=name)
  for name in ("vflip", "hflip"):
    np.testing.assert_allclose(float(scores[name]), 0.5, atol=1e-4, err_msg=name)


def test_inpainting_keeps_known_pixels_exactly_through_the_chain():
  x_known = jax.random.uniform(jax.random.key(5), (3, 6, 6, 1), minval=-1, maxval=1)
  mask = jnp.zeros((1, 6, 6, 1), bool).at[:, :3].set(True)     # top half known
  energy = lambda x: 0.5 * jnp.sum(jnp.square(x - 0.3), axis=(1, 2, 3))
  x, traj = ood.inpaint(energy, x_known, mask, jax.random.key(6), num_steps=40,
                        step_size=0.2, noise_scale=0.01, capture_every=1)
  known = np.broadcast_to(np.asarray(mask), x_known.shape)
  for state in np.asarray(traj):
    np.testing.assert_array_equal(state[known], np.asarray(x_known)[known])
  np.testing.assert_array_equal(np.asarray(x)[known], np.asarray(x_known)[known])
  np.testing.assert_allclose(np.asarray(x)[~known], 0.3, atol=0.1)   # filled from the energy


def test_denoising_descends_the_energy():
  energy = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))
  noisy = jax.random.uniform(jax.random.key(7), (2, 4, 4, 1), minval=-1, maxval=1)
  clean = ood.denoise(energy, noisy, jax.random.key(8), num_steps=20, step_size=0.1)
  assert bool(jnp.all(energy(clean) < energy(noisy)))
