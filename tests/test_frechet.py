"""Tests of core/frechet.py against closed forms and the reference algorithm."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from core import frechet
from launch.eval import scores


def _random_spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _reference_fd(mu1, sigma1, mu2, sigma2):
  """pytorch-fid's formula with scipy.linalg.sqrtm (fine for well-conditioned input)."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_feature_stats_matches_numpy_unbiased():
  x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = frechet.feature_stats(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_diagonal_gaussians_closed_form():
  rng = np.random.default_rng(1)
  d = 7
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = frechet.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_commuting_covariances_closed_form():
  # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: (S1 S2)^{1/2} = Q diag(sqrt(ab)) Q^T.
  rng = np.random.default_rng(2)
  d = 9
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a, b = rng.uniform(0.0, 2.0, size=d), rng.uniform(0.0, 2.0, size=d)
  a[:3] = 0.0  # singular on purpose
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  # Zero eigenvalues carry roundoff of ~1e-16, whose square roots are ~1e-8:
  # a matrix square root near a singular matrix is only sqrt(eps)-accurate.
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2), expected,
                             rtol=1e-9, atol=1e-6)


def test_one_dimensional():
  # W2^2 between 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
  got = frechet.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
  np.testing.assert_allclose(got, 3.0 ** 2 + (2.0 - 3.0) ** 2, rtol=1e-12)


def test_general_case_matches_scipy_sqrtm_reference():
  rng = np.random.default_rng(3)
  d = 12
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2),
                             _reference_fd(mu1, s1, mu2, s2), rtol=1e-8)


def test_identical_sets_give_zero_and_distance_is_symmetric():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(200, 16))
  b = rng.normal(loc=0.3, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5
  assert frechet.frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
  ab = frechet.frechet_distance_from_features(a, b)
  ba = frechet.frechet_distance_from_features(b, a)
  assert ab > 0.1
  np.testing.assert_allclose(ab, ba, rtol=1e-10)


def test_rank_deficient_covariances_are_stable():
  # N < D: both covariances are singular (rank <= N - 1). sqrtm(S1 S2) struggles
  # here; the eigh route must give a finite, non-negative, symmetric answer.
  rng = np.random.default_rng(5)
  n, d = 10, 64
  a = rng.normal(size=(n, d))
  b = rng.normal(loc=0.5, size=(n, d))
  fd_ab = frechet.frechet_distance_from_features(a, b)
  fd_ba = frechet.frechet_distance_from_features(b, a)
  assert np.isfinite(fd_ab) and fd_ab >= 0.0
  np.testing.assert_allclose(fd_ab, fd_ba, rtol=1e-8)
  fd_aa = frechet.frechet_distance_from_features(a, a)
  mu, sigma = frechet.feature_stats(a)
  assert 0.0 <= fd_aa <= 1e-9 * np.trace(sigma)
  # Extra zero-variance (dead) features change nothing.
  a0 = np.concatenate([a, np.zeros((n, 5))], axis=1)
  b0 = np.concatenate([b, np.zeros((n, 5))], axis=1)
  np.testing.assert_allclose(frechet.frechet_distance_from_features(a0, b0), fd_ab, rtol=1e-8)


def test_streaming_stats_equal_batch_stats():
  rng = np.random.default_rng(6)
  # A large common offset: the naive one-pass formula would lose digits here.
  x = (rng.normal(size=(103, 8)) + 1e4).astype(np.float32)
  acc = frechet.StreamingStats(8)
  for start in range(0, 103, 25):  # uneven last batch
    acc.update(x[start:start + 25])
  acc.update(np.zeros((0, 8)))
  assert acc.count == 103
  mu, sigma = acc.stats()
  mu_ref, sigma_ref = frechet.feature_stats(x)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-9)


def test_input_validation():
  with pytest.raises(ValueError, match="at least 2"):
    frechet.feature_stats(np.zeros((1, 3)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    frechet.feature_stats(np.zeros((4,)))
  with pytest.raises(ValueError, match="covariances"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match="non-finite"):
    frechet.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match=r"\[B, 3\]"):
    frechet.StreamingStats(3).update(np.zeros((2, 4)))
  with pytest.raises(ValueError, match="at least 2"):
    frechet.StreamingStats(3).update(np.zeros((1, 3))).stats()


def test_save_and_load_stats(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = rng.normal(size=4), _random_spd(rng, 4)
  path = tmp_path / "sub" / "ref_stats.npz"
  scores.save_stats(path, mu, sigma)
  mu2, sigma2 = scores.load_stats(path)
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
