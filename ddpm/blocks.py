"""The one UNet toolkit: every network in `ddpm.networks` is a composition of
these blocks.

  TimeEmbedding    sinusoid(t) -> Dense -> act -> Dense
  LabelEmbedding   class label (or the null label) -> vector
  ResBlock         residual block with time injection (pre- or post-activation)
  DoubleConv       the course MNIST UNet's conv-norm-GELU-conv-norm block
  AttentionBlock   self-attention over H x W (GroupNorm or LayerNorm, any
                   number of heads, optional transformer feed-forward)
  Downsample       stride-2 convolution or 2x2 max-pooling
  Upsample         nearest + conv, transposed conv (sub-pixel), or bilinear
  ConvTranspose4x4 PyTorch's ConvTranspose2d(k=4, s=2, p=1) as four 2x2 convs

Images are NHWC. Every block has a `dtype` field for the compute dtype
(parameters stay float32).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm.embedding import sinusoidal_embedding

Dtype = Any
Initializer = Callable[..., jax.Array]

def gelu_exact(x: jax.Array) -> jax.Array:
  """The exact GELU x·Φ(x) = x/2·(1 + erf(x/√2)) (PyTorch's default nn.GELU).

  Written with `erf`: `nn.gelu(approximate=False)` goes through `erfc`, which
  XLA's CPU backend computes several times slower; the values agree to ~1e-7.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(1.0 / np.sqrt(2.0), x.dtype)))


def ddpm_init(scale: float = 1.0) -> Initializer:
  """The DDPM code's initialiser: variance scaling, fan_avg, uniform.

  scale = 0 gives zeros (the DDPM code uses 1e-10 where it means zero).
  """
  if scale == 0.0:
    return nn.initializers.zeros
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def torch_init() -> Initializer:
  """PyTorch's default Conv/Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv3x3(features: int, *, name: str, kernel_init: Initializer, dtype: Dtype,
            strides: int = 1, padding: Any = ((1, 1), (1, 1)), use_bias: bool = True) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding=padding,
                 use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, name=name)


def conv1x1(features: int, *, name: str, kernel_init: Initializer, dtype: Dtype) -> nn.Conv:
  return nn.Conv(features, (1, 1), kernel_init=kernel_init, dtype=dtype, name=name)


class TimeEmbedding(nn.Module):
  """temb = Dense(act(Dense(sinusoid(t)))).

  Attributes:
    embed_dim: size of the sinusoidal embedding.
    features: size of the output (the DDPM code's 4 ch, the course's 512).
    act: nonlinearity between the two dense layers.
    freq_shift: 0 (course) or 1 (DDPM code); see `ddpm.embedding`.
  """
  embed_dim: int
  features: int
  act: Callable = nn.relu
  freq_shift: float = 0.0
  kernel_init: Initializer = torch_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """[B] timesteps -> [B, features]."""
    emb = sinusoidal_embedding(t, self.embed_dim, freq_shift=self.freq_shift)
    dense = functools.partial(nn.Dense, self.features, kernel_init=self.kernel_init,
                              dtype=self.dtype)
    return dense(name="dense1")(self.act(dense(name="dense0")(emb)))


class LabelEmbedding(nn.Module):
  """Class label -> [B, features]; index num_classes is the null label.

  Attributes:
    num_classes: number of real classes.
    features: embedding size.
    null_label: add one embedding row for "no label" (classifier-free
      guidance); `label=None` then means the null label for the whole batch.
  """
  num_classes: int
  features: int
  null_label: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, label: jax.Array | None, batch_size: int) -> jax.Array:
    """[B] int labels (or None) -> [B, features]."""
    if label is None:
      if not self.null_label:
        raise ValueError("this network is class-conditional without a null label: pass a label")
      label = jnp.full((batch_size,), self.num_classes, jnp.int32)
    embed = nn.Embed(self.num_classes + int(self.null_label), self.features,
                     embedding_init=nn.initializers.normal(1.0), name="embedding")
    return embed(label).astype(self.dtype)


class ResBlock(nn.Module):
  """Residual block with time injection, h + shortcut(x).

  preactivation=True (the DDPM code): GN -> act -> conv -> + Dense(act(temb))
  -> GN -> act -> dropout -> conv.
  preactivation=False (the course SimpleUNet): conv -> GN -> act ->
  + Dense(act(temb)) -> conv -> GN -> dropout -> act.
  The shortcut is a 1x1 conv when the channel count changes.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    act: nonlinearity.
    dropout: dropout rate.
    preactivation: which of the two orders above.
    norm_eps: GroupNorm epsilon (1e-6 TF, 1e-5 PyTorch).
    zero_init_out: zero-initialise the last conv (the DDPM code's init_scale 0).
  """
  features: int
  num_groups: int = 32
  act: Callable = nn.swish
  dropout: float = 0.0
  preactivation: bool = True
  norm_eps: float = 1e-6
  kernel_init: Initializer = ddpm_init()
  zero_init_out: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None, *, train: bool) -> jax.Array:
    """[B, H, W, C_in] (and [B, D] temb) -> [B, H, W, features]."""
    norm = functools.partial(nn.GroupNorm, num_groups=self.num_groups, epsilon=self.norm_eps,
                             dtype=self.dtype)
    conv = functools.partial(conv3x3, self.features, kernel_init=self.kernel_init,
                             dtype=self.dtype)
    out_init = nn.initializers.zeros if self.zero_init_out else self.kernel_init
    drop = nn.Dropout(self.dropout, deterministic=not train)

    def time_proj(h):
      if temb is None:
        return h
      proj = nn.Dense(self.features, kernel_init=self.kernel_init, dtype=self.dtype,
                      name="temb_proj")(self.act(temb))
      return h + proj[:, None, None, :]

    if self.preactivation:
      h = conv(name="conv1")(self.act(norm(name="norm1")(x)))
      h = time_proj(h)
      h = drop(self.act(norm(name="norm2")(h)))
      h = conv3x3(self.features, kernel_init=out_init, dtype=self.dtype, name="conv2")(h)
    else:
      h = self.act(norm(name="norm1")(conv(name="conv1")(x)))
      h = time_proj(h)
      h = conv3x3(self.features, kernel_init=out_init, dtype=self.dtype, name="conv2")(h)
      h = self.act(drop(norm(name="norm2")(h)))
    if x.shape[-1] != self.features:
      x = conv1x1(self.features, kernel_init=self.kernel_init, dtype=self.dtype,
                  name="shortcut")(x)
    return x + h


class DoubleConv(nn.Module):
  """The course MNIST UNet's block: conv -> GN -> act -> conv -> GN (no biases).

  With residual=True it returns act(x + block(x)) (then features must equal
  the input channels).

  Attributes:
    features: output channels.
    mid_features: channels after the first conv (default `features`).
    residual: add the input and apply `act` once more.
    num_groups: GroupNorm groups (1 in the course: a LayerNorm over C, H, W).
  """
  features: int
  mid_features: int | None = None
  residual: bool = False
  num_groups: int = 1
  act: Callable = gelu_exact
  norm_eps: float = 1e-5
  kernel_init: Initializer = torch_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, H, W, features]."""
    mid = self.mid_features or self.features
    norm = functools.partial(nn.GroupNorm, num_groups=self.num_groups, epsilon=self.norm_eps,
                             dtype=self.dtype)
    conv = functools.partial(conv3x3, use_bias=False, kernel_init=self.kernel_init,
                             dtype=self.dtype)
    h = self.act(norm(name="norm1")(conv(mid, name="conv1")(x)))
    h = norm(name="norm2")(conv(self.features, name="conv2")(h))
    if self.residual:
      return self.act(x + h)
    return h


class AttentionBlock(nn.Module):
  """Self-attention over the H x W positions, with a residual connection.

  x + proj(attention(qkv(norm(x)))), then optionally (mlp=True, the course
  MNIST UNet's transformer block) + Dense(GELU(Dense(LayerNorm(.)))).
  One fused qkv projection: its parameter count equals the DDPM code's three
  1x1 convs, the course's qkv conv and torch's MultiheadAttention in_proj.

  Attributes:
    num_heads: attention heads (channels must be divisible by it).
    norm: "group" (GroupNorm) or "layer" (LayerNorm over channels).
    num_groups: GroupNorm groups.
    mlp: add the feed-forward sub-block.
    zero_init_out: zero-initialise the output projection (DDPM code).
  """
  num_heads: int = 1
  norm: str = "group"
  num_groups: int = 32
  norm_eps: float = 1e-6
  mlp: bool = False
  kernel_init: Initializer = ddpm_init()
  zero_init_out: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C]."""
    b, height, width, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"{c} channels are not divisible by {self.num_heads} heads")
    d = c // self.num_heads
    tokens = x.reshape(b, height * width, c)
    if self.norm == "group":
      h = nn.GroupNorm(self.num_groups, epsilon=self.norm_eps, dtype=self.dtype,
                       name="norm")(tokens)
    elif self.norm == "layer":
      h = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm")(tokens)
    else:
      raise ValueError(f"norm must be 'group' or 'layer', got {self.norm!r}")
    qkv = nn.Dense(3 * c, kernel_init=self.kernel_init, dtype=self.dtype, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(b, height * width, 3, self.num_heads, d), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]               # [B, L, heads, d]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d).astype(np.float32)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, height * width, c)
    out_init = nn.initializers.zeros if self.zero_init_out else self.kernel_init
    out = tokens + nn.Dense(c, kernel_init=out_init, dtype=self.dtype, name="proj")(out)
    if self.mlp:
      f = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="mlp_norm")(out)
      f = nn.Dense(c, kernel_init=self.kernel_init, dtype=self.dtype, name="mlp_dense0")(f)
      f = nn.Dense(c, kernel_init=self.kernel_init, dtype=self.dtype,
                   name="mlp_dense1")(gelu_exact(f))
      out = out + f
    return out.reshape(b, height, width, c)


class Downsample(nn.Module):
  """Halves H and W.

  Attributes:
    method: "conv" (3x3 stride-2 conv) or "maxpool" (2x2, floor).
    features: conv output channels (default: the input's).
    padding: conv padding: "SAME" is TF's (the DDPM code: 0 before, 1 after
      for even sizes), ((1, 1), (1, 1)) is PyTorch's padding=1.
  """
  method: str = "conv"
  features: int | None = None
  padding: Any = "SAME"
  kernel_init: Initializer = ddpm_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, features]."""
    if self.method == "conv":
      return conv3x3(self.features or x.shape[-1], strides=2, padding=self.padding,
                     kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    if self.method == "maxpool":
      return max_pool_2x2(x)
    raise ValueError(f"unknown downsampling {self.method!r}")


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 (floor: an odd last row/column is dropped).

  The values of `nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`,
  written as a reshape and a max over the two window axes. Why: XLA:CPU runs
  the windowed form and its gradient (select-and-scatter, rewritten with
  index iotas) several times slower; in the small UNet's train step they took
  ~4.5% of the time. The gradient is the same wherever the window's maximum
  is unique; on exact ties it is shared equally among the tied entries
  (`reduce_max`'s rule) instead of going to the first one.
  """
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ConvTranspose4x4(nn.Module):
  """ConvTranspose2d(k=4, stride=2, padding=1) of PyTorch, as sub-pixel convs.

  Parameters and outputs are those of
  `nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))`
  (kernel [4, 4, C_in, features], not flipped: PyTorch's weight W[i, o, a, b]
  is kernel[3 - a, 3 - b, i, o]). Output pixel (2m + a, 2n + b) only sees the
  kernel taps kernel[a::2, b::2] on a 2x2 input window, so the layer is four
  2x2 convolutions whose outputs are interleaved. XLA's CPU backend runs
  these on its fast path where the transposed convolution's weight gradient
  falls back to a slow one (see PERF_NOTES).
  """
  features: int
  kernel_init: Initializer = torch_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, 2H, 2W, features]."""
    b, height, width, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (4, 4, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = ((1, 0), (0, 1))     # even outputs see rows (m-1, m), odd ones (m, m+1)
    rows = []
    for a in (0, 1):
      cols = []
      for b_ in (0, 1):
        cols.append(jax.lax.conv_general_dilated(
            x, kernel[a::2, b_::2], (1, 1), (pads[a], pads[b_]),
            dimension_numbers=("NHWC", "HWIO", "NHWC")))
      rows.append(jnp.stack(cols, axis=3))             # [B, H, W, 2, C]
    y = jnp.stack(rows, axis=2)                         # [B, H, 2, W, 2, C]
    return y.reshape(b, 2 * height, 2 * width, self.features) + bias


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] interpolation weights of align_corners=True resizing."""
  m = np.zeros((n_out, n_in), np.float32)
  if n_in == 1 or n_out == 1:
    m[:, 0] = 1.0
    return m
  src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  i0 = np.clip(np.floor(src).astype(int), 0, n_in - 2)
  w = (src - i0).astype(np.float32)
  m[np.arange(n_out), i0] += 1.0 - w
  m[np.arange(n_out), i0 + 1] += w
  return m


def upsample_bilinear(x: jax.Array, scale: int = 2) -> jax.Array:
  """PyTorch's Upsample(scale_factor, mode="bilinear", align_corners=True).

  Args:
    x: [B, H, W, C].
    scale: integer factor.

  Returns:
    [B, scale H, scale W, C].
  """
  _, height, width, _ = x.shape
  mh = jnp.asarray(_bilinear_matrix(height, scale * height), x.dtype)
  mw = jnp.asarray(_bilinear_matrix(width, scale * width), x.dtype)
  x = jnp.einsum("ph,bhwc->bpwc", mh, x)
  return jnp.einsum("qw,bpwc->bpqc", mw, x)


class Upsample(nn.Module):
  """Doubles H and W.

  Attributes:
    method: "nearest_conv" (nearest neighbour then 3x3 conv, the DDPM code),
      "conv_transpose" (`ConvTranspose4x4`, the course SimpleUNet) or
      "bilinear" (align_corners=True, no parameters, the course MNIST UNet).
    features: output channels of the conv methods (default: the input's).
  """
  method: str = "nearest_conv"
  features: int | None = None
  kernel_init: Initializer = ddpm_init()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, features]."""
    features = self.features or x.shape[-1]
    if self.method == "nearest_conv":
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      return conv3x3(features, kernel_init=self.kernel_init, dtype=self.dtype, name="conv")(x)
    if self.method == "conv_transpose":
      return ConvTranspose4x4(features, kernel_init=self.kernel_init, dtype=self.dtype,
                              name="conv")(x)
    if self.method == "bilinear":
      return upsample_bilinear(x)
    raise ValueError(f"unknown upsampling {self.method!r}")


def pad_or_crop_to(x: jax.Array, like: jax.Array) -> jax.Array:
  """Pads (centred, as the course's Up) or crops x's H, W to those of `like`."""
  for axis in (1, 2):
    diff = like.shape[axis] - x.shape[axis]
    if diff > 0:
      pad = [(0, 0)] * x.ndim
      pad[axis] = (diff // 2, diff - diff // 2)
      x = jnp.pad(x, pad)
    elif diff < 0:
      x = jax.lax.slice_in_dim(x, 0, like.shape[axis], axis=axis)
  return x

