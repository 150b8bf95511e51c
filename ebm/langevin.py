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

Annealing (`anneal` = "linear" | "geometric"): step k of K uses α_k and σ_k
from `annealed_values`, going from α (σ) at k = 0 to α·step_size_final_factor
(σ·noise_final_factor) at k = K - 1. Annealed Langevin dynamics (Song &
Ermon 2019) lowers the noise level over the chain; Improved CD (Du et al.
2021, its `--anneal` flag) decays the noise linearly to 0 within each
training chain, so that early steps explore and late ones settle into a
mode. `anneal` = "constant" (the default) is the plain chain above.

For Improved CD's KL term the chain can also return the state before its
last update and that update's noise (`return_last_step`): `langevin_update`
then recomputes the last update as a differentiable function of the
energy's parameters (`ebm.losses.kl_last_step`).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

EnergyFn = Callable[[jax.Array], jax.Array]

# names of the step-size / noise schedules over a chain (`annealed_values`).
ANNEALING = ("constant", "linear", "geometric")


class LangevinResult(NamedTuple):
  """What a chain returns.

  Attributes:
    x: final states [B, ...].
    trajectory: states after steps 0, c, 2c, ..., K·c where c =
      capture_every and K = num_steps // c: [K + 1, B, ...] (entry 0 is the
      start x0, after `project_fn`); None when capture_every = 0.
    grad_norm: float32 scalar, the mean over steps and chains of the L2 norm
      of ∇ₓE (before gradient clipping), per chain over all non-batch axes.
    x_last_input: with `return_last_step`, the states [B, ...] that the last
      update started from (x_{K-1}); else None.
    z_last: with `return_last_step`, the last update's noise z_{K-1}
      [B, ...]; else None. `langevin_update(E, x_last_input, z_last, ...)`
      with the last step's α and σ gives x again.
  """
  x: jax.Array
  trajectory: jax.Array | None
  grad_norm: jax.Array
  x_last_input: jax.Array | None = None
  z_last: jax.Array | None = None


def annealed_values(start: float, final_factor: float, num_steps: int,
                    schedule: str) -> np.ndarray:
  """Per-step values of an annealed step size or noise scale, float64 [K].

  v_k for k = 0..K-1, from v_0 = start to v_{K-1} = start·final_factor:

    constant:  v_k = start (final_factor must be 1);
    linear:    v_k = start·(1 + (final_factor - 1)·k / (K - 1));
    geometric: v_k = start·final_factor^(k / (K - 1)) (final_factor > 0).

  K = 1 gives [start].

  Args:
    start: the first step's value (α or σ).
    final_factor: ratio of the last step's value to the first.
    num_steps: K ≥ 0.
    schedule: one of `ANNEALING`.

  Returns:
    np.float64 array [K] (a jax array of start's dtype when start is one).
  """
  if schedule not in ANNEALING:
    raise ValueError(f"anneal must be one of {ANNEALING}, got {schedule!r}")
  if final_factor < 0 or (schedule == "geometric" and final_factor <= 0):
    raise ValueError(f"final_factor must be {'> 0' if schedule == 'geometric' else '>= 0'} "
                     f"for the {schedule} schedule, got {final_factor}")
  if schedule == "constant" and final_factor != 1:
    raise ValueError(f"final_factor {final_factor} has no effect with the constant "
                     f"schedule (use anneal='linear' or 'geometric', or 1.0)")
  t = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
  if schedule == "linear":
    rel = 1.0 + (final_factor - 1.0) * t
  elif schedule == "geometric":
    rel = np.power(float(final_factor), t)
  else:
    rel = np.ones((num_steps,))
  if isinstance(start, jax.Array):   # a traced step size (a program input, e.g. the server's)
    return start * jnp.asarray(rel, start.dtype)
  return float(start) * rel


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


def langevin_update(energy_fn: EnergyFn, x: jax.Array, z: jax.Array, step_size,
                    noise_scale, grad_clip: float | None = None,
                    x_range: tuple[float, float] | None = (-1.0, 1.0), *,
                    noise_first: bool = False,
                    project_fn: Callable[[jax.Array], jax.Array] | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """One Langevin update with given noise z (see the module docstring).

  The chain's step, exposed so that it can be differentiated with respect to
  whatever `energy_fn` closes over (Improved CD's KL term differentiates the
  last update with respect to the parameters).

  Args:
    energy_fn: E, [B, ...] -> [B].
    x: states [B, ...].
    z: standard normal noise [B, ...].
    step_size: α (a float or a traced scalar).
    noise_scale: σ (a float or a traced scalar).
    grad_clip, x_range, noise_first, project_fn: as in `langevin_chain`.

  Returns:
    (x' [B, ...], the mean over chains of the L2 norm of ∇ₓE before clipping).
  """
  project = (lambda v: v) if project_fn is None else project_fn
  grad_energy = jax.grad(lambda v: jnp.sum(energy_fn(v)))
  reduce_axes = tuple(range(1, x.ndim))

  def clipped_grad(v):
    g = grad_energy(v)
    g_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(g), axis=reduce_axes)))
    if grad_clip is not None:
      g = jnp.clip(g, -grad_clip, grad_clip)
    return g, g_norm

  if noise_first:
    x = project(_clip_x(x + noise_scale * z, x_range))
    g, g_norm = clipped_grad(x)
    x = _clip_x(x - step_size * g, x_range)
  else:
    g, g_norm = clipped_grad(x)
    x = _clip_x(x - step_size * g + noise_scale * z, x_range)
  return project(x), g_norm


def langevin_chain(energy_fn: EnergyFn, x0: jax.Array, key: jax.Array, num_steps: int,
                   step_size: float, noise_scale: float, grad_clip: float | None = None,
                   x_range: tuple[float, float] | None = (-1.0, 1.0), *,
                   noise_first: bool = False, capture_every: int = 0,
                   project_fn: Callable[[jax.Array], jax.Array] | None = None,
                   anneal: str = "constant", step_size_final_factor: float = 1.0,
                   noise_final_factor: float = 1.0, return_last_step: bool = False
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
    anneal: schedule of α and σ over the steps, one of `ANNEALING` (static).
    step_size_final_factor: α_{K-1} / α (1 for "constant").
    noise_final_factor: σ_{K-1} / σ (1 for "constant").
    return_last_step: also return x_{K-1} and z_{K-1} (`LangevinResult`);
      needs num_steps ≥ 1 and capture_every = 0.

  Returns:
    A `LangevinResult`.
  """
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}")
  if return_last_step and (num_steps < 1 or capture_every > 0):
    raise ValueError(f"return_last_step needs num_steps >= 1 and capture_every = 0, got "
                     f"num_steps={num_steps}, capture_every={capture_every}")
  project = (lambda x: x) if project_fn is None else project_fn
  annealed = anneal != "constant"
  keys = jax.random.split(key, num_steps)
  if annealed:
    # Per-step (α_k, σ_k) ride along with the keys; the constant chain keeps
    # Python floats, i.e. exactly the program it had before annealing existed.
    alphas = annealed_values(step_size, step_size_final_factor, num_steps, anneal)
    sigmas = annealed_values(noise_scale, noise_final_factor, num_steps, anneal)
    xs = (keys, jnp.asarray(alphas, x0.dtype), jnp.asarray(sigmas, x0.dtype))
  else:
    annealed_values(step_size, step_size_final_factor, num_steps, anneal)  # validates
    annealed_values(noise_scale, noise_final_factor, num_steps, anneal)
    xs = keys

  def update(x, z, alpha, sigma):
    return langevin_update(energy_fn, x, z, alpha, sigma, grad_clip, x_range,
                           noise_first=noise_first, project_fn=project_fn)

  def step(x, inputs):
    step_key, alpha, sigma = inputs if annealed else (inputs, step_size, noise_scale)
    return update(x, _standard_normal(step_key, x.shape, x.dtype), alpha, sigma)

  def run(x, xs):
    return jax.lax.scan(step, x, xs)

  def mean_norm(g_norms):
    return jnp.mean(g_norms) if num_steps else jnp.zeros(())

  x = project(x0)
  if capture_every <= 0 and return_last_step:
    x, g_norms = run(x, jax.tree.map(lambda v: v[:-1], xs))
    x_prev = x
    step_key, alpha, sigma = (jax.tree.map(lambda v: v[-1], xs) if annealed
                              else (keys[-1], step_size, noise_scale))
    z = _standard_normal(step_key, x.shape, x.dtype)
    x, g_last = update(x_prev, z, alpha, sigma)
    g_norms = jnp.concatenate([g_norms, g_last[None]])
    return LangevinResult(x, None, mean_norm(g_norms), x_prev, z)
  if capture_every <= 0:
    x, g_norms = run(x, xs)
    return LangevinResult(x, None, mean_norm(g_norms))

  num_chunks = num_steps // capture_every
  split_at = num_chunks * capture_every
  chunk_xs = jax.tree.map(
      lambda v: v[:split_at].reshape((num_chunks, capture_every) + v.shape[1:]), xs)

  def chunk(x, chunk_inputs):
    x, g_norms = run(x, chunk_inputs)
    return x, (x, g_norms)

  x_start = x
  x, (captured, g_norms) = jax.lax.scan(chunk, x, chunk_xs)
  g_norms = g_norms.reshape(-1)
  if num_steps > split_at:
    x, rest = run(x, jax.tree.map(lambda v: v[split_at:], xs))
    g_norms = jnp.concatenate([g_norms, rest])
  trajectory = jnp.concatenate([x_start[None], captured], axis=0)
  return LangevinResult(x, trajectory, mean_norm(g_norms))


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
