"""Uses of a trained energy beyond sampling: OOD detection and inpainting.

OOD score: the energy E(x) itself (higher = less likely under the model,
i.e. more out-of-distribution). Evaluation: AUROC of in-distribution test
images (negatives) against out-of-distribution sets (positives) that can be
made offline from the test images themselves.

Inpainting / denoising: Langevin dynamics on E with the known pixels clamped
to their given values after every step (`jnp.where`, so they stay exactly
equal), started from noise in the unknown pixels (inpainting), or a few
steps started at the noisy image itself with nothing clamped (denoising).
Each chain is one `lax.scan`; jit the caller with the step counts static.
Corruptions (`box_mask`, `gaussian_noised_set`) and the error against the
original (`mse`, `psnr`, `restoration_errors`) are here too. For a
class-conditional energy pass `energy_fn_of(network, params, label)` to
restore under a class, or the marginal (label None).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ebm import buffer as replay
from ebm import langevin

EnergyFn = Callable[[jax.Array], jax.Array]


def ood_score(energy_fn: EnergyFn, x: jax.Array, batch_size: int | None = None) -> jax.Array:
  """OOD scores E(x) [N] of images x [N, H, W, C] (higher = less likely).

  Args:
    energy_fn: E, [B, H, W, C] -> [B].
    x: images [N, H, W, C].
    batch_size: evaluate in chunks of this many images (`lax.map`) to bound
      memory; None = all at once.

  Returns:
    float32 [N].
  """
  if batch_size is None or batch_size >= x.shape[0]:
    return energy_fn(x).astype(jnp.float32)
  n = x.shape[0]
  pad = (-n) % batch_size
  xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], axis=0)
  chunks = xp.reshape((-1, batch_size) + x.shape[1:])
  scores = jax.lax.map(energy_fn, chunks).reshape(-1)
  return scores[:n].astype(jnp.float32)


def auroc(scores_neg: jax.Array, scores_pos: jax.Array) -> jax.Array:
  """Area under the ROC curve for "higher score = positive".

  Equals P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) for independent draws of a positive and a
  negative score, computed from mid-ranks (the Mann-Whitney U statistic):
  AUROC = (R⁺ - n⁺(n⁺ + 1)/2) / (n⁺ n⁻), R⁺ the rank sum of the positives in
  the pooled sample. O(n log n), jittable.

  Args:
    scores_neg: [n⁻] scores of negatives (in-distribution).
    scores_pos: [n⁺] scores of positives (out-of-distribution).

  Returns:
    float32 scalar in [0, 1]: 1 = positives all score higher, 0.5 = chance.
  """
  s_neg = jnp.asarray(scores_neg, jnp.float32).reshape(-1)
  s_pos = jnp.asarray(scores_pos, jnp.float32).reshape(-1)
  pooled = jnp.sort(jnp.concatenate([s_neg, s_pos]))
  below = jnp.searchsorted(pooled, s_pos, side="left").astype(jnp.float32)
  at_or_below = jnp.searchsorted(pooled, s_pos, side="right").astype(jnp.float32)
  mid_ranks = 0.5 * (below + 1.0 + at_or_below)   # 1-based, ties averaged
  n_pos, n_neg = s_pos.shape[0], s_neg.shape[0]
  u_pos = jnp.sum(mid_ranks) - n_pos * (n_pos + 1) / 2.0
  return u_pos / (n_pos * n_neg)


def uniform_noise_set(key: jax.Array, x: jax.Array) -> jax.Array:
  """Uniform noise in [-1, 1] shaped like x [N, H, W, C]."""
  return replay.uniform_images(key, x.shape[0], x.shape[1:], x.dtype)


def vertical_flip_set(x: jax.Array) -> jax.Array:
  """Upside-down images (Fashion-MNIST is not vertically symmetric)."""
  return x[:, ::-1]


def horizontal_flip_set(x: jax.Array) -> jax.Array:
  """Mirrored images (nearly in-distribution for clothes: a hard case)."""
  return x[:, :, ::-1]


def inverted_set(x: jax.Array) -> jax.Array:
  """Intensity-inverted images, x ↦ -x in [-1, 1] (white background)."""
  return -x


def gaussian_noised_set(key: jax.Array, x: jax.Array, sigma: float = 0.3) -> jax.Array:
  """x + N(0, σ²), clipped to [-1, 1]."""
  return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), -1.0, 1.0)


def make_ood_sets(key: jax.Array, x: jax.Array, noise_sigma: float = 0.3
                  ) -> dict[str, jax.Array]:
  """Offline OOD sets built from in-distribution images x [N, H, W, C].

  Returns:
    {"uniform_noise", "vflip", "hflip", "inverted", "gaussian_noised"} ->
    [N, H, W, C] in [-1, 1].
  """
  k_uniform, k_gauss = jax.random.split(key)
  return {
      "uniform_noise": uniform_noise_set(k_uniform, x),
      "vflip": vertical_flip_set(x),
      "hflip": horizontal_flip_set(x),
      "inverted": inverted_set(x),
      "gaussian_noised": gaussian_noised_set(k_gauss, x, noise_sigma),
  }


def ood_evaluate(energy_fn: EnergyFn, x_in: jax.Array, key: jax.Array,
                 batch_size: int | None = None, noise_sigma: float = 0.3
                 ) -> dict[str, jax.Array]:
  """AUROC of the energy as OOD score: x_in against each `make_ood_sets` set.

  Args:
    energy_fn: E, [B, H, W, C] -> [B].
    x_in: in-distribution test images [N, H, W, C].
    key: PRNG key for the noise sets.
    batch_size: chunk size of the energy evaluation.
    noise_sigma: σ of the Gaussian-noised set.

  Returns:
    {set name: AUROC float32 scalar} (1 = the set always scores higher).
  """
  scores_in = ood_score(energy_fn, x_in, batch_size)
  return {name: auroc(scores_in, ood_score(energy_fn, x_out, batch_size))
          for name, x_out in make_ood_sets(key, x_in, noise_sigma).items()}


def inpaint(energy_fn: EnergyFn, x_known: jax.Array, mask: jax.Array, key: jax.Array,
            num_steps: int, step_size: float, noise_scale: float,
            grad_clip: float | None = None, *, noise_first: bool = False,
            init: jax.Array | None = None, capture_every: int = 0):
  """Fills the unknown pixels by Langevin dynamics with the known ones clamped.

  Args:
    energy_fn: E, [B, H, W, C] -> [B].
    x_known: images [B, H, W, C] in [-1, 1]; only the masked pixels are used.
    mask: bool, broadcastable to x_known; True = known (kept exactly).
    key: PRNG key.
    num_steps, step_size, noise_scale, grad_clip, noise_first: the chain (see
      `ebm.langevin`); states are clipped to [-1, 1].
    init: start of the unknown pixels [B, H, W, C]; default U[-1, 1]. Pass
      the corrupted image itself to denoise.
    capture_every: c > 0 also returns every c-th state.

  Returns:
    images [B, H, W, C] (or (images, trajectory) when c > 0), with
    images[mask] == x_known[mask] exactly.
  """
  mask = jnp.broadcast_to(mask, x_known.shape)
  k_init, k_chain = jax.random.split(key)
  if init is None:
    init = replay.uniform_images(k_init, x_known.shape[0], x_known.shape[1:], x_known.dtype)
  return langevin.langevin_sample(
      energy_fn, init, k_chain, num_steps, step_size, noise_scale, grad_clip, (-1.0, 1.0),
      noise_first=noise_first, capture_every=capture_every,
      project_fn=lambda x: jnp.where(mask, x_known, x))


def denoise(energy_fn: EnergyFn, x_noisy: jax.Array, key: jax.Array, num_steps: int,
            step_size: float, noise_scale: float = 0.0, grad_clip: float | None = None,
            *, noise_first: bool = False, capture_every: int = 0):
  """Langevin descent on E started at corrupted images x_noisy [B, H, W, C].

  With noise_scale = 0 it is clipped gradient descent on the energy, pulling
  the images towards nearby low-energy (data-like) images; a few steps
  suffice (many would walk on to a mode and forget the input).

  Args:
    energy_fn: E, [B, H, W, C] -> [B].
    x_noisy: corrupted images [B, H, W, C] in [-1, 1] (the chain's start).
    key: PRNG key (unused when noise_scale = 0).
    num_steps, step_size, noise_scale, grad_clip, noise_first: the chain (see
      `ebm.langevin`); states are clipped to [-1, 1].
    capture_every: c > 0 also returns every c-th state.

  Returns:
    images [B, H, W, C] (or (images, trajectory) when c > 0).
  """
  return langevin.langevin_sample(energy_fn, x_noisy, key, num_steps, step_size,
                                  noise_scale, grad_clip, (-1.0, 1.0),
                                  noise_first=noise_first, capture_every=capture_every)


def box_mask(image_shape, top: int, left: int, height: int, width: int) -> jax.Array:
  """Known-pixel mask of box inpainting: False inside the box, True elsewhere.

  Args:
    image_shape: (H, W) or (H, W, C).
    top, left: the box's first row and column (0-based).
    height, width: the box's size; it must lie inside the image.

  Returns:
    bool [H, W, 1] (broadcasts over channels and a batch), True = known.
  """
  h, w = int(image_shape[0]), int(image_shape[1])
  if height < 1 or width < 1 or top < 0 or left < 0 or top + height > h or left + width > w:
    raise ValueError(f"box (top={top}, left={left}, height={height}, width={width}) is not "
                     f"a non-empty box inside the {h}x{w} image")
  rows = (jnp.arange(h) >= top) & (jnp.arange(h) < top + height)
  cols = (jnp.arange(w) >= left) & (jnp.arange(w) < left + width)
  return ~(rows[:, None] & cols[None, :])[:, :, None]


def mse(x: jax.Array, x_ref: jax.Array) -> jax.Array:
  """Mean squared error per image: x, x_ref [B, ...] -> float32 [B]."""
  d = jnp.asarray(x, jnp.float32) - jnp.asarray(x_ref, jnp.float32)
  return jnp.mean(jnp.square(d).reshape(d.shape[0], -1), axis=1)


def psnr(x: jax.Array, x_ref: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, 10 log10(range² / MSE), in dB.

  Args:
    x, x_ref: images [B, ...].
    data_range: max - min of the pixel range; 2 for [-1, 1] (the same PSNR
      as for the images mapped to [0, 1] with range 1, or uint8 with 255).

  Returns:
    float32 [B] (inf where x == x_ref).
  """
  return 10.0 * jnp.log10(data_range ** 2 / mse(x, x_ref))


def restoration_errors(x_restored: jax.Array, x_corrupted: jax.Array,
                       x_original: jax.Array, mask: jax.Array | None = None,
                       data_range: float = 2.0) -> dict[str, jax.Array]:
  """MSE / PSNR of a restoration and of its corrupted input (the baseline).

  Args:
    x_restored, x_corrupted, x_original: images [B, H, W, C].
    mask: optional known-pixel mask (inpainting), broadcastable to the
      images; the errors are then over the unknown pixels only (elsewhere
      all three agree by construction). None = over every pixel.
    data_range: as in `psnr`.

  Returns:
    {"mse", "psnr", "mse_corrupted", "psnr_corrupted"}: float32 means over
    the batch (PSNR the mean of per-image dB values).
  """
  if mask is None:
    err, err_in = mse(x_restored, x_original), mse(x_corrupted, x_original)
  else:
    unknown = ~jnp.broadcast_to(mask, x_original.shape)
    count = jnp.sum(unknown.reshape(unknown.shape[0], -1), axis=1)
    def masked_mse(x):
      d = jnp.where(unknown, jnp.asarray(x, jnp.float32) - jnp.asarray(x_original, jnp.float32),
                    0.0)
      return jnp.sum(jnp.square(d).reshape(d.shape[0], -1), axis=1) / count
    err, err_in = masked_mse(x_restored), masked_mse(x_corrupted)
  to_db = lambda e: 10.0 * jnp.log10(data_range ** 2 / e)
  return {"mse": jnp.mean(err), "psnr": jnp.mean(to_db(err)),
          "mse_corrupted": jnp.mean(err_in), "psnr_corrupted": jnp.mean(to_db(err_in))}
