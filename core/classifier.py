"""The classifier network: the domain feature network of the evaluation.

A small CNN trained on the real images of a dataset (the `classifier` task,
core/classifier_task.py). Its penultimate activations are the features of
FD-fmnist and its predictions judge the class of class-conditional samples.
A plain `flax.linen` module: no I/O, no config.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class ClassifierCNN(nn.Module):
  """conv-GN-swish blocks at full, 1/2 and 1/4 resolution, mean pool, dense.

  Attributes:
    num_classes: outputs of the last layer.
    width: channels of the first block (then 2x, 4x).
    feature_dim: size of the penultimate features.
    dropout: dropout rate before the last layer.
  """
  num_classes: int = 10
  width: int = 32
  feature_dim: int = 128
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: [B, H, W, C] in [-1, 1] -> (features [B, feature_dim], logits [B, num_classes])."""
    h = x
    for i, mult in enumerate((1, 2, 4)):
      ch = self.width * mult
      strides = 1 if i == 0 else 2
      h = nn.Conv(ch, (3, 3), strides=strides, padding="SAME")(h)
      h = nn.swish(nn.GroupNorm(num_groups=8)(h))
      h = nn.Conv(ch, (3, 3), padding="SAME")(h)
      h = nn.swish(nn.GroupNorm(num_groups=8)(h))
    h = jnp.mean(h, axis=(1, 2))
    features = nn.swish(nn.Dense(self.feature_dim)(h))
    logits = nn.Dense(self.num_classes)(
        nn.Dropout(self.dropout, deterministic=not train)(features))
    return features, logits
