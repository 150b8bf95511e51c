"""Sinusoidal embeddings of the diffusion timestep.

Two frequency conventions are in use and both are supported through
`freq_shift` (the name follows `downscale_freq_shift` of other libraries):

  f_k = max_period ** (-k / (half - freq_shift)),   k = 0 .. half - 1,

where half = dim // 2.

  * freq_shift = 0: the course notebooks and the PyTorch peer. The course
    writes the angle as t / 10000^(2i / D), i.e. it divides by D (= 2 half),
    which is the same frequencies f_i = 10000^(-i / half).
  * freq_shift = 1: the DDPM paper's code (diffusion_tf
    `get_timestep_embedding`), which divides by half - 1 so that the lowest
    frequency is exactly 1 / max_period.

Two layouts:

  * "concat": [sin(t f_0), ..., sin(t f_{half-1}), cos(t f_0), ...,
    cos(t f_{half-1})] (the DDPM code, the course's code, the PyTorch peer).
  * "interleaved": [sin(t f_0), cos(t f_0), sin(t f_1), cos(t f_1), ...]
    (the course's written formula: emb[2i] = sin, emb[2i+1] = cos).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LAYOUTS = ("concat", "interleaved")


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0,
                         layout: str = "concat", freq_shift: float = 0.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps.

  Args:
    t: [B] timesteps (any real dtype; the raw 0-based index is used as is).
    dim: embedding size D (even; an odd D gets one trailing zero).
    max_period: the longest period, 10000 in every convention here.
    layout: "concat" or "interleaved" (see the module docstring).
    freq_shift: 0 for the course / peer frequencies, 1 for the DDPM code.

  Returns:
    [B, dim] float32 embedding.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  half = dim // 2
  if half - freq_shift <= 0:
    raise ValueError(f"dim={dim} is too small for freq_shift={freq_shift}")
  k = jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(-math.log(max_period) * k / (half - freq_shift))
  angles = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]   # [B, half]
  if layout == "concat":
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  else:
    emb = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(angles.shape[0], 2 * half)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb
