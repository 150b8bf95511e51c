"""The `classifier` task: the domain feature networks used for evaluation.

A small network trained on the real images of a dataset. Its penultimate
activations are the features of FD-fmnist (the Fréchet distance in its
feature space) and its predictions judge the class of class-conditional
samples. It generates nothing (`sample is None`).

Two networks, by `model.name`: "classifier_cnn" (`core.classifier`, the
feature network of FD-fmnist) and "mixer" (`core.mixer_classifier`, the
independent check in launch/eval/evaluate.py). `data.random_shift` > 0
translates each training image by up to that many pixels (padding with
black), drawn from the step's key.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from core import train_state as ts
from core.classifier import ClassifierCNN
from core.mixer_classifier import MixerClassifier
from launch import data as data_lib
from launch.tasks import common
from launch.config_errors import ConfigError, check_bool, check_choice, check_int, check_range


def random_shift(images, key, max_shift: int):
  """Translates each image by its own integer offset in [-max_shift, max_shift]^2.

  The vacated border is black (-1), as Fashion-MNIST's background; no flips
  (a left shoe is not a right one in this dataset's framing).

  Args:
    images: [B, H, W, C] in [-1, 1].
    key: PRNG key of the offsets.
    max_shift: largest offset in pixels (0 = identity).

  Returns:
    [B, H, W, C], each image cut from its padded copy at its offset.
  """
  if max_shift == 0:
    return images
  b, h, w, c = images.shape
  m = max_shift
  padded = jnp.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  offsets = jax.random.randint(key, (b, 2), 0, 2 * m + 1)
  cut = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(cut)(padded, offsets)


_SHIFT_STREAM = 0x534846   # fold_in tag of the shift offsets ("SHF")


# model.name -> the network's module, built from the validated config.
def _classifier_cnn(config, num_classes: int):
  check_range("model.ch", config.model.ch, 8)
  check_range("model.dropout", config.model.dropout, 0.0, 1.0, hi_open=True)
  return ClassifierCNN(num_classes=num_classes, width=config.model.ch,
                       dropout=config.model.dropout)


def _mixer(config, num_classes: int):
  m = config.model
  return MixerClassifier(num_classes=num_classes, width=check_int("model.ch", m.ch, 8),
                         depth=check_int("model.depth", m.depth, 1),
                         patch_size=check_int("model.patch_size", m.patch_size, 1),
                         token_mlp_dim=check_int("model.token_mlp_dim", m.token_mlp_dim, 1),
                         channel_mlp_dim=check_int("model.channel_mlp_dim", m.channel_mlp_dim, 1))


NETWORKS: dict[str, Callable] = {"classifier_cnn": _classifier_cnn, "mixer": _mixer}


@dataclasses.dataclass(frozen=True)
class ClassifierTask:
  """Cross-entropy training of a classifier network (task protocol: launch/tasks)."""
  net: Any                    # ClassifierCNN | MixerClassifier
  image_shape: tuple[int, int, int]
  num_classes: int
  tx: Any
  ema_decay: float
  ema_warmup: bool
  use_ema: bool = True
  max_shift: int = 0          # data.random_shift
  sample = None  # the classifier generates nothing

  def init_state(self, key, batch) -> ts.TrainState:
    params = self.net.init({"params": key}, jnp.asarray(batch["image"]), train=False)["params"]
    return ts.TrainState.create(params, self.tx)

  def apply(self, params, images):
    """images [B, H, W, C] in [-1, 1] -> (features [B, D], logits [B, K])."""
    return self.net.apply({"params": params}, images, train=False)

  def train_step(self, state: ts.TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    # Its own stream: the dropout key stays what it was before shifts existed.
    images = random_shift(batch["image"], jax.random.fold_in(key, _SHIFT_STREAM),
                          self.max_shift)

    def loss_fn(params):
      _, logits = self.net.apply({"params": params}, images, train=True,
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
  check_choice("model.name", config.model.name, tuple(NETWORKS))
  max_shift = check_int("data.random_shift", config.data.random_shift, 0)
  tx = common.optimizer(config)
  info = data_lib.get_info(config.data)
  net = NETWORKS[config.model.name](config, info.num_classes)
  if config.model.name == "mixer" and any(s % net.patch_size for s in info.image_shape[:2]):
    raise ConfigError("model.patch_size", net.patch_size,
                      reason=f"must divide the {info.image_shape[0]}x{info.image_shape[1]} "
                      f"images (data.pad_to_32={config.data.pad_to_32})")
  check_range("data.random_shift", max_shift, 0, min(info.image_shape[:2]) - 1)
  return ClassifierTask(net=net, image_shape=info.image_shape, num_classes=info.num_classes,
                        tx=tx, ema_decay=config.optim.ema_decay,
                        ema_warmup=config.optim.ema_warmup,
                        use_ema=check_bool("sample.use_ema", config.sample.use_ema),
                        max_shift=max_shift)
