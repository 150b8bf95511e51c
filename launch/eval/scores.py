"""The scores of images: what `--mode evaluate` measures, as functions of arrays.

A feature network (`Classifier`: the project's classifier of
configs/classifier_fashion_mnist.py, or the independent MLP-Mixer of its
`:independent` variant) loaded from its workdir; `classifier_scores` (FD in
its penultimate features against a real split, cached in the classifier's
workdir; the class histogram's entropy; the class accuracy of labelled
samples), `independent_scores` (the same in the independent network),
`nearest_train` (the nearest-training-image distance), `real_data_floor`
(the FD of real images against the test split) and `inception_scores` (FID
and IS for CIFAR-10). Each returns evaluation records ({"metric", "value",
and the fields that produced it}); launch/eval/evaluate.py runs them on a
workdir's samples or on an .npz. docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from core import frechet
from core import images as image_lib
from core import inception as inception_net
from core import metrics
from core import nearest
from launch import data as data_lib
from launch import figures
from launch import workdir as workdir_lib

CLASSIFIER_COMMAND = ("python -m launch --config configs/classifier_fashion_mnist.py "
                      "--workdir runs/classifier_fashion_mnist")
INDEPENDENT_COMMAND = ("python -m launch --config configs/classifier_fashion_mnist.py:independent "
                       "--workdir runs/classifier_independent")
# Records of the independent network: classifier_scores' metric -> its name here.
INDEPENDENT_METRICS = {"fd_fmnist": "fd_independent", "class_histogram": "entropy_independent",
                       "class_accuracy": "class_accuracy_independent"}
FID_REFERENCE_SPLIT = "train"   # CIFAR-10: the DDPM paper's FID is against the train set
_FEATURE_BATCH = 500


class MissingClassifierError(FileNotFoundError):
  """`eval.classifier_workdir` is unset or holds no trained classifier."""


def missing_classifier_message(workdir: str | None, key: str = "eval.classifier_workdir") -> str:
  if key == "eval.independent_workdir":
    return (f"config.eval.independent_workdir={str(workdir)!r} holds no trained classifier. "
            f"Train the independent network once with\n  {INDEPENDENT_COMMAND}\nthen pass "
            f"--config.eval.independent_workdir=runs/classifier_independent (or set it to '' "
            f"to skip the independent check)")
  if not workdir:
    where = "config.eval.classifier_workdir is not set"
  else:
    where = f"config.eval.classifier_workdir={str(workdir)!r} holds no trained classifier"
  return (f"FD-fmnist and the class metrics need the trained Fashion-MNIST classifier, but "
          f"{where}. Train it once (a few minutes on CPU) with\n  {CLASSIFIER_COMMAND}\n"
          f"then pass --config.eval.classifier_workdir=runs/classifier_fashion_mnist")


def data_section(data_config, **changes) -> types.SimpleNamespace:
  """An unlocked copy of a `data` section (anything `launch.data` accepts)."""
  d = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(vars(data_config))
  d.update(changes)
  return types.SimpleNamespace(**d)


# ----------------------------------------------------------------------------
# The classifier as a feature network.


@dataclasses.dataclass
class Classifier:
  """A trained classifier workdir used as feature network.

  Attributes:
    workdir: its workdir (the reference statistics are cached there).
    config: its config.
    task: its `ClassifierTask`.
    params: the weights used (EMA when its sample.use_ema).
    step: the checkpoint's step.
  """
  workdir: str
  config: Any
  task: Any
  params: Any
  step: int

  @property
  def dataset(self) -> str:
    return self.config.data.name

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.task.image_shape)

  @functools.cached_property
  def _apply(self):
    return jax.jit(self.task.apply)

  def features(self, images, batch_size: int = _FEATURE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and logits of images in [-1, 1].

    Args:
      images: float [N, H, W, C] in [-1, 1]; larger than the classifier's
        input (e.g. 32x32 padded MNIST) they are centre-cropped.
      batch_size: images per forward pass (every pass has this shape).

    Returns:
      (features [N, D], logits [N, K]) float32 NumPy arrays.
    """
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != self.image_shape[-1]:
      raise ValueError(f"images must be [N, H, W, {self.image_shape[-1]}] for the classifier "
                       f"in {self.workdir}, got shape {x.shape}")
    return metrics.batched_apply(self._apply, self.params,
                                 metrics.center_crop(x, self.image_shape[:2]), batch_size)


def classifier_from_state(config, workdir: str, task, state) -> Classifier:
  """The Classifier of a state restored on one device (`task.sample_params` picks the weights)."""
  return Classifier(str(workdir), config, task, task.sample_params(state),
                    int(jax.device_get(state.step)))


def load_classifier(workdir: str | os.PathLike | None, key: str = "eval.classifier_workdir"
                    ) -> Classifier:
  """The classifier trained in `workdir` (configs/classifier_fashion_mnist.py).

  Args:
    workdir: its workdir.
    key: the config key that named it ("eval.classifier_workdir" or
      "eval.independent_workdir"), for the messages.

  Raises:
    MissingClassifierError: `workdir` is empty or holds no checkpoint; the
      message says how to train the classifier.
  """
  if not workdir or not (epath.Path(workdir) / "checkpoints").exists():
    raise MissingClassifierError(missing_classifier_message(workdir and str(workdir), key))
  config = workdir_lib.load_config(workdir)
  if config.task != "classifier":
    command = INDEPENDENT_COMMAND if key == "eval.independent_workdir" else CLASSIFIER_COMMAND
    raise ValueError(f"config.{key}={str(workdir)!r} holds a {config.task!r} run, not a "
                     f"classifier; train one with\n  {command}")
  run, state = workdir_lib.load_trained(str(workdir), config, device=jax.local_devices()[0])
  return classifier_from_state(config, str(workdir), run.task, state)


def split_images(data_config, split: str, limit: int | None = None) -> np.ndarray:
  """The first `limit` (all: None) images of a split, float [N, H, W, C] in [-1, 1]."""
  parts, n = [], 0
  for batch in data_lib.eval_batches(data_config, split, _FEATURE_BATCH):
    parts.append(batch["image"])
    n += len(batch["image"])
    if limit is not None and n >= limit:
      break
  x = np.concatenate(parts)
  return x if limit is None else x[:limit]


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Saves reference statistics as an `.npz` with arrays `mu` and `sigma`.

  The same layout as pytorch-fid's precomputed statistics files, so either
  tool can read the other's.
  """
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Loads (mu [D], sigma [D, D]) saved by `save_stats` or by pytorch-fid."""
  with np.load(os.fspath(path)) as data:
    missing = {"mu", "sigma"} - set(data.files)
    if missing:
      raise KeyError(f"{os.fspath(path)} has no {sorted(missing)} (has {sorted(data.files)})")
    return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)


def _save_stats_atomic(path: epath.Path, mu: np.ndarray, sigma: np.ndarray) -> None:
  if jax.process_index() != 0:
    return
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    save_stats(str(tmp), mu, sigma)
    os.replace(str(tmp), str(path))
  except OSError as e:  # a read-only feature-network directory: recompute next time
    logging.warning("could not cache reference statistics at %s: %s", path, e)


def reference_stats(classifier: Classifier, data_config, split: str
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """Feature mean and covariance of a whole real split, cached in the classifier workdir.

  The split is the dataset `data_config.name` names, prepared as the
  classifier's training data (its data.pad_to_32), all examples (no
  data.num_examples limit). The cache,
  CLASSIFIER_WORKDIR/fd_reference/<dataset>_<split>_n<N>_step<step>.npz, is
  keyed by dataset, split, size and classifier checkpoint.

  Returns:
    (mu [D], sigma [D, D], N).
  """
  data = data_section(data_config, num_examples=-1, pad_to_32=bool(classifier.config.data.pad_to_32))
  n = data_lib.get_info(data, split).num_examples
  path = (epath.Path(classifier.workdir) / "fd_reference"
          / f"{data.name}_{split}_n{n}_step{classifier.step}.npz")
  if path.exists():
    mu, sigma = load_stats(str(path))
    return mu, sigma, n
  features, _ = classifier.features(split_images(data, split))
  mu, sigma = frechet.feature_stats(features)
  _save_stats_atomic(path, mu, sigma)
  return mu, sigma, n


def _fd_metric_name(classifier: Classifier) -> str:
  return "fd_fmnist" if classifier.dataset == "fashion_mnist" else f"fd_{classifier.dataset}"


def _features_field(classifier: Classifier, dim: int) -> str:
  return f"penultimate ({dim}-d) of the classifier in {classifier.workdir} (step {classifier.step})"


def classifier_scores(classifier: Classifier, images_uint8: np.ndarray, data_config, *,
                      labels: np.ndarray | None = None, split: str = "test") -> list[dict]:
  """FD-fmnist, class histogram and (with labels) class accuracy of uint8 images.

  Args:
    classifier: the feature network.
    images_uint8: [N, H, W, C] uint8 samples, N >= 2.
    data_config: the `data` section naming the reference dataset.
    labels: optional [N] int labels the samples were generated for.
    split: the reference split.

  Returns:
    Records: {metric "fd_fmnist", value, reference_split, reference_size,
    features}, {metric "class_histogram", value = entropy of the predicted
    class frequencies / log K (1 = balanced), counts}, and with labels
    {metric "class_accuracy", value, per_class}.
  """
  images_uint8 = np.asarray(images_uint8)
  if images_uint8.dtype != np.uint8:
    raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
  mu_ref, sigma_ref, n_ref = reference_stats(classifier, data_config, split)
  features, logits = classifier.features(image_lib.from_uint8(images_uint8))
  fd = frechet.frechet_distance(*frechet.feature_stats(features), mu_ref, sigma_ref)
  ref = {"reference": f"{data_config.name} {split}", "reference_split": split,
         "reference_size": n_ref}
  records = [{"metric": _fd_metric_name(classifier), "value": fd, **ref,
              "features": _features_field(classifier, features.shape[1])}]
  k = logits.shape[1]
  pred = logits.argmax(-1)
  counts, entropy = metrics.class_histogram(pred, k)
  names = figures.CLASS_NAMES.get(classifier.dataset, tuple(str(i) for i in range(k)))
  records.append({"metric": "class_histogram", "value": entropy,
                  "counts": counts.tolist(), "classes": list(names),
                  "classifier_dataset": classifier.dataset})
  if labels is not None:
    labels = np.asarray(labels).reshape(-1)
    if classifier.dataset != data_config.name:
      print(f"note: class_accuracy skipped: the classifier was trained on "
            f"{classifier.dataset}, the samples are {data_config.name}; train one on "
            f"{data_config.name} with --config.data.name={data_config.name}")
    else:
      accuracy, per_class = metrics.class_accuracy(pred, labels, k)
      records.append({"metric": "class_accuracy", "value": accuracy,
                      "per_class": per_class})
  return records


def real_data_floor(config, n: int, classifier_workdir: str | None = None, *,
                    classifier: Classifier | None = None) -> dict:
  """The FD between the first `n` real training images and the test split.

  What a perfect generator would score with `n` samples (FD is biased
  upwards at small n): the floor to compare FD-fmnist against.

  Args:
    config: any config; its `data` section names the dataset and its splits
      (data.split, data.eval_split).
    n: number of training images (capped at the split's size).
    classifier_workdir: the feature network; default config.eval.classifier_workdir.
    classifier: an already loaded feature network (overrides the workdir).

  Returns:
    The record {"metric": "fd_train_vs_test", "value", "n", "num_samples", ...}.
  """
  classifier = classifier or load_classifier(classifier_workdir or config.eval.classifier_workdir)
  data = data_section(config.data, num_examples=-1, pad_to_32=bool(classifier.config.data.pad_to_32))
  mu_ref, sigma_ref, n_ref = reference_stats(classifier, data, data.eval_split)
  features, _ = classifier.features(split_images(data, data.split, int(n)))
  fd = frechet.frechet_distance(*frechet.feature_stats(features), mu_ref, sigma_ref)
  return {"metric": "fd_train_vs_test", "value": fd, "n": int(n),
          "num_samples": int(features.shape[0]), "samples": f"first {features.shape[0]} of "
          f"{data.name} {data.split}", "reference_split": data.eval_split,
          "reference_size": n_ref, "features": _features_field(classifier, features.shape[1]),
          "uint8_roundtrip": True}


# ----------------------------------------------------------------------------
# The independent check.


def independent_scores(network: Classifier, images_uint8: np.ndarray, data_config, *,
                       labels: np.ndarray | None = None, split: str = "test") -> list[dict]:
  """`classifier_scores` in the independent network, named as its own metrics.

  Returns:
    Records {"fd_independent"}, {"entropy_independent"} and, with labels,
    {"class_accuracy_independent"}: the fields of `classifier_scores`, plus
    "check": "independent".
  """
  records = classifier_scores(network, images_uint8, data_config, labels=labels, split=split)
  return [dict(r, metric=INDEPENDENT_METRICS[r["metric"]], check="independent")
          for r in records]


@dataclasses.dataclass
class NearestTrain:
  """The pixel-space nearest-train-neighbour statistic (core/nearest.py).

  Attributes:
    train: float [M, D], the first M training images in [0, 1], flattened
      (MNIST family at its native 28x28, unpadded).
    image_shape: (H, W, C) the distances are measured at.
    test_distances: [N] distances of the first N test images to `train`.
    description: which images the keys and test images are.
  """
  train: np.ndarray
  image_shape: tuple[int, int, int]
  test_distances: np.ndarray
  description: dict

  def record(self, images_uint8: np.ndarray) -> dict:
    """The {"metric": "nn_train_distance", ...} record of uint8 samples [N, H, W, C]."""
    x = metrics.center_crop(nearest.to_unit(images_uint8), self.image_shape[:2])
    distances, _ = nearest.nearest_neighbour(x, self.train)
    return {"metric": "nn_train_distance",
            **nearest.summary(distances, self.test_distances, self.image_shape),
            **self.description}


def nearest_train(data_config, num_train: int, num_test: int) -> NearestTrain:
  """Loads the first `num_train` training images and measures `num_test` test images.

  Args:
    data_config: the `data` section (data.split / data.eval_split; its
      data.num_examples limit applies: the images the model trained on).
    num_train: training images to search (capped at the split's size).
    num_test: held-out images to measure the same way (capped likewise).
  """
  data = data_section(data_config, pad_to_32=False)   # distances at the dataset's own size
  image_shape = tuple(data_lib.get_info(data).image_shape)
  # Back to uint8 (exact) and on to [0, 1] as the samples go: a copy is at distance 0.
  unit = lambda x: nearest.to_unit(image_lib.to_uint8(x))
  train = unit(split_images(data, data.split, int(num_train)))
  train = train.reshape(len(train), -1)
  test = unit(split_images(data, data.eval_split, int(num_test)))
  test_distances, _ = nearest.nearest_neighbour(test, train)
  description = {"num_train": int(len(train)), "train_images": f"first {len(train)} of "
                 f"{data.name} {data.split}", "test_images": f"first {len(test)} of "
                 f"{data.name} {data.eval_split}", "check": "independent"}
  return NearestTrain(train, image_shape, test_distances, description)


def load_independent(config) -> Classifier | None:
  """The independent network of `config.eval.independent_workdir`; None (logged) when unset."""
  workdir = config.eval.independent_workdir
  if not workdir:
    logging.info("config.eval.independent_workdir is empty: the independent check "
                 "(fd_independent, entropy_independent, class_accuracy_independent, "
                 "nn_train_distance) is skipped; train it with %s", INDEPENDENT_COMMAND)
    print("note: the independent check is skipped (config.eval.independent_workdir is empty)")
    return None
  return load_classifier(workdir, key="eval.independent_workdir")


# ----------------------------------------------------------------------------
# Inception FID / IS (CIFAR-10).


def check_inception_weights(path: str) -> None:
  from launch.eval import inception
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(inception.missing_weights_message(path))


def inception_scores(images_uint8: np.ndarray, data_config, weights: str,
                     split: str = FID_REFERENCE_SPLIT) -> list[dict]:
  """FID against a real split (statistics cached next to the weights) and IS."""
  from launch.eval import inception
  apply_fn, variables = inception.load_inception(weights)
  data = data_section(data_config, num_examples=-1, pad_to_32=False)
  n_ref = data_lib.get_info(data, split).num_examples
  stem = os.path.splitext(os.path.basename(weights))[0]
  cache = epath.Path(os.path.dirname(os.path.abspath(weights))) / (
      f"fid_reference_{stem}_{data.name}_{split}_n{n_ref}.npz")
  if cache.exists():
    mu_ref, sigma_ref = load_stats(str(cache))
  else:
    real, _ = data_lib.load_arrays(data, split)
    pool, _ = inception_net.inception_features(apply_fn, variables, real)
    mu_ref, sigma_ref = frechet.feature_stats(pool)
    _save_stats_atomic(cache, mu_ref, sigma_ref)
  pool, logits = inception_net.inception_features(apply_fn, variables, images_uint8)
  fid = frechet.frechet_distance(*frechet.feature_stats(pool), mu_ref, sigma_ref)
  splits = 10 if len(logits) >= 10 else 1
  is_mean, is_std = inception_net.inception_score(logits, splits=splits, kind="logits")
  ref = {"reference": f"{data.name} {split}", "reference_split": split,
         "reference_size": n_ref, "features": f"Inception-v3 pool3 ({weights})"}
  return [{"metric": "fid", "value": fid, **ref},
          {"metric": "inception_score", "value": is_mean, "std": is_std, "splits": splits,
           "features": f"Inception-v3 logits ({weights})"}]
