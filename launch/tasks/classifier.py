"""The `classifier` task: the domain feature network used for evaluation.

A small CNN trained on the real images of a dataset. Its penultimate
activations are the features of FD-fmnist (the Fréchet distance in its
feature space) and its predictions judge the class of class-conditional
samples. It generates nothing (`sample is None`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core import train_state as ts
from launch import data as data_lib
from launch.tasks import common
from launch.config_errors import check_choice, check_range


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


@dataclasses.dataclass(frozen=True)
class ClassifierTask:
  """Cross-entropy training of `ClassifierCNN` (task protocol: launch/tasks)."""
  net: ClassifierCNN
  image_shape: tuple[int, int, int]
  num_classes: int
  tx: Any
  ema_decay: float
  ema_warmup: bool
  sample = None  # the classifier generates nothing

  def init_state(self, key, batch) -> ts.TrainState:
    params = self.net.init({"params": key}, jnp.asarray(batch["image"]), train=False)["params"]
    return ts.TrainState.create(params, self.tx)

  def apply(self, params, images):
    """images [B, H, W, C] in [-1, 1] -> (features [B, D], logits [B, K])."""
    return self.net.apply({"params": params}, images, train=False)

  def train_step(self, state: ts.TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
      _, logits = self.net.apply({"params": params}, batch["image"], train=True,
                                 rngs={"dropout": key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads, self.tx, self.ema_decay, self.ema_warmup)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": loss, "accuracy": accuracy.astype(jnp.float32),
                   "grad_norm": optax.tree.norm(grads)}

  def sample_params(self, state: ts.TrainState):
    return state.ema_params

  def sample_options(self, config) -> dict:
    del config
    return {}


def build(config) -> ClassifierTask:
  check_choice("task", config.task, ("classifier",))
  check_choice("model.name", config.model.name, ("classifier_cnn",))
  check_range("model.ch", config.model.ch, 8)
  check_range("model.dropout", config.model.dropout, 0.0, 1.0, hi_open=True)
  tx = common.optimizer(config)
  info = data_lib.get_info(config.data)
  net = ClassifierCNN(num_classes=info.num_classes, width=config.model.ch,
                      dropout=config.model.dropout)
  return ClassifierTask(net=net, image_shape=info.image_shape, num_classes=info.num_classes,
                        tx=tx, ema_decay=config.optim.ema_decay,
                        ema_warmup=config.optim.ema_warmup)
