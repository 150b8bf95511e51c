"""Is the feature network good enough for a Fréchet distance in its features to mean anything?

FD-fmnist is measured in the penultimate features of a trained classifier.
A weak classifier (a smoke run, a few hundred steps) maps very different
images to nearby features, and its FD can come out below the real-data floor
(`fd_train_vs_test`) for samples that look nothing like the data. So before
scoring, `--mode evaluate` measures the classifier's accuracy on its test
split and refuses to score below `config.eval.min_classifier_accuracy`
(default `DEFAULT_MIN_ACCURACY`; the trained feature network of
configs/classifier_fashion_mnist.py has 90.6%). Setting the key lower scores
anyway, with a warning and the accuracy in every record
(`feature_network_accuracy`).

The accuracy is cached next to the reference statistics, in
CLASSIFIER_WORKDIR/fd_reference/accuracy_<dataset>_<split>_step<step>.json.
"""
from __future__ import annotations

import json
import os
import types

import jax
import numpy as np
from absl import logging
from etils import epath

from launch import data as data_lib

DEFAULT_MIN_ACCURACY = 0.85
CLASSIFIER_COMMAND = ("python -m launch --config configs/classifier_fashion_mnist.py "
                      "--workdir runs/classifier_fashion_mnist")
_BATCH = 500


class WeakFeatureNetworkError(ValueError):
  """The classifier's test accuracy is below config.eval.min_classifier_accuracy."""


def _classifier_data(classifier, data_config) -> types.SimpleNamespace:
  """The classifier's dataset, read from where `data_config` says data lives."""
  own = classifier.config.data
  base = data_config if data_config.name == classifier.dataset else own
  d = base.to_dict() if hasattr(base, "to_dict") else dict(vars(base))
  d.update(name=classifier.dataset, num_examples=-1, pad_to_32=bool(own.pad_to_32))
  return types.SimpleNamespace(**d)


def measure_accuracy(classifier, data_config, split: str = "test") -> float:
  """The classifier's accuracy on a whole split of its dataset (cached per checkpoint).

  Args:
    classifier: a `launch.eval.scores.Classifier`.
    data_config: a `data` section saying where the data is (its name may be
      another dataset: the classifier's own section is used then).
    split: the split to measure on.

  Returns:
    The fraction of the split classified correctly.
  """
  data = _classifier_data(classifier, data_config)
  path = (epath.Path(classifier.workdir) / "fd_reference"
          / f"accuracy_{data.name}_{split}_step{classifier.step}.json")
  if path.exists():
    return float(json.loads(path.read_text())["accuracy"])
  correct = total = 0
  for batch in data_lib.eval_batches(data, split, _BATCH):
    _, logits = classifier.features(batch["image"], batch_size=_BATCH)
    correct += int(np.sum(logits.argmax(-1) == batch["label"]))
    total += len(batch["label"])
  accuracy = correct / max(total, 1)
  if jax.process_index() == 0:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
      tmp.write_text(json.dumps({"accuracy": accuracy, "num_examples": total}))
      os.replace(str(tmp), str(path))
    except OSError as e:  # a read-only feature-network directory: measure again next time
      logging.warning("could not cache the classifier's accuracy at %s: %s", path, e)
  return accuracy


def check(classifier, data_config, min_accuracy: float, split: str = "test", *,
          key: str = "eval.min_classifier_accuracy", command: str = CLASSIFIER_COMMAND) -> float:
  """The classifier's test accuracy; raises when it is below `min_accuracy`.

  Args:
    classifier: a `launch.eval.scores.Classifier`.
    data_config: a `data` section saying where the data is.
    min_accuracy: the bar.
    split: the split to measure on.
    key: the config key that sets the bar (named in the error).
    command: how to train this network (named in the error).

  Raises:
    WeakFeatureNetworkError: one line naming the accuracy, the bar, the key
      that sets it and how to train a good classifier.
  """
  accuracy = measure_accuracy(classifier, data_config, split)
  where = f"the feature network in {classifier.workdir} (step {classifier.step})"
  if accuracy < min_accuracy:
    raise WeakFeatureNetworkError(
        f"{where} classifies {accuracy:.1%} of {classifier.dataset} {split} correctly, below "
        f"config.{key}={min_accuracy:g}: a Fréchet distance in its "
        f"features means little (it can fall below the real-data floor). Train it fully "
        f"({command}), or score anyway with --config.{key}=0")
  if accuracy < DEFAULT_MIN_ACCURACY:
    logging.warning("%s classifies only %.1f%% of %s %s correctly (below %g): its FD scores "
                    "are not comparable with those of a trained feature network.", where,
                    100 * accuracy, classifier.dataset, split, DEFAULT_MIN_ACCURACY)
  return accuracy
