"""Fréchet distance between Gaussians fitted to two sets of features (FID).

The Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is

  d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

Everything here is NumPy in float64, on the host: the features of 10k-50k
images are a few hundred MB at most, and the [D, D] matrix algebra (D = 2048
for Inception pool3) wants float64 more than it wants an accelerator.

How the trace term is computed, and why. The reference implementations
(TF FID, pytorch-fid) call `scipy.linalg.sqrtm(S1 @ S2)`. `S1 @ S2` is not
symmetric, so sqrtm goes through a complex Schur decomposition: when the
product is singular or nearly so (fewer samples than dimensions, or dead
features) it returns inf/NaN or a complex result, and the reference code
then retries with `S + eps I` (biasing the answer by about eps * D) and
drops imaginary parts up to a tolerance. Here we use that S1 S2 is similar
to the symmetric PSD matrix

  M = S1^{1/2} S2 S1^{1/2}     (S1 S2 = S1^{1/2} M S1^{-1/2} when S1 > 0,
                                and by continuity the eigenvalues agree
                                in general),

so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)). Both S1^{1/2} and the
eigenvalues of M come from `numpy.linalg.eigh`, a backward-stable symmetric
eigensolver: the result is real by construction, rank-deficient covariances
need no eps offset, and roundoff-negative eigenvalues are clipped to 0
(they are zero in exact arithmetic).

Typical use:

  acc = StreamingStats(2048)
  for batch in batches:
    acc.update(features_of(batch))          # [B, 2048]
  mu, sigma = acc.stats()
  fid = frechet_distance(mu, sigma, mu_ref, sigma_ref)

Pure NumPy: no file I/O (reference statistics files are
`launch.eval.scores.save_stats` / `load_stats`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def feature_stats(features) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of a set of feature vectors, in float64.

  Matches the FID reference code (`np.mean(axis=0)`, `np.cov(rowvar=False)`,
  i.e. normalised by N - 1).

  Args:
    features: [N, D] array, N >= 2.

  Returns:
    (mu [D], sigma [D, D]) as float64.
  """
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {x.shape}")
  if x.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
  mu = x.mean(axis=0)
  centred = x - mu
  sigma = centred.T @ centred / (x.shape[0] - 1)
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative eigenvalues -> 0)."""
  w, v = np.linalg.eigh(sigma)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, via eigh (see module docstring).

  Args:
    sigma1: [D, D] symmetric PSD.
    sigma2: [D, D] symmetric PSD.

  Returns:
    The trace, a non-negative float.
  """
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  # Symmetrise: covariances accumulated in floating point are symmetric only
  # up to roundoff, and eigh reads one triangle.
  s1 = 0.5 * (s1 + s1.T)
  s2 = 0.5 * (s2 + s2.T)
  root1 = _psd_sqrt(s1)
  m = root1 @ s2 @ root1
  m = 0.5 * (m + m.T)
  eig = np.linalg.eigvalsh(m)
  return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1: [D] mean of the first set.
    sigma1: [D, D] covariance of the first set.
    mu2: [D] mean of the second set.
    sigma2: [D, D] covariance of the second set.

  Returns:
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) as a float >= 0
    (the distance is a squared 2-Wasserstein distance, so a roundoff-negative
    value, e.g. for two identical sets, is returned as 0).
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,):
    raise ValueError(f"means must both be [D]; got {mu1.shape} and {mu2.shape}")
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"covariances must both be [{d}, {d}]; got {sigma1.shape} and {sigma2.shape}")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} has non-finite entries")
  diff = mu1 - mu2
  fd = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
        - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return float(max(fd, 0.0))


def frechet_distance_from_features(features_a, features_b) -> float:
  """Fréchet distance between Gaussians fitted to two feature sets.

  Args:
    features_a: [Na, D].
    features_b: [Nb, D].

  Returns:
    The Fréchet distance (float >= 0).
  """
  return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


class StreamingStats:
  """Accumulates feature mean and covariance batch by batch, in float64.

  Keeps the count, the sum and the sum of outer products of the features.
  The features are shifted by the mean of the first batch before they are
  accumulated (a constant shift changes neither covariance nor, after adding
  it back, the mean): it keeps the one-pass formula
  `(sum xx^T - n mu mu^T) / (n - 1)` from cancelling catastrophically when the
  mean is large compared with the spread. Memory is O(D^2), independent of
  the number of images.

  Attributes:
    dim: feature dimension D.
    count: number of feature vectors seen so far.
  """

  def __init__(self, dim: int):
    if dim < 1:
      raise ValueError(f"dim must be >= 1, got {dim}")
    self.dim = int(dim)
    self.count = 0
    self._shift = None
    self._sum = np.zeros((self.dim,), np.float64)
    self._sum_outer = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features) -> "StreamingStats":
    """Adds a batch of features.

    Args:
      features: [B, D] (any float dtype; accumulated in float64).

    Returns:
      self, so calls can be chained.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features must be [B, {self.dim}], got shape {x.shape}")
    if x.shape[0] == 0:
      return self
    if self._shift is None:
      self._shift = x.mean(axis=0)
    x = x - self._shift
    self.count += x.shape[0]
    self._sum += x.sum(axis=0)
    self._sum_outer += x.T @ x
    return self

  def stats(self) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (mu [D], sigma [D, D]) in float64, as `feature_stats` would."""
    if self.count < 2:
      raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
    n = self.count
    mean_shifted = self._sum / n
    sigma = (self._sum_outer - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
    sigma = 0.5 * (sigma + sigma.T)
    return mean_shifted + self._shift, sigma
