"""Inception-v3 features for FID and Inception Score, as in the standard FID code.

The network is the one TF FID and pytorch-fid use ("inception-2015-12-05",
ported to PyTorch by pytorch-fid as `pt_inception-2015-12-05-6726825d.pth`):
torchvision's Inception-v3 layout with 1008 output classes, no auxiliary
head, and pytorch-fid's patches to match the TF graph:

  * the average pools inside Mixed_5b-d, Mixed_6b-e and Mixed_7b exclude the
    zero padding from the average (`count_include_pad=False`);
  * the pool branch of Mixed_7c is a 3x3/1 *max* pool, not an average pool.

Preprocessing follows pytorch-fid: uint8 images -> [0, 1] -> bilinear resize
to 299x299 (half-pixel centres, no antialiasing: `F.interpolate(...,
mode="bilinear", align_corners=False)`) -> [-1, 1]. Grayscale images are
repeated to three channels. Outputs are the 2048-d pool3 features (the global
average pool after Mixed_7c, used for FID) and the 1008-way logits of the
final linear layer applied to them (used for the Inception Score).

Module and block names are torchvision's, so the mapping from the
pytorch-fid state_dict (`convert_pytorch_fid_state_dict`) is mechanical:

  <name>.conv.weight     [out, in, kh, kw] -> params/<name>/conv/kernel  (transposed to HWIO)
  <name>.bn.weight       -> params/<name>/bn/scale
  <name>.bn.bias         -> params/<name>/bn/bias
  <name>.bn.running_mean -> batch_stats/<name>/bn/mean
  <name>.bn.running_var  -> batch_stats/<name>/bn/var
  <name>.bn.num_batches_tracked -> dropped (training-only counter)
  fc.weight [1008, 2048] -> params/fc/kernel (transposed)
  fc.bias                -> params/fc/bias

with <name> such as `Mixed_5b.branch5x5_2` ("." becomes "/").

Pure functions and `flax.linen` modules: no file I/O and no download (the
weights file and its loading are `launch.eval.inception`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from core import metrics

PTH_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
# BasicConv2d layers x (conv.weight, bn.weight, bn.bias, bn.running_mean,
# bn.running_var) + fc.weight, fc.bias: the keys a pytorch-fid state_dict has
# (besides any bn.num_batches_tracked).
NUM_STATE_DICT_TENSORS = 94 * 5 + 2

# Full float32 convolutions and matmuls: without it GPUs may use TF32 and TPUs
# bfloat16 passes, which moves FID away from the float32 reference numbers.
_PRECISION = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------
# The network.


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU.

  `padding` is torchvision's symmetric (pad_h, pad_w).
  """
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_excl_pad(x):
  # TF's average pool divides by the number of non-padding inputs.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b-d: [B, 35, 35, C] -> [B, 35, 35, 224 + pool_features]."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_excl_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: [B, 35, 35, 288] -> [B, 17, 17, 768]."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: [B, 17, 17, 768] -> [B, 17, 17, 768]."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3_excl_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: [B, 17, 17, 768] -> [B, 8, 8, 1280]."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b-c: [B, 8, 8, C] -> [B, 8, 8, 2048].

  Attributes:
    pool: "avg" (Mixed_7b, padding excluded) or "max" (Mixed_7c: the FID
      network's quirk, kept because the weights were trained with it).
  """
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
    ], axis=-1)
    bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
    ], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_3x3_excl_pad(x)
    elif self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
  """The FID Inception-v3 ("pt_inception-2015-12-05") up to pool3 and logits.

  Inputs are [B, H, W, 3] floats in [-1, 1], normally H = W = 299 (any size
  >= 75 runs; FID is defined at 299, see `preprocess`).
  """
  num_classes: int = NUM_LOGITS

  @nn.compact
  def __call__(self, x):
    """Returns (pool [B, 2048], logits [B, num_classes])."""
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, precision=_PRECISION, name="fc")(pool)
    return pool, logits


def preprocess(images_uint8: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] (C = 1 or 3) -> float32 [B, 299, 299, 3] in [-1, 1].

  As pytorch-fid: scale to [0, 1], resize bilinearly to 299x299 with
  half-pixel centres and no antialiasing (= torch's
  `F.interpolate(mode="bilinear", align_corners=False)`), then map to
  [-1, 1]. Grayscale is repeated to RGB.
  """
  x = images_uint8.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear",
                       antialias=False)
  return 2.0 * x - 1.0


def make_apply_fn(model: InceptionV3FID | None = None
                  ) -> Callable[..., Tuple[jax.Array, jax.Array]]:
  """The jitted `apply_fn(variables, images_uint8 [B, H, W, C]) -> (pool, logits)`."""
  model = model or InceptionV3FID()

  @jax.jit
  def apply_fn(variables, images_uint8):
    return model.apply(variables, preprocess(images_uint8))

  return apply_fn


@functools.lru_cache(maxsize=1)
def abstract_variables() -> Mapping[str, Any]:
  """The variables tree {"params", "batch_stats"} as ShapeDtypeStructs."""
  # Shapes do not depend on the spatial size: trace at the smallest valid one.
  return jax.eval_shape(InceptionV3FID().init, jax.random.key(0),
                        jnp.zeros((1, 75, 75, 3), jnp.float32))


# ----------------------------------------------------------------------------
# Weights: the pytorch-fid state_dict, and the .npz file.

_PARAM_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAF_TO_TORCH = {"mean": "running_mean", "var": "running_var"}


def torch_name(flax_path: Sequence[str]) -> str:
  """pytorch-fid state_dict key of a flax variable.

  Args:
    flax_path: (collection, *module names, leaf), e.g.
      ("params", "Mixed_5b", "branch1x1", "conv", "kernel").

  Returns:
    e.g. "Mixed_5b.branch1x1.conv.weight".
  """
  collection, *modules, leaf = flax_path
  table = _PARAM_LEAF_TO_TORCH if collection == "params" else _STAT_LEAF_TO_TORCH
  return ".".join([*modules, table[leaf]])


def _torch_to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:  # linear [out, in] -> [in, out]
    return np.transpose(array, (1, 0))
  return array


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch.Tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def convert_pytorch_fid_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """Converts pytorch-fid's FID Inception state_dict to flax variables.

  Args:
    state_dict: tensor name -> array (NumPy arrays or torch tensors), as in
      `torch.load("pt_inception-2015-12-05-6726825d.pth")`: 472 tensors,
      plus optional `*.num_batches_tracked` counters that are ignored. The
      name mapping is in the module docstring.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 NumPy arrays, the tree
    `InceptionV3FID` expects.

  Raises:
    ValueError: naming every missing, unexpected or wrongly shaped tensor.
  """
  flat_abstract = traverse_util.flatten_dict(abstract_variables())
  flat, problems, used = {}, [], set()
  for path, leaf in flat_abstract.items():
    name = torch_name(path)
    if name not in state_dict:
      problems.append(f"missing {name} (for {'/'.join(path)})")
      continue
    used.add(name)
    array = _torch_to_flax_layout(_to_numpy(state_dict[name]))
    if array.shape != tuple(leaf.shape):
      problems.append(f"{name}: shape {array.shape} after transposing, expected {leaf.shape}")
      continue
    flat[path] = array.astype(np.float32)
  unexpected = sorted(k for k in state_dict
                      if k not in used and not k.endswith(".num_batches_tracked"))
  problems += [f"unexpected {k}" for k in unexpected]
  if problems:
    raise ValueError(
        f"not a pytorch-fid FID Inception state_dict ({PTH_FILENAME}): "
        + "; ".join(problems[:10]) + (f"; ... ({len(problems)} problems)"
                                      if len(problems) > 10 else ""))
  return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------
# Features and the Inception Score.


def inception_features(apply_fn, params, images_uint8, batch_size: int = 250
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Pool3 features and logits of a set of images, batch by batch.

  Every batch has the same shape (the last one is padded and the padding
  dropped), so `apply_fn` compiles once per (batch_size, H, W, C).

  Args:
    apply_fn: from `load_inception`.
    params: the variables from `load_inception`.
    images_uint8: [N, H, W, C] uint8, C = 1 or 3, any H, W (resized to 299).
    batch_size: images per forward pass (min(batch_size, N) is used).

  Returns:
    (pool [N, 2048], logits [N, 1008]) float32 NumPy arrays.
  """
  images = np.asarray(images_uint8)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
  if images.dtype != np.uint8:
    raise TypeError(f"images must be uint8 (see core.images.to_uint8), got {images.dtype}")
  n = images.shape[0]
  if n == 0:
    return np.zeros((0, POOL_DIM), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
  pools, logits = metrics.batched_apply(apply_fn, params, images, batch_size)
  return pools.astype(np.float32), logits.astype(np.float32)


def inception_score(logits_or_probs, splits: int = 10, kind: str = "auto"
                    ) -> Tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

  As in the original code (Salimans et al. 2016): the N predictions are cut
  into `splits` contiguous parts at i * N // splits, p(y) is the mean
  prediction within a part, the score of a part is exp of the mean KL, and
  the result is the mean and (population) standard deviation of the part
  scores. Computed in float64; 0 log 0 = 0.

  Args:
    logits_or_probs: [N, K] logits (e.g. the 1008 Inception logits) or
      probabilities.
    splits: number of parts, 1 <= splits <= N.
    kind: "logits", "probs", or "auto": probabilities if every entry is
      non-negative and every row sums to 1 (to 1e-3), logits otherwise.

  Returns:
    (mean, std) floats. Uniform predictions give 1; one-hot predictions
    spread evenly over k classes within each part give k.
  """
  x = np.asarray(logits_or_probs, np.float64)
  if x.ndim != 2:
    raise ValueError(f"expected [N, K], got shape {x.shape}")
  if not 1 <= splits <= x.shape[0]:
    raise ValueError(f"splits must be in [1, N={x.shape[0]}], got {splits}")
  if kind == "auto":
    is_probs = x.min() >= 0.0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3)
    kind = "probs" if is_probs else "logits"
  if kind == "logits":
    probs = scipy.special.softmax(x, axis=1)
  elif kind == "probs":
    probs = x / x.sum(axis=1, keepdims=True)
  else:
    raise ValueError(f"kind must be 'auto', 'logits' or 'probs', got {kind!r}")
  n = probs.shape[0]
  scores = []
  for i in range(splits):
    part = probs[i * n // splits:(i + 1) * n // splits]
    p_y = part.mean(axis=0, keepdims=True)
    kl = (scipy.special.xlogy(part, part) - scipy.special.xlogy(part, p_y)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
