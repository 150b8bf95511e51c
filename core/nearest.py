"""Nearest-train-neighbour distances in pixel space: does a generator copy, or blur?

A feature-space score can hide two failures that pixels show plainly:
samples that are (near) copies of training images, and smooth, blurred
samples. Both change how far a sample lies from its nearest training image,
compared with a held-out test image's distance to the same training images:

  ratio = mean_nn(samples) / mean_nn(test images)
  ~ 1   samples are as novel as unseen real images;
  << 1  samples sit on training images (memorisation);
  > 1   samples are off the data manifold (noise, grey backgrounds, speckle).

(Blur alone can pull the ratio below 1 too, as blurred images are close to
many images at once: read it with the FD scores and the grids.)

Distances are L2 over all pixels scaled to [0, 1] (MNIST family: 28x28, so
32x32 samples are centre-cropped, and the largest possible distance is
28 = sqrt(784)). The search is one compiled program per block of queries:
|q|^2 + |k|^2 - 2 q.k over all keys, then the chosen neighbour's distance is
recomputed as |q - k| so that a copy scores exactly 0, not the rounding of a
difference of large numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_QUERY_BLOCK = 256


@jax.jit
def _nearest_block(queries: jax.Array, keys: jax.Array, keys_sq: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """queries [Q, D], keys [M, D], keys_sq [M] -> (distance [Q], index [Q])."""
  cross = jnp.matmul(queries, keys.T, precision=jax.lax.Precision.HIGHEST)   # [Q, M]
  d2 = jnp.sum(queries * queries, axis=1, keepdims=True) + keys_sq[None, :] - 2.0 * cross
  index = jnp.argmin(d2, axis=1)
  distance = jnp.sqrt(jnp.sum(jnp.square(queries - keys[index]), axis=1))
  return distance, index


def nearest_neighbour(queries, keys, block: int = _QUERY_BLOCK
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Each query's nearest key in Euclidean distance.

  Args:
    queries: float [N, ...] (flattened to [N, D]).
    keys: float [M, ...] of the same trailing size D, M >= 1.
    block: queries per compiled call (every call has this shape; the last
      block is padded and cut).

  Returns:
    (distance [N] float32, index [N] int) of the nearest key of each query
    (the first one on ties).
  """
  q = np.asarray(queries, np.float32).reshape(len(queries), -1)
  k = np.asarray(keys, np.float32).reshape(len(keys), -1)
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"queries of {q.shape[1]} values each cannot be compared with keys of "
                     f"{k.shape[1]}")
  if len(k) == 0:
    raise ValueError("no keys to search")
  n = len(q)
  bs = max(1, min(int(block), n))
  k_dev = jnp.asarray(k)
  k_sq = jnp.sum(k_dev * k_dev, axis=1)
  distances, indices = [], []
  for start in range(0, n, bs):
    part = q[start:start + bs]
    valid = len(part)
    if valid < bs:
      part = np.concatenate([part, np.zeros((bs - valid, q.shape[1]), np.float32)])
    d, i = _nearest_block(jnp.asarray(part), k_dev, k_sq)
    distances.append(np.asarray(d)[:valid])
    indices.append(np.asarray(i)[:valid])
  if not distances:
    return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
  return np.concatenate(distances), np.concatenate(indices)


def to_unit(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, C] -> float32 in [0, 1] (the scale of the reported distances)."""
  return np.asarray(images_uint8, np.float32) / np.float32(255.0)


def summary(sample_distances: np.ndarray, test_distances: np.ndarray,
            image_shape: tuple[int, ...]) -> dict:
  """The record fields of the two distance sets (means, medians, their ratio)."""
  largest = float(np.sqrt(np.prod(image_shape)))   # all pixels 0 against all 1
  mean_s, mean_t = float(np.mean(sample_distances)), float(np.mean(test_distances))
  return {"value": mean_s, "median": float(np.median(sample_distances)),
          "test_value": mean_t, "test_median": float(np.median(test_distances)),
          "ratio": mean_s / mean_t if mean_t > 0 else None,   # None: test images are train images
          "num_test": int(len(test_distances)),
          "pixel_space": (f"L2 over {'x'.join(map(str, image_shape))} pixels in [0, 1] "
                          f"(at most {largest:.1f})")}
