"""The `classifier` task: the domain feature network used for evaluation.

A small CNN trained on the real images of a dataset. Its penultimate
activations are the features of FD-fmnist (the Fréchet distance in its
feature space) and its predictions judge the class of class-conditional
samples. It generates nothing (`sample is None`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from core import train_state as ts
from core.classifier import ClassifierCNN
from launch import data as data_lib
from launch.tasks import common
from launch.config_errors import check_bool, check_choice, check_range


@dataclasses.dataclass(frozen=True)
class ClassifierTask:
  """Cross-entropy training of `ClassifierCNN` (task protocol: launch/tasks)."""
  net: ClassifierCNN
  image_shape: tuple[int, int, int]
  num_classes: int
  tx: Any
  ema_decay: float
  ema_warmup: bool
  use_ema: bool = True
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
    """The weights to predict with: EMA ones if `use_ema` (config.sample.use_ema)."""
    return state.ema_params if self.use_ema else state.params

  def sample_options(self, config=None) -> dict:
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
                        ema_warmup=config.optim.ema_warmup,
                        use_ema=check_bool("sample.use_ema", config.sample.use_ema))
