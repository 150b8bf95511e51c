"""The networks, each a composition of `ddpm.blocks`, and their registry.

  unet_ho      the DDPM paper's CIFAR-10 UNet (35,746,307 parameters at the
               paper's settings, 3 -> 3 channels).
  simple_unet  the course notebook's CIFAR-10 SimpleUNet (7,719,747).
  unet_small   the course MNIST UNet (width 16) and, with num_classes > 0,
               its class-conditional variant.
  denoiser     the one-step 50/50 "ink blot" denoiser (no time input).

Every network is called as `net.apply(variables, x, t, label, train=...)`:
x [B, H, W, C] float, t [B] 0-based int timesteps (ignored by the denoiser),
label [B] int or None, and returns float32 [B, H, W, out_ch]. A network with
num_classes > 0 is class-conditional; with null_label=True it has one extra
label embedding, index num_classes, used for "no label" (classifier-free
guidance), and label=None means that null label. Each network sows its
lowest-resolution activation as intermediates/bottleneck.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm import blocks
from ddpm.embedding import sinusoidal_embedding

Dtype = Any


class UNetHo(nn.Module):
  """Ho et al. (2020) UNet (diffusion_tf `models/unet.py`, CIFAR-10 settings).

  Pre-activation residual blocks with swish and GroupNorm(32), time MLP
  ch -> 4 ch -> 4 ch on the DDPM code's sinusoid (freq_shift 1), num_res_blocks
  blocks per level, self-attention at the resolutions in attn_resolutions,
  TF-'SAME' stride-2 conv downsampling, nearest + conv upsampling, and
  zero-initialised output convs.

  Attributes:
    out_ch: output channels.
    ch: base width.
    ch_mult: width multiplier per level (len - 1 downsamplings).
    num_res_blocks: residual blocks per level (num_res_blocks + 1 going up).
    attn_resolutions: spatial sizes (H) at which to add self-attention.
    dropout: dropout rate inside residual blocks.
    num_groups: GroupNorm groups.
    num_heads: attention heads (1 in the paper).
    num_classes: 0 = unconditional; otherwise a label embedding is added to
      the time embedding.
    null_label: one extra label embedding for classifier-free guidance.
    dtype: compute dtype.
  """
  out_ch: int = 3
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  num_heads: int = 1
  num_classes: int = 0
  null_label: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    init = blocks.ddpm_init()
    temb = blocks.TimeEmbedding(self.ch, 4 * self.ch, act=nn.swish, freq_shift=1,
                                kernel_init=init, dtype=self.dtype, name="temb")(t)
    if self.num_classes:
      temb = temb + blocks.LabelEmbedding(self.num_classes, 4 * self.ch, self.null_label,
                                          dtype=self.dtype, name="label_emb")(label, x.shape[0])

    def res(features, name):
      return blocks.ResBlock(features, num_groups=self.num_groups, act=nn.swish,
                             dropout=self.dropout, preactivation=True, norm_eps=1e-6,
                             kernel_init=init, zero_init_out=True, dtype=self.dtype, name=name)

    def attn(h, name):
      if h.shape[1] not in self.attn_resolutions:
        return h
      return blocks.AttentionBlock(num_heads=self.num_heads, norm="group",
                                   num_groups=self.num_groups, norm_eps=1e-6, kernel_init=init,
                                   zero_init_out=True, dtype=self.dtype, name=name)(h)

    hs = [blocks.conv3x3(self.ch, kernel_init=init, dtype=self.dtype, padding="SAME",
                         name="conv_in")(x.astype(self.dtype))]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = res(self.ch * mult, f"down_{level}_block_{i}")(hs[-1], temb, train=train)
        hs.append(attn(h, f"down_{level}_attn_{i}"))
      if level != len(self.ch_mult) - 1:
        hs.append(blocks.Downsample("conv", padding="SAME", kernel_init=init, dtype=self.dtype,
                                    name=f"down_{level}_downsample")(hs[-1]))
    h = res(hs[-1].shape[-1], "mid_block_0")(hs[-1], temb, train=train)
    h = blocks.AttentionBlock(num_heads=self.num_heads, norm="group", num_groups=self.num_groups,
                              norm_eps=1e-6, kernel_init=init, zero_init_out=True,
                              dtype=self.dtype, name="mid_attn")(h)
    self.sow("intermediates", "bottleneck", h)
    h = res(h.shape[-1], "mid_block_1")(h, temb, train=train)
    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = res(self.ch * self.ch_mult[level], f"up_{level}_block_{i}")(h, temb, train=train)
        h = attn(h, f"up_{level}_attn_{i}")
      if level != 0:
        h = blocks.Upsample("nearest_conv", kernel_init=init, dtype=self.dtype,
                            name=f"up_{level}_upsample")(h)
    h = nn.swish(nn.GroupNorm(self.num_groups, epsilon=1e-6, dtype=self.dtype,
                              name="norm_out")(h))
    h = blocks.conv3x3(self.out_ch, kernel_init=blocks.ddpm_init(0.0), dtype=self.dtype,
                       padding="SAME", name="conv_out")(h)
    return h.astype(jnp.float32)


class SimpleUNet(nn.Module):
  """The course notebook's CIFAR-10 SimpleUNet (torch_peer.SimpleUNet).

  init conv (ch) -> [post-activation ResBlock (ch * m) -> stride-2 conv] per
  level -> ResBlock, single-head attention, ResBlock -> [ConvTranspose(4, 2, 1)
  -> concat skip -> ResBlock] per level -> GN -> ReLU -> conv. ReLU,
  GroupNorm(8), time MLP time_embed_dim -> temb_dim -> temb_dim.

  Attributes:
    out_ch: output channels.
    ch: base width (64).
    ch_mult: per-level width multipliers ((2, 4): 128 at full, 256 at half
      resolution); len(ch_mult) stride-2 downsamplings.
    time_embed_dim: sinusoid size (128).
    temb_dim: time MLP width (512).
    num_groups: GroupNorm groups (8).
    dropout: dropout rate in the residual blocks (0.1).
    num_classes, null_label: class conditioning (added to the time MLP output).
    dtype: compute dtype.
  """
  out_ch: int = 3
  ch: int = 64
  ch_mult: Sequence[int] = (2, 4)
  time_embed_dim: int = 128
  temb_dim: int = 512
  num_groups: int = 8
  dropout: float = 0.1
  num_classes: int = 0
  null_label: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    init = blocks.torch_init()
    temb = blocks.TimeEmbedding(self.time_embed_dim, self.temb_dim, act=nn.relu, freq_shift=0,
                                kernel_init=init, dtype=self.dtype, name="time_mlp")(t)
    if self.num_classes:
      temb = temb + blocks.LabelEmbedding(self.num_classes, self.temb_dim, self.null_label,
                                          dtype=self.dtype, name="label_emb")(label, x.shape[0])

    def res(features, name):
      return blocks.ResBlock(features, num_groups=self.num_groups, act=nn.relu,
                             dropout=self.dropout, preactivation=False, norm_eps=1e-5,
                             kernel_init=init, dtype=self.dtype, name=name)

    h = blocks.conv3x3(self.ch, kernel_init=init, dtype=self.dtype,
                       name="init_conv")(x.astype(self.dtype))
    skips = []
    for i, mult in enumerate(self.ch_mult):
      h = res(self.ch * mult, f"down{i + 1}")(h, temb, train=train)
      skips.append(h)
      h = blocks.Downsample("conv", padding=((1, 1), (1, 1)), kernel_init=init,
                            dtype=self.dtype, name=f"downsample{i + 1}")(h)
    h = res(h.shape[-1], "mid1")(h, temb, train=train)
    h = blocks.AttentionBlock(num_heads=1, norm="group", num_groups=self.num_groups,
                              norm_eps=1e-5, kernel_init=init, dtype=self.dtype,
                              name="mid_attn")(h)
    self.sow("intermediates", "bottleneck", h)
    h = res(h.shape[-1], "mid2")(h, temb, train=train)
    widths = [self.ch] + [self.ch * m for m in self.ch_mult[:-1]]
    for j, (skip, features) in enumerate(zip(reversed(skips), reversed(widths))):
      h = blocks.Upsample("conv_transpose", kernel_init=init, dtype=self.dtype,
                          name=f"upsample{j + 1}")(h)
      h = jnp.concatenate([h, skip], axis=-1)
      h = res(features, f"up{j + 1}")(h, temb, train=train)
    h = nn.relu(nn.GroupNorm(self.num_groups, epsilon=1e-5, dtype=self.dtype,
                             name="final_norm")(h))
    h = blocks.conv3x3(self.out_ch, kernel_init=init, dtype=self.dtype, name="final_conv")(h)
    return h.astype(jnp.float32)


class _CourseDown(nn.Module):
  """maxpool -> DoubleConv(residual) -> DoubleConv (the course's `Down`)."""
  features: int
  act: Any = blocks.gelu_exact
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = blocks.Downsample("maxpool")(x)
    x = blocks.DoubleConv(x.shape[-1], residual=True, act=self.act, dtype=self.dtype,
                          name="conv_res")(x)
    return blocks.DoubleConv(self.features, act=self.act, dtype=self.dtype, name="conv")(x)


class _CourseUp(nn.Module):
  """bilinear x2 -> pad to the skip -> concat [skip, x] -> DoubleConv(residual)
  -> DoubleConv(mid = C / 2) (the course's `Up`)."""
  features: int
  act: Any = blocks.gelu_exact
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    x = blocks.pad_or_crop_to(blocks.Upsample("bilinear")(x), skip)
    x = jnp.concatenate([skip, x], axis=-1)
    c = x.shape[-1]
    x = blocks.DoubleConv(c, residual=True, act=self.act, dtype=self.dtype, name="conv_res")(x)
    return blocks.DoubleConv(self.features, mid_features=c // 2, act=self.act, dtype=self.dtype,
                             name="conv")(x)


class UNetSmall(nn.Module):
  """The course MNIST UNet (torch_peer.UNet / UNetConditional), width w.

  DoubleConv blocks (GroupNorm(1), GELU), max-pool down, bilinear up, 4-head
  transformer self-attention at H/4, H/8 and H/4 (8x8, 4x4, 8x8 for 32x32),
  and the raw sinusoidal encoding of t (no MLP, course frequencies) added to
  the features after every level. With num_classes > 0 (UNetConditional) a
  label embedding of size 4 w, sliced to the channel count, is added at the
  same places.

  Attributes:
    out_ch: output channels.
    width: base width w (16).
    num_heads: attention heads (4).
    num_classes, null_label: class conditioning.
    gelu_approximate: tanh GELU instead of the exact one (faster on CPU;
      changes the model slightly, so off by default).
    dtype: compute dtype.
  """
  out_ch: int = 1
  width: int = 16
  num_heads: int = 4
  num_classes: int = 0
  null_label: bool = False
  gelu_approximate: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None, *,
               train: bool) -> jax.Array:
    del train  # no dropout
    w = self.width
    act = nn.gelu if self.gelu_approximate else blocks.gelu_exact
    label_emb = None
    if self.num_classes:
      label_emb = blocks.LabelEmbedding(self.num_classes, 4 * w, self.null_label,
                                        dtype=self.dtype, name="label_emb")(label, x.shape[0])

    def cond(h):
      c = h.shape[-1]
      enc = sinusoidal_embedding(t, c).astype(self.dtype)
      if label_emb is not None:
        enc = enc + label_emb[:, :c]
      return h + enc[:, None, None, :]

    def attn(h, name):
      return blocks.AttentionBlock(num_heads=self.num_heads, norm="layer", norm_eps=1e-5,
                                   mlp=True, kernel_init=blocks.torch_init(), dtype=self.dtype,
                                   name=name)(h)

    x1 = blocks.DoubleConv(w, act=act, dtype=self.dtype, name="inc")(x.astype(self.dtype))
    x2 = cond(_CourseDown(2 * w, act, self.dtype, name="down1")(x1))
    x3 = attn(cond(_CourseDown(4 * w, act, self.dtype, name="down2")(x2)), "sa1")
    x4 = attn(cond(_CourseDown(4 * w, act, self.dtype, name="down3")(x3)), "sa2")
    self.sow("intermediates", "bottleneck", x4)
    h = attn(cond(_CourseUp(2 * w, act, self.dtype, name="up1")(x4, x3)), "sa3")
    h = cond(_CourseUp(w, act, self.dtype, name="up2")(h, x2))
    h = cond(_CourseUp(w, act, self.dtype, name="up3")(h, x1))
    h = nn.Conv(self.out_ch, (1, 1), kernel_init=blocks.torch_init(), dtype=self.dtype,
                name="outc")(h)
    return h.astype(jnp.float32)


class Denoiser(nn.Module):
  """The one-step denoiser of the course: predicts x0 from 0.5 x0 + 0.5 eps.

  Encoder levels of widths ch * ch_mult (16/32/64) made of post-activation
  residual blocks without time input, each followed by a stride-2 conv; a
  dense bottleneck on the flattened lowest-resolution features (4 x 4 x 64 for
  32 x 32 inputs); a decoder of nearest-neighbour upsampling + conv, skip
  concatenations and residual blocks; no time input at all.

  Attributes:
    out_ch: output channels.
    ch: base width (16).
    ch_mult: per-level multipliers ((1, 2, 4)).
    bottleneck_dim: width of the dense bottleneck.
    num_groups: GroupNorm groups.
    dropout: dropout rate in the residual blocks.
    num_classes, null_label: class conditioning (added to the bottleneck).
    dtype: compute dtype.
  """
  out_ch: int = 1
  ch: int = 16
  ch_mult: Sequence[int] = (1, 2, 4)
  bottleneck_dim: int = 256
  num_groups: int = 8
  dropout: float = 0.0
  num_classes: int = 0
  null_label: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array | None = None,
               label: jax.Array | None = None, *, train: bool) -> jax.Array:
    del t  # one step, one noise level: no time input
    init = blocks.torch_init()

    def res(features, name):
      return blocks.ResBlock(features, num_groups=self.num_groups, act=nn.relu,
                             dropout=self.dropout, preactivation=False, norm_eps=1e-5,
                             kernel_init=init, dtype=self.dtype, name=name)

    h = blocks.conv3x3(self.ch, kernel_init=init, dtype=self.dtype,
                       name="init_conv")(x.astype(self.dtype))
    skips = []
    for i, mult in enumerate(self.ch_mult):
      h = res(self.ch * mult, f"down{i + 1}")(h, train=train)
      skips.append(h)
      h = blocks.Downsample("conv", padding="SAME", kernel_init=init, dtype=self.dtype,
                            name=f"downsample{i + 1}")(h)
    shape = h.shape
    z = nn.relu(nn.Dense(self.bottleneck_dim, kernel_init=init, dtype=self.dtype,
                         name="bottleneck_in")(h.reshape(shape[0], -1)))
    if self.num_classes:
      z = z + blocks.LabelEmbedding(self.num_classes, self.bottleneck_dim, self.null_label,
                                    dtype=self.dtype, name="label_emb")(label, shape[0])
    self.sow("intermediates", "bottleneck", z)
    h = nn.relu(nn.Dense(shape[1] * shape[2] * shape[3], kernel_init=init, dtype=self.dtype,
                         name="bottleneck_out")(z)).reshape(shape)
    widths = [self.ch] + [self.ch * m for m in self.ch_mult[:-1]]
    for j, (skip, features) in enumerate(zip(reversed(skips), reversed(widths))):
      h = blocks.Upsample("nearest_conv", features=skip.shape[-1], kernel_init=init,
                          dtype=self.dtype, name=f"upsample{j + 1}")(h)
      h = jnp.concatenate([blocks.pad_or_crop_to(h, skip), skip], axis=-1)
      h = res(features, f"up{j + 1}")(h, train=train)
    h = nn.relu(nn.GroupNorm(self.num_groups, epsilon=1e-5, dtype=self.dtype,
                             name="final_norm")(h))
    h = blocks.conv3x3(self.out_ch, kernel_init=init, dtype=self.dtype, name="final_conv")(h)
    return h.astype(jnp.float32)


_NETWORKS: dict[str, type[nn.Module]] = {
    "unet_ho": UNetHo,
    "simple_unet": SimpleUNet,
    "unet_small": UNetSmall,
    "denoiser": Denoiser,
}

# Networks that take the timestep (all but the one-step denoiser).
TIME_CONDITIONED = ("unet_ho", "simple_unet", "unet_small")


def names() -> tuple[str, ...]:
  return tuple(sorted(_NETWORKS))


def get(name: str) -> type[nn.Module]:
  """The network class registered under `name`."""
  if name not in _NETWORKS:
    raise KeyError(f"unknown network {name!r}; allowed: {names()}")
  return _NETWORKS[name]
