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

Per-class buffer (JEM's conditional sampling, Grathwohl et al. 2020): a
second array of int32 labels [N] in `TrainState.extras["buffer_labels"]`,
entry i the class y whose E(x, y) chain slot i holds. Slot i starts with
label i mod K (every class holds ⌊N/K⌋ or ⌈N/K⌉ slots, as JEM's buffer is K
equal blocks), `draw_labelled` returns the labels of the drawn slots with the
states (a restarted chain keeps its slot's label, so it restarts a chain of
the same class), and `push_labelled` writes states and labels back together,
so the two arrays stay aligned by construction; both are plain arrays, saved
and restored with the state.

Augmented restarts (Improved CD, Du et al. 2021, §3.3 "data augmentation
transitions"; their `--transform` flag): the states drawn from the buffer
are randomly transformed before their chains continue, so that a chain can
jump between modes that Langevin steps alone would need many steps to
connect (a shifted or mirrored garment is a nearby mode, not a small
gradient step away). ICD uses random resized crops, flips and colour jitter
on colour images; `Augmentation` is the grayscale-friendly subset: a random
shift by up to `max_shift` pixels (the vacated border filled with the
background value -1, black), an optional horizontal flip and small Gaussian
pixel noise. Chains restarted from noise are not transformed. Off by
default (`Augmentation()`), and then `draw` is exactly the plain draw.
"""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random transformations of buffer states before their chains continue.

  Improved CD's data-augmentation transitions (Du et al. 2021, §3.3), in a
  grayscale form (see the module docstring). Each chain draws its own
  transformation: flip (probability 1/2 when `flip`), then shift, then
  noise, then a clip to [-1, 1].

  Attributes:
    max_shift: s ≥ 0; each chain is shifted by (dy, dx) uniform in
      {-s..s}², the vacated border filled with `fill`. 0 = no shift.
    flip: mirror left-right with probability 1/2.
    noise_std: std of the Gaussian noise added to every pixel; 0 = none.
    fill: value of the pixels shifted in (-1 = black, the background of
      Fashion-MNIST and MNIST).
  """
  max_shift: int = 0
  flip: bool = False
  noise_std: float = 0.0
  fill: float = -1.0

  @property
  def enabled(self) -> bool:
    return self.max_shift > 0 or self.flip or self.noise_std > 0


def transform_images(x: jax.Array, flip: jax.Array, shift: jax.Array, noise: jax.Array,
                     max_shift: int, fill: float = -1.0) -> jax.Array:
  """The deterministic part of `augment`: given per-image flips, shifts and noise.

  Args:
    x: images [B, H, W, C].
    flip: bool [B], mirror image b left-right (before the shift).
    shift: int [B, 2], (dy, dx) with |dy|, |dx| ≤ max_shift: the output
      pixel (i, j) is the (flipped) input pixel (i - dy, j - dx), `fill`
      where that lies outside the image.
    noise: [B, H, W, C] added after the shift (zeros for none).
    max_shift: the bound s on |dy|, |dx| (static; the padding width).
    fill: value of the pixels shifted in.

  Returns:
    [B, H, W, C], clipped to [-1, 1].
  """
  b, h, w, c = x.shape
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
  if max_shift > 0:
    s = int(max_shift)
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), constant_values=fill)
    start = s - jnp.asarray(shift, jnp.int32)          # [B, 2]: rows/cols of the window

    def crop(image, offset):
      return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    x = jax.vmap(crop)(padded, start)
  return jnp.clip(x + noise.astype(x.dtype), -1.0, 1.0)


def augment(x: jax.Array, key: jax.Array, augmentation: Augmentation) -> jax.Array:
  """Random flips, shifts and noise of images [B, H, W, C] (`Augmentation`).

  Returns:
    [B, H, W, C] in [-1, 1]; x unchanged when the augmentation is off.
  """
  if not augmentation.enabled:
    return x
  b = x.shape[0]
  k_flip, k_shift, k_noise = jax.random.split(key, 3)
  flip = (jax.random.bernoulli(k_flip, 0.5, (b,)) if augmentation.flip
          else jnp.zeros((b,), bool))
  s = int(augmentation.max_shift)
  shift = jax.random.randint(k_shift, (b, 2), -s, s + 1)
  noise = (augmentation.noise_std * jax.random.normal(k_noise, x.shape, x.dtype)
           if augmentation.noise_std > 0 else jnp.zeros_like(x))
  return transform_images(x, flip, shift, noise, s, augmentation.fill)


def draw(buffer: jax.Array, key: jax.Array, batch_size: int,
         reinit_fraction: float, augmentation: Augmentation | None = None
         ) -> tuple[jax.Array, jax.Array]:
  """Starting points for a batch of chains.

  Args:
    buffer: [N, H, W, C] with N >= batch_size.
    key: PRNG key.
    batch_size: B, number of chains (static).
    reinit_fraction: probability that a chain restarts from U[-1, 1] instead
      of continuing from its buffer slot.
    augmentation: transform the continuing chains' states (`augment`, with
      a key folded from `key`, so slots and restarts are those of the plain
      draw); None or disabled = as drawn.

  Returns:
    (x0 [B, H, W, C], idx int32 [B]): the start states and the distinct slots
    they were drawn from (restarted chains also own a slot, which `push`
    overwrites).
  """
  if batch_size > buffer.shape[0]:
    raise ValueError(f"cannot draw {batch_size} distinct chains from a buffer of "
                     f"{buffer.shape[0]} slots")
  k_idx, k_mask, k_noise = jax.random.split(key, 3)
  idx = jax.random.choice(k_idx, buffer.shape[0], (batch_size,), replace=False)
  idx = idx.astype(jnp.int32)
  restart = jax.random.uniform(k_mask, (batch_size,)) < reinit_fraction
  noise = uniform_images(k_noise, batch_size, buffer.shape[1:], buffer.dtype)
  restart = restart.reshape((batch_size,) + (1,) * (buffer.ndim - 1))
  continued = buffer[idx]
  if augmentation is not None and augmentation.enabled:
    continued = augment(continued, jax.random.fold_in(key, 3), augmentation)
  return jnp.where(restart, noise, continued), idx


def push(buffer: jax.Array, idx: jax.Array, x: jax.Array) -> jax.Array:
  """Writes the chains' new states x [B, H, W, C] into slots idx [B] (distinct)."""
  return buffer.at[idx].set(x.astype(buffer.dtype), unique_indices=True)


def init_labels(size: int, num_classes: int) -> jax.Array:
  """Labels of a fresh per-class buffer: slot i has class i mod K, int32 [size]."""
  if num_classes < 1:
    raise ValueError(f"a per-class buffer needs num_classes >= 1, got {num_classes}")
  if size < num_classes:
    raise ValueError(f"a per-class buffer needs size >= num_classes ({num_classes}), "
                     f"got {size}")
  return jnp.arange(size, dtype=jnp.int32) % num_classes


def draw_labelled(buffer: jax.Array, labels: jax.Array, key: jax.Array, batch_size: int,
                  reinit_fraction: float, augmentation: Augmentation | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`draw` from a per-class buffer: start states, their labels and slots.

  Args:
    buffer: [N, H, W, C].
    labels: int32 [N], the class of each slot.
    key: PRNG key (the same draw as `draw` with this key).
    batch_size: B (static).
    reinit_fraction: as in `draw`; a restarted chain keeps its slot's label.
    augmentation: as in `draw` (a transformed state keeps its label).

  Returns:
    (x0 [B, H, W, C], y int32 [B], idx int32 [B]) with y = labels[idx].
  """
  x0, idx = draw(buffer, key, batch_size, reinit_fraction, augmentation)
  return x0, labels[idx], idx


def slots_of_classes(labels: jax.Array, key: jax.Array, y: jax.Array) -> jax.Array:
  """Random buffer slots holding the requested classes, distinct where possible.

  The slots are ordered by (label, a random key), so each class's slots come
  in a random order; the j-th request for class c takes the j-th slot of c
  (wrapping around when more than the count of c are requested).

  Args:
    labels: int32 [N], the class of each slot.
    key: PRNG key.
    y: int32 [B], the requested classes (each must occur in `labels`).

  Returns:
    int32 [B] slots with labels[slots] == y.
  """
  y = jnp.asarray(y, jnp.int32)
  n = labels.shape[0]
  order = jnp.lexsort((jax.random.uniform(key, (n,)), labels))   # by label, then random
  sorted_labels = labels[order]
  start = jnp.searchsorted(sorted_labels, y, side="left")
  count = jnp.searchsorted(sorted_labels, y, side="right") - start
  # rank of each request among the earlier requests of the same class
  i = jnp.arange(y.shape[0])
  rank = jnp.sum((y[:, None] == y[None, :]) & (i[None, :] < i[:, None]), axis=1)
  return order[start + rank % jnp.maximum(count, 1)].astype(jnp.int32)


def push_labelled(buffer: jax.Array, labels: jax.Array, idx: jax.Array, x: jax.Array,
                  y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`push` for a per-class buffer: states x [B, ...] and labels y [B] into slots idx.

  Returns:
    (buffer [N, H, W, C], labels int32 [N]).
  """
  return (push(buffer, idx, x),
          labels.at[idx].set(jnp.asarray(y, labels.dtype), unique_indices=True))
