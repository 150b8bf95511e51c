"""An MLP-Mixer classifier: the independent feature network of the evaluation.

FD-fmnist is measured in the features of `core.classifier.ClassifierCNN`; a
score that only one network gives can be an artefact of that network (its
blind spots, or a generator tuned against it). This network is built
differently on every axis that shapes what features see, so that a real
improvement shows in both and an artefact of one shows in one:

                     ClassifierCNN                 MixerClassifier
  family             convolutional pyramid         MLP-Mixer (Tolstikhin et al.
                                                   2021): no convolution after
                                                   the patch embedding
  receptive field    grows 3x3 at a time           global from the first block
                                                   (token mixing)
  resolution         28, 14, 7 (strided convs)     one grid of patch tokens
  depth              6 convolutions                `depth` pairs of MLPs, residual
  normalisation      GroupNorm(8)                  LayerNorm (pre-norm)
  activation         swish                         GELU
  features           Dense+swish of the mean pool  LayerNorm'd mean of the tokens
  input              as trained (28x28 or 32x32)   28x28 only (32x32 centre-cropped)

A plain `flax.linen` module: no I/O, no config.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MixerBlock(nn.Module):
  """One Mixer layer: an MLP across tokens, then an MLP across channels (pre-norm, residual).

  Attributes:
    token_mlp_dim: hidden width of the token-mixing MLP.
    channel_mlp_dim: hidden width of the channel-mixing MLP.
  """
  token_mlp_dim: int
  channel_mlp_dim: int

  @nn.compact
  def __call__(self, h):
    """h: [B, T, D] -> [B, T, D]."""
    num_tokens, dim = h.shape[1:]
    y = nn.LayerNorm()(h).swapaxes(1, 2)                  # [B, D, T]: mix along tokens
    y = nn.Dense(num_tokens)(nn.gelu(nn.Dense(self.token_mlp_dim)(y)))
    h = h + y.swapaxes(1, 2)
    y = nn.LayerNorm()(h)
    return h + nn.Dense(dim)(nn.gelu(nn.Dense(self.channel_mlp_dim)(y)))


class MixerClassifier(nn.Module):
  """Patch embedding, `depth` Mixer blocks, LayerNorm, mean over tokens, dense.

  Attributes:
    num_classes: outputs of the last layer.
    width: channels D of every token (also the feature size).
    depth: number of Mixer blocks.
    patch_size: side of the square, non-overlapping patches (must divide
      the image side: 28 = 4 x 7).
    token_mlp_dim: hidden width of the token-mixing MLPs.
    channel_mlp_dim: hidden width of the channel-mixing MLPs.
  """
  num_classes: int = 10
  width: int = 128
  depth: int = 4
  patch_size: int = 7
  token_mlp_dim: int = 32
  channel_mlp_dim: int = 256

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: [B, H, W, C] in [-1, 1] -> (features [B, width], logits [B, num_classes])."""
    del train  # no dropout: the augmentation (random shifts) regularises
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"images of {h}x{w} do not split into {self.patch_size}x"
                       f"{self.patch_size} patches")
    p = self.patch_size
    tokens = nn.Conv(self.width, (p, p), strides=p, padding="VALID")(x)   # [B, H/p, W/p, D]
    tokens = tokens.reshape(x.shape[0], -1, self.width)                   # [B, T, D]
    for _ in range(self.depth):
      tokens = MixerBlock(self.token_mlp_dim, self.channel_mlp_dim)(tokens)
    features = jnp.mean(nn.LayerNorm()(tokens), axis=1)
    return features, nn.Dense(self.num_classes)(features)
