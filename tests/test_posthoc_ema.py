"""core.posthoc_ema against independent values: the EDM2 paper's published
exponents, float64 quadrature of the profiles, the telescoped closed form of
the discrete average, and a reconstruction checked against an average tracked
directly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from core import posthoc_ema


def test_the_papers_two_profiles_have_the_published_exponents():
  # EDM2 (Karras et al. 2024), Sec. 3: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94.
  assert posthoc_ema.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
  assert posthoc_ema.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 6.94, 16.97, 40.0])
def test_sigma_rel_is_the_profiles_relative_std_by_quadrature(gamma):
  t = 3.0
  dens = lambda tau: (gamma + 1) * tau ** gamma / t ** (gamma + 1)
  mass = integrate.quad(dens, 0, t)[0]
  mean = integrate.quad(lambda tau: tau * dens(tau), 0, t)[0]
  second = integrate.quad(lambda tau: tau * tau * dens(tau), 0, t)[0]
  assert mass == pytest.approx(1.0, rel=1e-10)
  std_rel = np.sqrt(second - mean ** 2) / t
  assert posthoc_ema.gamma_to_sigma_rel(gamma) == pytest.approx(std_rel, rel=1e-8)
  if gamma > 0:
    assert posthoc_ema.sigma_rel_to_gamma(std_rel) == pytest.approx(gamma, rel=1e-8)


@pytest.mark.parametrize("bad", [0.0, -0.1, 0.29, float("nan")])
def test_sigma_rel_outside_the_profiles_range_is_refused(bad):
  with pytest.raises(ValueError, match="sigma_rel must be in"):
    posthoc_ema.sigma_rel_to_gamma(bad)


def test_the_discrete_average_has_the_telescoped_weights():
  # theta_i = e_i: after t updates the average *is* its weight vector, which the
  # product of the betas telescopes to (i^(g+1) - (i-1)^(g+1)) / t^(g+1).
  jax.config.update("jax_enable_x64", True)
  try:
    n, gammas = 40, (6.94, 16.97)
    emas = tuple(jnp.full((n,), 7.0, jnp.float64) for _ in gammas)  # any start: beta_1 = 0
    for step in range(n):
      emas = posthoc_ema.update(emas, jnp.eye(n, dtype=jnp.float64)[step], jnp.asarray(step),
                                gammas)
      t = step + 1
      i = np.arange(1, n + 1, dtype=np.float64)
      for ema, g in zip(emas, gammas):
        want = np.where(i <= t, (i ** (g + 1) - (i - 1) ** (g + 1)) / t ** (g + 1), 0.0)
        np.testing.assert_allclose(np.asarray(ema), want, rtol=1e-6, atol=1e-12)
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("ta,ga,tb,gb", [(5.0, 6.94, 5.0, 16.97), (2.0, 3.0, 7.0, 16.97),
                                         (9.0, 0.0, 4.0, 6.94), (1e4, 16.97, 1.2e4, 6.94)])
def test_profile_inner_product_by_quadrature(ta, ga, tb, gb):
  pa = lambda tau: (ga + 1) * (tau / ta) ** ga / ta
  pb = lambda tau: (gb + 1) * (tau / tb) ** gb / tb
  m = min(ta, tb)
  want = integrate.quad(lambda tau: pa(tau) * pb(tau), 0, m, epsrel=1e-12, limit=200)[0]
  assert posthoc_ema.profile_inner(ta, ga, tb, gb) == pytest.approx(want, rel=1e-8)
  assert posthoc_ema.profile_inner(tb, gb, ta, ga) == pytest.approx(want, rel=1e-8)


def test_a_target_equal_to_a_snapshot_gets_that_snapshot_alone():
  g = [6.94, 16.97] * 3
  steps = [100, 100, 200, 200, 300, 300]
  x = posthoc_ema.solve_coefficients(steps, g, 200, 16.97)
  np.testing.assert_allclose(x, [0, 0, 0, 1, 0, 0], atol=1e-8)


def _track(traj, gammas, every):
  """Power EMAs of traj [T, D] (float64 NumPy), with snapshots every `every` updates."""
  emas = [np.zeros_like(traj[0]) for _ in gammas]
  snaps = []
  for step, theta in enumerate(traj):
    t = step + 1
    for k, g in enumerate(gammas):
      b = (1 - 1 / t) ** (g + 1)
      emas[k] = b * emas[k] + (1 - b) * theta
    if t % every == 0:
      snaps.append((t, [e.copy() for e in emas]))
  return emas, snaps


def test_reconstruction_matches_an_average_tracked_directly():
  rng = np.random.default_rng(0)
  n, d = 2000, 64
  # a drifting, noisy trajectory: a random walk plus per-step noise
  traj = np.cumsum(rng.normal(size=(n, d)) * 0.05, axis=0) + rng.normal(size=(n, d))
  tracked = (posthoc_ema.sigma_rel_to_gamma(0.05), posthoc_ema.sigma_rel_to_gamma(0.10))
  _, snaps = _track(traj, tracked, every=50)
  for sigma in (0.03, 0.07, 0.15):
    direct, _ = _track(traj, (posthoc_ema.sigma_rel_to_gamma(sigma),), every=n)
    got, coefs = posthoc_ema.reconstruct(snaps, tracked, sigma)
    assert coefs.sum() == pytest.approx(1.0, abs=0.02)
    # the error of the reconstruction is small next to how far the averages differ
    err = np.linalg.norm(got - direct[0])
    other = np.linalg.norm(snaps[-1][1][1] - direct[0])  # the sigma 0.10 snapshot itself
    assert err < 0.1 * other, (sigma, err, other)
  # at an earlier step: only the snapshots up to it are used
  got, coefs = posthoc_ema.reconstruct(snaps, tracked, 0.07, target_step=1000)
  assert coefs.shape == (2 * 20,)
  direct, _ = _track(traj[:1000], (posthoc_ema.sigma_rel_to_gamma(0.07),), every=1000)
  assert np.linalg.norm(got - direct[0]) < 0.1 * np.linalg.norm(snaps[19][1][1] - direct[0])


def test_combine_mixes_pytrees_leafwise_in_their_dtype():
  a = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
  b = {"w": np.full((2, 3), 3.0, np.float32), "b": np.ones(3, np.float32)}
  out = posthoc_ema.combine([a, b], [0.25, 0.75])
  np.testing.assert_allclose(out["w"], 2.5)
  np.testing.assert_allclose(out["b"], 0.75)
  assert out["w"].dtype == np.float32
  with pytest.raises(ValueError, match="snapshots"):
    posthoc_ema.combine([a], [0.5, 0.5])
  with pytest.raises(ValueError, match="no power-EMA snapshots"):
    posthoc_ema.reconstruct([], (6.94,), 0.1)


@pytest.mark.parametrize("t", [1, 2, 10, 10_000, 1_000_000, 50_000_000])
def test_one_minus_beta_keeps_its_digits_in_float32(t):
  want = 1.0 - (1.0 - 1.0 / np.float64(t)) ** (16.97 + 1.0)
  got = posthoc_ema.one_minus_beta(jnp.asarray(t - 1, jnp.int32), 16.97)
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(want, rel=1e-5)
