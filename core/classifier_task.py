"""The classifier task: cross-entropy training of the evaluation's feature networks.

The task protocol (`init_state`, `train_step`, no `sample`) over a
`core.classifier.ClassifierCNN` or `core.mixer_classifier.MixerClassifier`:
the networks whose penultimate features give FD-fmnist and whose
predictions judge the class of class-conditional samples. Built from a
config by `launch.tasks.classifier`. Training images may be translated by a
random integer offset (`random_shift`), drawn from the step's key.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from core import train_state as ts


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


@dataclasses.dataclass(frozen=True)
class ClassifierTask:
  """Cross-entropy training of a classifier network (the task protocol of ddpm.task and ebm.task)."""
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
