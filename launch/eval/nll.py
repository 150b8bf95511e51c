"""`--mode evaluate` of a DDPM: the variational bound on test images, in bits/dim.

`nll_records` scores the first `eval.nll_images` images of the evaluation
split (`data.eval_split`) with `ddpm.likelihood.variational_bound` (the
reverse variance and x0 clipping of the config's `sample` section, the
authors' tanh CDF in the decoder, EMA weights when sample.use_ema;
conditional models are scored given each image's true label, guidance 1),
and writes

  WORKDIR/nll_terms.npz        total_bpd [N], terms_bpd [N, T], prior_bpd [N],
                               x0_mse [N, T] (see `ddpm.likelihood.Bound`)
  WORKDIR/figures/nll_terms.png  the mean terms against t.

Padded MNIST-family images (data.pad_to_32) are scored as the model sees
them, 32 x 32; the reported `nll_bpd` divides the bound's bits by the
dataset's own 28 x 28 dimensions. That is still an upper bound on the NLL of
the 28 x 28 images: p(x_28) = sum over paddings of p(x_28, pad) >= p(x_28,
black padding). `bpd_model_dims` is the same bits per 32 x 32 dimension.
"""
from __future__ import annotations

import math
import types

import jax
import numpy as np
from etils import epath

from ddpm import figures as ddpm_figures
from ddpm import likelihood
from launch import data as data_lib
from launch import figures

_NLL_STREAM = 0x4E4C4C   # fold_in tag of the bound's noise
TERMS_FILE = "nll_terms.npz"


def _test_images(data_config, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
  images, labels, count = [], [], 0
  for batch in data_lib.eval_batches(data_config, split, min(n, 500)):
    images.append(batch["image"])
    labels.append(batch["label"])
    count += len(batch["image"])
    if count >= n:
      break
  return np.concatenate(images)[:n], np.concatenate(labels)[:n].astype(np.int32)


def _data_dims(data_config, split: str) -> int:
  """H W C of the dataset's own images (before any padding)."""
  unpadded = types.SimpleNamespace(**dict(data_config.to_dict(), pad_to_32=False))
  return math.prod(data_lib.get_info(unpadded, split).image_shape)


def nll_records(config, workdir, run, state) -> list[dict]:
  """The `nll_bpd` record of a DDPM workdir (none when eval.nll_images = 0); see the module."""
  n = int(config.eval.nll_images)
  if n <= 0:
    return []
  task = run.task
  split = config.data.eval_split
  images, labels = _test_images(config.data, split, n)
  params = task.sample_params(state)  # restored on one device by workdir.load_trained
  key = jax.random.fold_in(run.keys["sample"], _NLL_STREAM)
  variance, clip_x0 = task.spec.variance, bool(task.spec.clip_x0)
  out = likelihood.variational_bound_batches(
      task.eps_fn, task.schedule, params, images, labels if task.num_classes else None, key,
      config.sample.batch_size, variance=variance, clip_x0=clip_x0)
  model_dims = math.prod(task.image_shape)
  data_dims = _data_dims(config.data, split)
  total = out["total_bpd"].astype(np.float64) * model_dims / data_dims
  terms = out["terms_bpd"].mean(0)
  if jax.process_index() == 0:
    workdir = epath.Path(workdir)
    with (workdir / TERMS_FILE).open("wb") as f:
      np.savez(f, **out)
    figures.save_figure(ddpm_figures.nll_terms_figure(
        terms, float(out["prior_bpd"].mean()),
        title=f"Variational bound per term, {len(images)} {config.data.name} {split} images "
              f"(bits per {model_dims} model dims)"),
        workdir / "figures" / "nll_terms.png")
  record = {
      "metric": "nll_bpd", "value": float(total.mean()),
      "std_err": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else None,
      "split": split, "num_images": int(len(images)), "dims": data_dims,
      "bpd_model_dims": float(out["total_bpd"].mean()), "model_dims": model_dims,
      "decoder_bpd": float(terms[0]), "prior_bpd": float(out["prior_bpd"].mean()),
      "variance": variance, "clip_x0": clip_x0, "cdf": "approx",
      "weights": "ema" if task.use_ema else "raw",
      "step": int(jax.device_get(state.step)), "seed": int(config.seed),
      "terms_file": TERMS_FILE, "figure": "figures/nll_terms.png"}
  if task.num_classes:
    record["labels"] = "true test labels (conditional likelihood)"
  return [record]
