"""Replay buffer of persistent Langevin chains, as one fixed-size array.

The buffer is an array [N, H, W, C] kept in `TrainState.extras["buffer"]`, so
it is checkpointed and restored with the run. Each training step draws B
distinct slots, restarts a fraction of them from uniform noise, runs the
chains and writes the results back into the same slots:

    x0, idx = draw(buffer, key, B, reinit_fraction)
    x = langevin(..., x0, ...)
    buffer = push(buffer, idx, x)

This is the persistent-chain form of the tutorial's buffer (IGEBM/JEM write
back to the drawn slots too). The tutorial instead keeps a list, draws with
replacement and prepends the new samples, dropping the oldest beyond 8192;
both keep ~95% of the chains continuing from earlier samples. Restarts are
per-chain Bernoulli(reinit_fraction), whose count is the tutorial's
Binomial(B, 0.05) draw.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def uniform_images(key: jax.Array, num: int, image_shape: Sequence[int],
                   dtype=jnp.float32) -> jax.Array:
  """Uniform noise in [-1, 1]: [num, *image_shape]."""
  return jax.random.uniform(key, (num, *image_shape), dtype, minval=-1.0, maxval=1.0)


def init_buffer(key: jax.Array, size: int, image_shape: Sequence[int]) -> jax.Array:
  """A fresh buffer [size, H, W, C] of uniform noise in [-1, 1]."""
  return uniform_images(key, size, image_shape)


def draw(buffer: jax.Array, key: jax.Array, batch_size: int,
         reinit_fraction: float) -> tuple[jax.Array, jax.Array]:
  """Starting points for a batch of chains.

  Args:
    buffer: [N, H, W, C] with N >= batch_size.
    key: PRNG key.
    batch_size: B, number of chains (static).
    reinit_fraction: probability that a chain restarts from U[-1, 1] instead
      of continuing from its buffer slot.

  Returns:
    (x0 [B, H, W, C], idx int32 [B]): the start states and the distinct slots
    they were drawn from (restarted chains also own a slot, which `push`
    overwrites).
  """
  k_idx, k_mask, k_noise = jax.random.split(key, 3)
  idx = jax.random.choice(k_idx, buffer.shape[0], (batch_size,), replace=False)
  idx = idx.astype(jnp.int32)
  restart = jax.random.uniform(k_mask, (batch_size,)) < reinit_fraction
  noise = uniform_images(k_noise, batch_size, buffer.shape[1:], buffer.dtype)
  restart = restart.reshape((batch_size,) + (1,) * (buffer.ndim - 1))
  return jnp.where(restart, noise, buffer[idx]), idx


def push(buffer: jax.Array, idx: jax.Array, x: jax.Array) -> jax.Array:
  """Writes the chains' new states x [B, H, W, C] into slots idx [B] (distinct)."""
  return buffer.at[idx].set(x.astype(buffer.dtype), unique_indices=True)
