"""The `classifier` task: the domain feature networks used for evaluation.

A small network trained on the real images of a dataset. Its penultimate
activations are the features of FD-fmnist (the Fréchet distance in its
feature space) and its predictions judge the class of class-conditional
samples. It generates nothing (`sample is None`).

Two networks, by `model.name`: "classifier_cnn" (`core.classifier`, the
feature network of FD-fmnist) and "mixer" (`core.mixer_classifier`, the
independent check in launch/eval/evaluate.py). `data.random_shift` > 0
translates each training image by up to that many pixels (padding with
black), drawn from the step's key. The task itself is
`core.classifier_task.ClassifierTask`; this module only reads configs.
"""
from __future__ import annotations

from typing import Callable

from core import classifier_task
from core.classifier import ClassifierCNN
from core.mixer_classifier import MixerClassifier
from launch import data as data_lib
from launch.config_errors import ConfigError, check_bool, check_choice, check_int, check_range
from launch.tasks import common


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


def build(config) -> classifier_task.ClassifierTask:
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
  return classifier_task.ClassifierTask(net=net, image_shape=info.image_shape, num_classes=info.num_classes,
                        tx=tx, ema_decay=config.optim.ema_decay,
                        ema_warmup=config.optim.ema_warmup,
                        use_ema=check_bool("sample.use_ema", config.sample.use_ema),
                        max_shift=max_shift)
