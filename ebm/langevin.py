"""Langevin dynamics on an energy E(x): the whole chain is one `lax.scan`.

One step (the default, `noise_first=False`) is the unadjusted Langevin update

    x_{k+1} = clip_x( x_k - α · clip_g(∇ₓE(x_k)) + σ · z_k ),   z_k ~ N(0, I),

with α = step_size, σ = noise_scale, clip_g elementwise to [-grad_clip,
grad_clip] and clip_x to `x_range`. ∇ₓE is `jax.grad` of the energy summed
over the batch, with respect to the input (the chains are independent, so the
sum's gradient is each chain's own gradient). For the exact Langevin diffusion
σ = sqrt(2α); EBM training uses a much smaller σ (the tutorial: α = 10,
σ = 0.005), i.e. a noisy gradient descent on E.

The UvA tutorial (and the PyTorch peer) order the step differently: noise
first, then the gradient taken at the noised point,

    x̃ = clip_x(x_k + σ z_k),   x_{k+1} = clip_x( x̃ - α · clip_g(∇ₓE(x̃)) ),

which `noise_first=True` reproduces. The two differ in where the gradient is
evaluated; e.g. for E = x²/2 without clipping the default is the AR(1)
process x' = (1 - α) x + σ z with stationary variance σ² / (2α - α²), while
the tutorial's order gives x' = (1 - α)(x + σ z), variance
(1 - α)² σ² / (2α - α²).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

EnergyFn = Callable[[jax.Array], jax.Array]


class LangevinResult(NamedTuple):
  """What a chain returns.

  Attributes:
    x: final states [B, ...].
    trajectory: states after steps 0, c, 2c, ..., K·c where c =
      capture_every and K = num_steps // c: [K + 1, B, ...] (entry 0 is the
      start x0, after `project_fn`); None when capture_every = 0.
    grad_norm: float32 scalar, the mean over steps and chains of the L2 norm
      of ∇ₓE (before gradient clipping), per chain over all non-batch axes.
  """
  x: jax.Array
  trajectory: jax.Array | None
  grad_norm: jax.Array


def _standard_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """N(0, I) of `shape`, drawn as [shape[0], rest] and reshaped.

  The same distribution as `jax.random.normal(key, shape)` (other values).
  Why: JAX's partitionable threefry builds its counters from one iota per
  axis, combined into 64-bit indices; on XLA:CPU a 4-D draw made the noise
  ~15% of a Langevin step of the tutorial CNN (batch 128, 3×32×32), and
  drawn as 2-D the chain ran ~1.2× faster (85 -> 103-111 steps/s, back to
  back).
  """
  if len(shape) <= 2:
    return jax.random.normal(key, shape, dtype)
  return jax.random.normal(key, (shape[0], math.prod(shape[1:])), dtype).reshape(shape)


def _clip_x(x: jax.Array, x_range) -> jax.Array:
  if x_range is None:
    return x
  return jnp.clip(x, x_range[0], x_range[1])


def langevin_chain(energy_fn: EnergyFn, x0: jax.Array, key: jax.Array, num_steps: int,
                   step_size: float, noise_scale: float, grad_clip: float | None = None,
                   x_range: tuple[float, float] | None = (-1.0, 1.0), *,
                   noise_first: bool = False, capture_every: int = 0,
                   project_fn: Callable[[jax.Array], jax.Array] | None = None
                   ) -> LangevinResult:
  """Runs `num_steps` Langevin steps from x0 (see the module docstring).

  Args:
    energy_fn: E, [B, ...] -> [B] (low on data).
    x0: start states [B, ...].
    key: PRNG key; step k uses the k-th of `split(key, num_steps)`.
    num_steps: number of steps (static).
    step_size: α, multiplies the (clipped) gradient.
    noise_scale: σ, standard deviation of the added Gaussian noise.
    grad_clip: elementwise bound on ∇ₓE; None = no clipping.
    x_range: (lo, hi) the states are clipped to after each update; None = no
      clipping.
    noise_first: the tutorial's order (noise, then the gradient step).
    capture_every: c > 0 also returns every c-th state (static).
    project_fn: applied to x0 and after every update (and after the noise in
      the noise-first order), e.g. to clamp known pixels for inpainting.

  Returns:
    A `LangevinResult`.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}")
  project = (lambda x: x) if project_fn is None else project_fn
  grad_energy = jax.grad(lambda x: jnp.sum(energy_fn(x)))
  reduce_axes = tuple(range(1, x0.ndim))

  def clipped_grad(x):
    g = grad_energy(x)
    g_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(g), axis=reduce_axes)))
    if grad_clip is not None:
      g = jnp.clip(g, -grad_clip, grad_clip)
    return g, g_norm

  def step(x, step_key):
    z = _standard_normal(step_key, x.shape, x.dtype)
    if noise_first:
      x = project(_clip_x(x + noise_scale * z, x_range))
      g, g_norm = clipped_grad(x)
      x = _clip_x(x - step_size * g, x_range)
    else:
      g, g_norm = clipped_grad(x)
      x = _clip_x(x - step_size * g + noise_scale * z, x_range)
    return project(x), g_norm

  def run(x, keys):
    return jax.lax.scan(step, x, keys)

  x = project(x0)
  keys = jax.random.split(key, num_steps)
  if capture_every <= 0:
    x, g_norms = run(x, keys)
    return LangevinResult(x, None, jnp.mean(g_norms) if num_steps else jnp.zeros(()))

  num_chunks = num_steps // capture_every
  chunk_keys = keys[:num_chunks * capture_every].reshape(
      (num_chunks, capture_every) + keys.shape[1:])

  def chunk(x, ks):
    x, g_norms = run(x, ks)
    return x, (x, g_norms)

  x_start = x
  x, (captured, g_norms) = jax.lax.scan(chunk, x, chunk_keys)
  g_norms = g_norms.reshape(-1)
  if num_steps > num_chunks * capture_every:
    x, rest = run(x, keys[num_chunks * capture_every:])
    g_norms = jnp.concatenate([g_norms, rest])
  trajectory = jnp.concatenate([x_start[None], captured], axis=0)
  return LangevinResult(x, trajectory, jnp.mean(g_norms) if num_steps else jnp.zeros(()))


def langevin_sample(energy_fn: EnergyFn, x0: jax.Array, key: jax.Array, num_steps: int,
                    step_size: float, noise_scale: float, grad_clip: float | None = None,
                    x_range: tuple[float, float] | None = (-1.0, 1.0), *,
                    noise_first: bool = False, capture_every: int = 0,
                    project_fn: Callable[[jax.Array], jax.Array] | None = None):
  """Langevin samples from x0; arguments as `langevin_chain`.

  Returns:
    x [B, ...] when capture_every = 0, else (x, trajectory) with trajectory
    [num_steps // capture_every + 1, B, ...] (entry 0 = the start).
  """
  result = langevin_chain(energy_fn, x0, key, num_steps, step_size, noise_scale, grad_clip,
                          x_range, noise_first=noise_first, capture_every=capture_every,
                          project_fn=project_fn)
  if capture_every > 0:
    return result.x, result.trajectory
  return result.x
