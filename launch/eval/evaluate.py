"""`--mode evaluate`: metrics of a trained workdir, written to `WORKDIR/eval.json`.

  python -m launch --config configs/X.py --workdir runs/X --mode evaluate

`eval.json` is a list of records, one per number: {"metric", "value", and the
protocol fields that produced it}; a table of them is printed too.
The first 100 scored samples of each sampling protocol are saved as
`WORKDIR/eval_samples/<protocol>_<sampler><steps>.png` (10 to a row).

Per task:
  classifier  accuracy on the evaluation split (EMA weights), and the
              "real-data floor" `fd_train_vs_test`: the FD between N real
              training images and the test split, N = 1000 and 10000, in
              the classifier's own feature space.
  ddpm        `eval.num_samples` samples (conditional models: labels cycling
              0..9), round-tripped through uint8, scored twice: with the
              pinned comparison sampler `PINNED_SAMPLER` (DDIM, eta = 0, 100
              steps, x0 clipped, EMA weights) and with the config's `sample`
              section (once when the two are the same). Also `nll_bpd`, the
              variational bound on `eval.nll_images` test images
              (launch/eval/nll.py; per-term curve in nll_terms.npz/.png).
  denoiser    the same scores for its one-step "ink blots".
  ebm         the same scores for Langevin samples from noise (sample.steps,
              0 = ebm.sample_steps), and the OOD AUROC of the energy, test
              split against each `ebm.ood.make_ood_sets` set. A
              class-conditional (JEM) EBM: its samples with labels cycling
              0..9 (protocol "config", with the class accuracy of the
              samples) and from the marginal E(x) (protocol "marginal"),
              and its own test `accuracy` as a classifier, argmax_y f(x)[y].
              Restoration of the first `eval.restore_num` test images:
              `inpaint_mse` / `inpaint_psnr` over the pixels of the box
              `eval.inpaint_box` filled by `eval.inpaint_steps` Langevin
              steps, and `denoise_mse` / `denoise_psnr` after
              `eval.denoise_steps` noise-free steps from the image plus
              N(0, eval.denoise_sigma²); each record's `corrupted` field is
              the same error of the chain's corrupted input (the baseline).

Scores of generated images:
  MNIST family (fashion_mnist, mnist): `fd_fmnist`, the Fréchet distance in
    the penultimate-layer features of the classifier trained by
    configs/classifier_fashion_mnist.py (`eval.classifier_workdir`) against
    the test split (10k); the histogram of the classes the classifier
    predicts; for conditional models the fraction of samples classified as
    the label they were generated for. 32x32 (padded) samples are
    centre-cropped back to the classifier's 28x28. The reference statistics
    are computed once and cached in CLASSIFIER_WORKDIR/fd_reference/.
  cifar10: FID and Inception Score with the FID Inception-v3
    (`eval.inception_weights`, see launch/inception.py) against the train
    split (50k), statistics cached next to the weights file.

The independent check (`eval.independent_workdir`; "" = skip, logged), so
that a score is not an artefact of the project's own classifier: the same
three scores in a differently-built network (an MLP-Mixer trained by
configs/classifier_fashion_mnist.py:independent), `fd_independent`,
`entropy_independent` and `class_accuracy_independent`, behind its own
accuracy bar (`eval.min_independent_accuracy`); and `nn_train_distance`,
the samples' mean L2 pixel distance to their nearest of the first
`eval.nearest_train_images` training images, next to the same mean for as
many test images (core/nearest.py; 0 = skip). docs/evaluation.md.

Samples made elsewhere (e.g. by a PyTorch program), as an .npz of uint8
images [N, H, W(, C)] (or [N, C, H, W]), optionally with `labels`:

  python -m launch.eval.evaluate --npz FILE --classifier_workdir DIR [--out eval.json]
      [--independent_workdir runs/classifier_independent]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from core import images as image_lib
from launch import checkpoint as checkpoint_lib
from launch import data as data_lib
from launch import figures
from launch import sample as sample_lib
from launch.eval import feature_check
from launch.eval import nll
from launch.eval import scores
from launch.eval.scores import (CLASSIFIER_COMMAND, INDEPENDENT_COMMAND,
                                 MissingClassifierError, classifier_from_state,
                                 classifier_scores, inception_scores, independent_scores,
                                 load_classifier, load_independent, missing_classifier_message,
                                 nearest_train, real_data_floor)
from launch import tasks
from launch import workdir as workdir_lib
from launch import xla_cpu

# The comparison sampler of every DDPM evaluation (steps capped at T).
PINNED_SAMPLER = {"sampler": "ddim", "steps": 100, "eta": 0.0, "clip_x0": True,
                  "spacing": "uniform"}
FLOOR_SIZES = (1000, 10_000)
_EVAL_STREAM = 0x45564C         # fold_in tag of the evaluation's sampling key
_RESTORE_STREAM = 0x525354      # fold_in tag of the EBM restoration's corruptions and chains


# ----------------------------------------------------------------------------
# Generated samples.


def _check_feature_network(config) -> None:
  """Fails before any sampling when the feature network of the dataset is missing."""
  if config.data.name in data_lib.MNIST_FAMILY:
    workdir = config.eval.classifier_workdir
    if not workdir or not (epath.Path(workdir) / "checkpoints").exists():
      raise MissingClassifierError(missing_classifier_message(workdir))
  else:
    scores.check_inception_weights(config.eval.inception_weights)
  workdir = config.eval.independent_workdir
  if workdir and not (epath.Path(workdir) / "checkpoints").exists():
    raise MissingClassifierError(missing_classifier_message(workdir, "eval.independent_workdir"))


def _score(config, images_uint8, labels, scorer) -> list[dict]:
  if config.data.name in data_lib.MNIST_FAMILY:
    return classifier_scores(scorer(), images_uint8, config.data, labels=labels,
                             split=config.data.eval_split)
  return inception_scores(images_uint8, config.data, config.eval.inception_weights)


def _sampling_settings(task) -> list[tuple[str, dict, bool]]:
  """(protocol name, sample options without label, use EMA) of a generative evaluation.

  Tasks with a choice of samplers (an option "sampler") are also evaluated with
  `PINNED_SAMPLER` on the EMA weights, unless their own sampler is that one.
  """
  options = {k: v for k, v in task.sample_options().items() if k != "label"}
  if "sampler" not in options:
    settings = [("config", options, task.use_ema)]
    if task.num_classes and hasattr(task, "energy"):   # a JEM: also its marginal p(x)
      settings.append(("marginal", dict(options, label=None), task.use_ema))
    return settings
  pinned = dict(options, **PINNED_SAMPLER)
  pinned["steps"] = min(PINNED_SAMPLER["steps"], task.spec.num_timesteps)
  settings = [("pinned", pinned, True)]
  if (task.describe_sampling(options), task.use_ema) != (task.describe_sampling(pinned), True):
    settings.append(("config", options, task.use_ema))
  return settings


GRID_SIZE = 100   # the first samples of each scored set, 10 per row


def scored_grid_path(workdir, fields: dict) -> epath.Path:
  """WORKDIR/eval_samples/<protocol>_<sampler><steps>[_<weights>].png of a scored set."""
  name = f"{fields['protocol']}_{fields['sampler']}{fields['steps']}"
  if fields.get("weights") == "raw":
    name += "_raw"
  if fields.get("ema_sigma_rel"):
    name += f"_ema{fields['ema_sigma_rel']:g}"
  return epath.Path(workdir) / "eval_samples" / f"{name}.png"


def save_scored_grid(workdir, fields: dict, uint8: np.ndarray) -> None:
  """Saves the first `GRID_SIZE` of the scored uint8 samples, 10 to a row.

  These are the images the numbers were computed from (after the uint8
  round trip), so a score can be read next to the samples it scores; with
  labels cycling 0..9, column k holds class k.
  """
  if jax.process_index() != 0:
    return
  path = scored_grid_path(workdir, fields)
  path.parent.mkdir(parents=True, exist_ok=True)
  figures.save_grid(image_lib.image_grid(uint8[:GRID_SIZE], nrow=10), path)


def _evaluate_generative(config, workdir, run, state) -> list[dict]:
  task = run.task
  step = int(jax.device_get(state.step))
  n = int(config.eval.num_samples)
  if n < 2:
    raise ValueError(f"config.eval.num_samples={n}: need at least 2 samples for a covariance")
  scorer = functools.lru_cache(maxsize=1)(
      lambda: load_classifier(config.eval.classifier_workdir))
  checked = {}
  if config.data.name in data_lib.MNIST_FAMILY:  # before sampling: refuse a weak feature network
    checked["feature_network_accuracy"] = feature_check.check(
        scorer(), config.data, float(config.eval.min_classifier_accuracy))
  independent, nn_train = load_independent(config), None
  independent_fields = {}
  if independent is not None:   # before sampling too: the same bar, its own key
    if config.data.name in data_lib.MNIST_FAMILY:
      independent_fields["independent_network_accuracy"] = feature_check.check(
          independent, config.data, float(config.eval.min_independent_accuracy),
          key="eval.min_independent_accuracy", command=INDEPENDENT_COMMAND)
    else:
      print(f"note: the independent network scores only the MNIST family, not "
            f"{config.data.name}: nn_train_distance only")
    if config.eval.nearest_train_images:
      nn_train = nearest_train(config.data, config.eval.nearest_train_images, n)
  cycling = (np.arange(n) % task.num_classes).astype(np.int32) if task.num_classes else None
  key = jax.random.fold_in(run.keys["sample"], _EVAL_STREAM)
  settings = _sampling_settings(task)
  records = []
  for protocol, options, use_ema in settings:
    # An explicit label None (an EBM's marginal protocol) samples without labels.
    labels = None if "label" in options else cycling
    params = dataclasses.replace(task, use_ema=use_ema).sample_params(state)
    images = sample_lib.generate(task, params, key, n, config.sample.batch_size, options, labels)
    uint8 = image_lib.to_uint8(images)
    fields = {"protocol": protocol, "num_samples": n,
              **task.describe_sampling({k: v for k, v in options.items() if k != "label"}),
              "weights": "ema" if use_ema else "raw", "step": step, "seed": int(config.seed),
              "uint8_roundtrip": True, **checked}
    if use_ema and config.sample.ema_sigma_rel:   # the post-hoc EMA (launch.posthoc_ema)
      fields["ema_sigma_rel"] = float(config.sample.ema_sigma_rel)
    save_scored_grid(workdir, fields, uint8)
    if labels is not None:
      fields["labels"] = "cycling 0..9"
    elif "label" in options:
      fields["labels"] = "none (marginal E(x))"
    scored = _score(config, uint8, labels, scorer)
    if independent is not None and config.data.name in data_lib.MNIST_FAMILY:
      scored += [dict(r, **independent_fields) for r in independent_scores(
          independent, uint8, config.data, labels=labels, split=config.data.eval_split)]
    if nn_train is not None:
      scored.append(nn_train.record(uint8))
    for r in scored:
      records.append({"metric": r.pop("metric"), "value": r.pop("value"), **fields, **r})
  if hasattr(task, "ood_evaluate"):   # an energy: its AUROC as an OOD score
    records += _ood_records(config, task, state, step)
  if hasattr(task, "restoration_run"):   # an energy: inpainting and denoising
    records += _restoration_records(config, task, state, step)
  if hasattr(task, "class_logits") and task.num_classes:   # a JEM is a classifier too
    records += _jem_accuracy_records(config, task, state, step)
  if hasattr(task, "eps_fn"):   # a diffusion model: its variational bound in bits/dim
    records += nll.nll_records(config, workdir, run, state)
  return records


def _ood_records(config, task, state, step: int) -> list[dict]:
  params = task.sample_params(state)
  x_in = scores.split_images(config.data, config.data.eval_split)
  key = jax.random.fold_in(jax.random.key(config.seed), _EVAL_STREAM)
  aurocs = jax.device_get(task.ood_evaluate(params, jnp.asarray(x_in), key))
  return [{"metric": f"ood_auroc_{name}", "value": float(value), "ood_set": name,
           "in_distribution": f"{config.data.name} {config.data.eval_split}",
           "num_examples": int(len(x_in)), "score": "energy (higher = OOD)",
           "weights": "ema" if task.use_ema else "raw", "step": step,
           "seed": int(config.seed)}
          for name, value in sorted(aurocs.items())]


def restoration_records(task, params, x: np.ndarray, key: jax.Array
                        ) -> tuple[list[dict], dict]:
  """Records of `task.restoration_run` on test images x, and its arrays on the host.

  Returns:
    (records, run): one record per task and error ("inpaint_mse",
    "inpaint_psnr", "denoise_mse", "denoise_psnr"), the restored images'
    error as value and the corrupted input's as "corrupted"; run as
    `restoration_run` returns it (NumPy).
  """
  r = task.restoration
  run = jax.tree.map(np.asarray, jax.device_get(task.restoration_run(params, jnp.asarray(x), key)))
  protocol = {
      "inpaint": {"box": list(r.box), "steps": r.inpaint_steps,
                  "pixels": "inside the box", "start": "U[-1, 1] in the box"},
      "denoise": {"sigma": r.denoise_sigma, "steps": r.denoise_steps, "pixels": "all",
                  "start": "the noisy image", "noise_scale": 0.0},
  }
  records = []
  for name in ("inpaint", "denoise"):
    for err in ("mse", "psnr"):
      records.append({"metric": f"{name}_{err}", "value": float(run[name][err]),
                      "corrupted": float(run[name][f"{err}_corrupted"]),
                      "num_examples": int(len(x)), "energy": "marginal E(x)",
                      "step_size": float(task.settings.langevin.step_size),
                      **protocol[name]})
  return records, run


def _restoration_records(config, task, state, step: int) -> list[dict]:
  if not task.restoration.num:
    return []
  x = scores.split_images(config.data, config.data.eval_split, task.restoration.num)
  key = jax.random.fold_in(jax.random.key(config.seed), _RESTORE_STREAM)
  records, _ = restoration_records(task, task.sample_params(state), x, key)
  fields = {"in_distribution": f"{config.data.name} {config.data.eval_split}",
            "weights": "ema" if task.use_ema else "raw", "step": step, "seed": int(config.seed)}
  return [{**r, **fields} for r in records]


def _jem_accuracy_records(config, task, state, step: int) -> list[dict]:
  params = task.sample_params(state)
  result = classifier_accuracy(task, params, config.data, config.data.eval_split,
                               logits_fn=task.class_logits)
  return [{"metric": "accuracy", "value": result["accuracy"], "split": config.data.eval_split,
           "num_examples": result["num_examples"], "classifier": "argmax_y f(x)[y] (JEM)",
           "weights": "ema" if task.use_ema else "raw", "step": step,
           "per_class": result["per_class_accuracy"]}]


# ----------------------------------------------------------------------------
# The classifier workdir.


def classifier_accuracy(task, params, data_config, split: str, batch_size: int = 500,
                        logits_fn=None) -> dict:
  """Accuracy and per-class accuracy of `params` on a whole split.

  `logits_fn(params, x) -> [B, K]` (a compiled function) gives the logits;
  default the classifier task's `apply(params, x)[1]`.
  """
  if logits_fn is None:
    apply = jax.jit(lambda p, x: task.apply(p, x)[1].argmax(-1))
  else:
    apply = lambda p, x: jnp.argmax(logits_fn(p, x), axis=-1)
  correct, labels_all = [], []
  for batch in data_lib.eval_batches(data_config, split, batch_size):
    correct.append(np.asarray(apply(params, batch["image"])) == batch["label"])
    labels_all.append(batch["label"])
  correct, labels = np.concatenate(correct), np.concatenate(labels_all)
  per_class = [float(correct[labels == k].mean()) for k in range(task.num_classes)]
  return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class,
          "num_examples": int(len(labels))}


def _evaluate_classifier(config, workdir, run, state) -> list[dict]:
  params = run.task.sample_params(state)
  result = classifier_accuracy(run.task, params, config.data, config.data.eval_split)
  weights = "ema" if run.task.use_ema else "raw"
  step = int(jax.device_get(state.step))
  records = [{"metric": "accuracy", "value": result["accuracy"],
              "split": config.data.eval_split, "num_examples": result["num_examples"],
              "weights": weights, "step": step, "per_class": result["per_class_accuracy"]}]
  classifier = classifier_from_state(config, workdir, run.task, state)
  for n in FLOOR_SIZES:
    records.append({**real_data_floor(config, n, classifier=classifier), "weights": weights,
                    "step": step})
  return records


# ----------------------------------------------------------------------------
# Output.

_TABLE_FIELDS = ("protocol", "sampler", "steps", "eta", "clip_x0", "guidance", "weights",
                 "ema_sigma_rel",
                 "num_samples", "n", "num_examples", "reference_split", "reference_size",
                 "ood_set", "corrupted", "test_value", "ratio", "num_train", "step")


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def format_table(records: Sequence[dict]) -> str:
  """One line per record: metric, value and the main protocol fields."""
  lines = []
  for r in records:
    details = ", ".join(f"{k}={r[k]}" for k in _TABLE_FIELDS if r.get(k) is not None)
    if "counts" in r:
      details += f", counts={r['counts']}"
    lines.append(f"{r['metric']:>26s}  {r['value']:10.4f}  {details}")
  return "\n".join(lines)


def write_records(records: list[dict], path: str | os.PathLike) -> None:
  if jax.process_index() == 0:
    epath.Path(path).write_text(json.dumps(_jsonable(records), indent=2))


def evaluate_workdir(config, workdir: str, task=None) -> list[dict]:
  """Evaluates the newest checkpoint of `workdir`; writes WORKDIR/eval.json, prints a table.

  Raises:
    MissingClassifierError / FileNotFoundError: the feature network of the
      dataset is missing (checked before the model is loaded); the message
      says how to get it.
  """
  task = tasks.build(config) if task is None else task
  if task.sample is not None:  # a generative model is scored by a feature network
    _check_feature_network(config)
  run, state = workdir_lib.load_trained(workdir, config, task, device=jax.local_devices()[0])
  if task.sample is None:      # the classifier: its accuracy
    records = _evaluate_classifier(config, workdir, run, state)
  else:
    records = _evaluate_generative(config, workdir, run, state)
  records = _jsonable(records)
  write_records(records, epath.Path(workdir) / "eval.json")
  if jax.process_index() == 0:
    print(format_table(records))
    print(f"wrote {epath.Path(workdir) / 'eval.json'}")
  return records


# ----------------------------------------------------------------------------
# Samples from elsewhere: python -m launch.eval.evaluate --npz FILE --classifier_workdir DIR


def load_npz_images(path: str | os.PathLike, key: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
  """uint8 images [N, H, W, C] (and `labels` if present) of an .npz.

  The images are the array `key`, else "images", else the file's only array
  (besides "labels" and "sampling"); [N, H, W] and [N, C, H, W] (C = 1 or 3)
  are accepted.
  """
  with np.load(os.fspath(path)) as f:
    names = [k for k in f.files if k not in ("labels", "sampling")]
    if key is None:
      if "images" in f.files:
        key = "images"
      elif len(names) == 1:
        key = names[0]
      else:
        raise ValueError(f"{path} holds {f.files}: say which are the images (--key)")
    images = np.asarray(f[key])
    labels = np.asarray(f["labels"]) if "labels" in f.files else None
  if images.dtype != np.uint8:
    raise TypeError(f"{path}[{key!r}] is {images.dtype}; save the samples as uint8 "
                    "(0..255, e.g. core.images.to_uint8 of [-1, 1] images)")
  if images.ndim == 3:
    images = images[..., None]
  elif images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
    images = np.transpose(images, (0, 2, 3, 1))   # NCHW (PyTorch) -> NHWC
  if images.ndim != 4:
    raise ValueError(f"{path}[{key!r}] has shape {images.shape}, expected [N, H, W(, C)]")
  if labels is not None and (labels.shape != (len(images),)
                             or not np.issubdtype(labels.dtype, np.integer)):
    raise ValueError(f"{path}['labels'] is {labels.dtype}{list(labels.shape)}: expected "
                     f"{len(images)} integer labels, one per image")
  return images, labels


def load_npz_sampling(path: str | os.PathLike) -> dict:
  """The sampler settings `--mode sample` saved with its samples ({} if none)."""
  with np.load(os.fspath(path)) as f:
    if "sampling" not in f.files:
      return {}
    try:
      settings = json.loads(str(f["sampling"]))
    except ValueError as e:
      raise ValueError(f"{path}['sampling'] is not the JSON that --mode sample writes: "
                       f"{e}") from None
  if not isinstance(settings, dict):
    raise ValueError(f"{path}['sampling'] is not a JSON object")
  return settings


def evaluate_npz(path: str | os.PathLike, classifier_workdir: str, *, split: str = "test",
                 dataset: str | None = None, key: str | None = None, data_dir: str = "",
                 manual_dir: str = "",
                 min_classifier_accuracy: float = feature_check.DEFAULT_MIN_ACCURACY,
                 independent_workdir: str = "",
                 min_independent_accuracy: float = feature_check.DEFAULT_MIN_ACCURACY,
                 nearest_train_images: int = 10_000) -> list[dict]:
  """FD-fmnist and class histogram (and class accuracy with labels) of uint8 samples.

  Args:
    path: .npz of uint8 images (see `load_npz_images`), optionally with
      `labels` [N] (the classes they were generated for).
    classifier_workdir: the trained classifier (feature network).
    split: the real reference split.
    dataset: the reference dataset; default the classifier's.
    key: the images' array name in the .npz.
    data_dir, manual_dir: where the dataset is (as config.data.*).
    min_classifier_accuracy: refuse (`feature_check.WeakFeatureNetworkError`)
      a classifier whose test accuracy is lower (as
      config.eval.min_classifier_accuracy).
    independent_workdir: the independent network ("" = no independent check),
      as config.eval.independent_workdir.
    min_independent_accuracy: its bar, as config.eval.min_independent_accuracy.
    nearest_train_images: training images of `nn_train_distance` (with the
      independent check; 0 = none), as config.eval.nearest_train_images.

  Returns:
    The records, as in eval.json.
  """
  classifier = load_classifier(classifier_workdir)
  images, labels = load_npz_images(path, key)
  changes = {"name": dataset} if dataset else {}
  if data_dir:
    changes["data_dir"] = data_dir
  if manual_dir:
    changes["manual_dir"] = manual_dir
  data = scores.data_section(classifier.config.data, **changes)
  accuracy = feature_check.check(classifier, data, min_classifier_accuracy)
  records = classifier_scores(classifier, images, data, labels=labels, split=split)
  if independent_workdir:
    network = load_classifier(independent_workdir, key="eval.independent_workdir")
    independent_accuracy = feature_check.check(
        network, data, min_independent_accuracy, key="eval.min_independent_accuracy",
        command=INDEPENDENT_COMMAND)
    records += [dict(r, independent_network_accuracy=independent_accuracy) for r in
                independent_scores(network, images, data, labels=labels, split=split)]
    if nearest_train_images:
      records.append(nearest_train(data, nearest_train_images, len(images)).record(images))
  # The sampler settings saved with the samples, then what was measured here.
  fields = {**load_npz_sampling(path), "source": os.fspath(path),
            "num_samples": int(len(images)), "uint8_roundtrip": True,
            "feature_network_accuracy": accuracy}
  if labels is not None:
    fields["labels"] = "from the file"
  return _jsonable([{"metric": r.pop("metric"), "value": r.pop("value"), **fields, **r}
                    for r in records])


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m launch.eval.evaluate",
      description="FD-fmnist and class histogram of uint8 samples stored in an .npz.")
  parser.add_argument("--npz", required=True, help="samples: .npz of uint8 [N, H, W(, C)]")
  parser.add_argument("--classifier_workdir", required=True,
                      help=f"trained classifier workdir (train: {CLASSIFIER_COMMAND})")
  parser.add_argument("--split", default="test", help="reference split (default test)")
  parser.add_argument("--dataset", default=None, help="reference dataset (default: the "
                      "classifier's)")
  parser.add_argument("--key", default=None, help="array name of the images in the .npz")
  parser.add_argument("--data_dir", default="", help="tfds data_dir (config.data.data_dir)")
  parser.add_argument("--manual_dir", default="", help="IDX files (config.data.manual_dir)")
  parser.add_argument("--independent_workdir", default="",
                      help=f"the independent network (train: {INDEPENDENT_COMMAND}); adds "
                      "fd_independent, entropy_independent, class_accuracy_independent and "
                      "nn_train_distance")
  parser.add_argument("--min_independent_accuracy", type=float,
                      default=feature_check.DEFAULT_MIN_ACCURACY,
                      help="refuse an independent network with a lower test accuracy")
  parser.add_argument("--nearest_train_images", type=int, default=10_000,
                      help="training images searched by nn_train_distance (0 = skip)")
  parser.add_argument("--out", default=None, help="also write the records to this JSON file")
  parser.add_argument("--min_classifier_accuracy", type=float,
                      default=feature_check.DEFAULT_MIN_ACCURACY,
                      help="refuse a feature network with a lower test accuracy "
                      "(as config.eval.min_classifier_accuracy; 0 = score anyway)")
  args = parser.parse_args(argv)
  xla_cpu.apply()   # as python -m launch does (launch/xla_cpu.py); no effect once JAX has started
  try:
    records = evaluate_npz(args.npz, args.classifier_workdir, split=args.split,
                           dataset=args.dataset, key=args.key, data_dir=args.data_dir,
                           manual_dir=args.manual_dir,
                           min_classifier_accuracy=args.min_classifier_accuracy,
                           independent_workdir=args.independent_workdir,
                           min_independent_accuracy=args.min_independent_accuracy,
                           nearest_train_images=args.nearest_train_images)
  except (FileNotFoundError, ValueError, TypeError, checkpoint_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_table(records))
  if args.out:
    write_records(records, args.out)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
