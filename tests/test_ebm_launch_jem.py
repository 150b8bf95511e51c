"""The launch side of class-conditional EBMs (JEM) and of EBM image restoration.

Config keys and their errors, sampling by label, inpainting / denoising
through the task, and `--mode sample | evaluate | figures` of a
class-conditional smoke workdir. Everything runs on
`tfds.testing.mock_data` with the workdir helper and the session's trained
smoke classifier (tests/conftest.py); the workdirs hold their initial state except
in the slow end-to-end test, which trains, resumes and evaluates.
Restoration errors are recomputed in float64 NumPy from the returned images.
"""
from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ebm_fashion_mnist
from core import images as image_lib
from ebm import cd
from ebm import ood
from launch import config as config_lib
from launch import data as data_lib
from launch import figure_mode
from launch import figures
from launch import sample as sample_lib
from launch import tasks
from launch import train as train_lib
from launch import workdir as workdir_lib
from launch.eval import evaluate
from helpers import ROOT, config_error_of, untrained as _untrained

COND = "ebm_fashion_mnist.py:conditional_smoke"
pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


@pytest.fixture
def classifier(smoke_classifier):
  return smoke_classifier   # (config, workdir, state), trained once per session: conftest.py


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float64)


# ----------------------------------------------------------------- configs


@pytest.mark.parametrize("variant, key, value", [
    ("conditional_smoke", "model.num_classes", 5),     # not the dataset's 10
    ("conditional_smoke", "model.num_classes", -1),
    ("conditional_smoke", "ebm.ce_weight", -0.5),
    ("conditional_smoke", "ebm.buffer_size", 9),        # fewer slots than classes
    ("conditional_smoke", "sample.label", 10),
    ("conditional_smoke", "sample.label", -2),
    ("smoke", "ebm.ce_weight", 1.0),                    # needs classes
    ("smoke", "ebm.conditional_sampling", True),
    ("smoke", "sample.label", 3),
    ("smoke", "eval.inpaint_box", (20, 20, 14, 14)),    # outside the 28x28 image
    ("smoke", "eval.inpaint_box", (1, 2, 3)),
    ("smoke", "eval.restore_num", -1),
    ("smoke", "eval.denoise_sigma", 0.0),
    ("smoke", "eval.denoise_steps", -1),
])
def test_bad_values_raise_config_error_naming_the_key(variant, key, value):
  error = config_error_of(ebm_fashion_mnist.get_config(variant), key, value)
  assert error.key == key and key in str(error)


def test_conditional_variants_are_jem_and_documented():
  for variant in ("conditional", "conditional_smoke"):
    task = tasks.build(ebm_fashion_mnist.get_config(variant))
    assert task.num_classes == 10 and task.network.num_classes == 10
    assert task.settings.conditional_sampling and task.settings.ce_weight == 1.0
    assert task.sample_label == -1
  jem, default = (ebm_fashion_mnist.get_config(v) for v in ("conditional", None))
  # The conditional variant changes only the JEM keys of the CPU default.
  flat = lambda c: {f"{s}.{k}": v for s, sec in c.items() if hasattr(sec, "items")
                    for k, v in sec.items()}
  changed = {k for k, v in flat(jem).items() if v != flat(default)[k]}
  assert changed == {"model.num_classes", "ebm.conditional_sampling", "ebm.ce_weight"}
  assert ":conditional --workdir" in ebm_fashion_mnist.__doc__
  assert "conditional_smoke" in ebm_fashion_mnist.__doc__
  # Unconditional configs keep K = 0 and the centred half-side box by default.
  task = tasks.build(ebm_fashion_mnist.get_config("smoke"))
  assert task.num_classes == 0 and task.restoration.box == (7, 7, 14, 14)


# ------------------------------------------------------------ task methods


@pytest.fixture(scope="module")
def cond():
  """(task, params, test images [8, 28, 28, 1]) of a fresh conditional smoke model."""
  config = ebm_fashion_mnist.get_config("conditional_smoke")
  task = tasks.build(config)
  run = workdir_lib.prepare(config, task)
  params = workdir_lib.init_state(run).params
  x = next(data_lib.eval_batches(config.data, "test", 8))["image"]
  return task, params, jnp.asarray(x)


def test_sample_labels_follow_the_label_rules(cond):
  task = cond[0]
  np.testing.assert_array_equal(task.sample_labels(12), np.arange(12) % 10)   # config: -1
  np.testing.assert_array_equal(task.sample_labels(3, 7), [7, 7, 7])
  np.testing.assert_array_equal(task.sample_labels(3, np.array([1, 0, 9])), [1, 0, 9])
  assert task.sample_labels(3, None) is None                                  # the marginal
  with pytest.raises(ValueError, match=r"label=10 .*\[0, 9\]"):
    task.sample_labels(3, 10)
  with pytest.raises(ValueError, match=r"label must be an int array of shape \(3,\)"):
    task.sample_labels(3, np.array([1, 2]))
  with pytest.raises(ValueError, match="either label or labels"):
    task.sample(cond[1], jax.random.key(0), 3, label=1, labels=np.zeros(3, np.int32))
  uncond = tasks.build(ebm_fashion_mnist.get_config("smoke"))
  assert uncond.sample_labels(4) is None and uncond.sample_labels(4, -1) is None
  with pytest.raises(ValueError, match="label=2: the EBM is unconditional"):
    uncond.sample_labels(4, 2)
  fixed = tasks.build(config_lib.load(f"{ROOT}/configs/{COND}", {"sample.label": 4}))
  np.testing.assert_array_equal(fixed.sample_labels(3), [4, 4, 4])
  assert fixed.sample_options() == {"steps": fixed.sample_langevin.num_steps, "label": 4}


def test_sample_by_label_is_the_chain_on_that_class(cond):
  """task.sample(label=K) is cd.sample on E(x, K); the marginal and K' differ."""
  task, params, _ = cond
  key = jax.random.key(3)
  got = _np(task.sample(params, key, 4, label=3))
  want = _np(jax.jit(lambda p: cd.sample(
      p, key, 4, network=task.network, image_shape=task.image_shape,
      langevin_settings=task.sample_langevin, labels=jnp.full((4,), 3, jnp.int32)))(params))
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(_np(task.sample(params, key, 4, labels=jnp.full((4,), 3))), want,
                             atol=1e-6)
  assert np.abs(_np(task.sample(params, key, 4, label=None)) - want).max() > 1e-4
  assert np.abs(_np(task.sample(params, key, 4, label=4)) - want).max() > 1e-4
  # A traced step size: the same program, the same chain as the static value.
  step = jax.jit(lambda p, s: task.sample(p, key, 4, label=3, step_size=s))
  np.testing.assert_allclose(_np(step(params, jnp.float32(task.sample_langevin.step_size))),
                             want, atol=1e-6)


def test_energy_and_class_logits(cond):
  task, params, x = cond
  class_e = _np(jax.jit(task.network.apply)({"params": params}, x))            # [B, K]
  marginal = -np.log(np.sum(np.exp(-class_e), axis=1))
  np.testing.assert_allclose(_np(task.energy(params, x)), marginal, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(_np(task.energy(params, x, label=2)), class_e[:, 2], rtol=1e-6)
  np.testing.assert_allclose(_np(task.class_logits(params, x)), -class_e, rtol=1e-6)


def test_inpaint_keeps_known_pixels_exactly_and_denoise_starts_at_the_input(cond):
  task, params, x = cond
  mask = ood.box_mask(task.image_shape, 5, 6, 10, 12)
  out = _np(task.inpaint(params, x, mask, jax.random.key(1), steps=4))
  known = np.broadcast_to(np.asarray(mask), out.shape)
  np.testing.assert_array_equal(out[known], _np(x)[known])
  assert np.abs(out[~known]).max() <= 1.0 and np.abs(out[~known] - _np(x)[~known]).max() > 0.1
  cls = _np(task.inpaint(params, x, mask, jax.random.key(1), steps=4, label=5))
  np.testing.assert_array_equal(cls[known], _np(x)[known])
  np.testing.assert_array_equal(_np(task.denoise(params, x, jax.random.key(2), steps=0)), _np(x))
  moved = _np(task.denoise(params, x, jax.random.key(2), steps=2, step_size=1.0))
  # Noise-free steps of at most step_size * grad_clip per pixel each.
  assert np.abs(moved - _np(x)).max() <= 2 * 1.0 * task.settings.langevin.grad_clip + 1e-6


def test_restoration_run_errors_match_numpy(cond):
  task, params, x = cond
  run = jax.tree.map(_np, task.restoration_run(params, x, jax.random.key(7)))
  top, left, h, w = task.restoration.box
  box = np.zeros(x.shape, bool)
  box[:, top:top + h, left:left + w] = True
  orig = _np(x)
  ip = run["inpaint"]
  np.testing.assert_array_equal(ip["restored"][~box], orig[~box])
  np.testing.assert_array_equal(ip["corrupted"][~box], orig[~box])
  dn = run["denoise"]
  for name, r, where in (("inpaint", ip, box), ("denoise", dn, np.ones_like(box))):
    for err, img in (("mse", r["restored"]), ("mse_corrupted", r["corrupted"])):
      per_image = np.array([np.mean(np.square(img[i] - orig[i])[where[i]])
                            for i in range(len(orig))])
      np.testing.assert_allclose(r[err], per_image.mean(), rtol=1e-5, err_msg=f"{name} {err}")
      psnr = err.replace("mse", "psnr")
      np.testing.assert_allclose(r[psnr], np.mean(10 * np.log10(4.0 / per_image)), rtol=1e-5,
                                 err_msg=f"{name} {psnr}")
  noise = dn["corrupted"] - orig
  assert 0.15 < noise.std() < 0.35   # σ = 0.3, clipped to [-1, 1]


# --------------------------------------------------------- the CLI's modes


@pytest.fixture(scope="module")
def cond_workdir(tmp_path_factory):
  return _untrained(tmp_path_factory, COND, {"loss": 0.1, "energy_pos": -1.0,
                                             "energy_neg": 1.0})


def test_mode_sample_with_a_label_writes_that_label(tmp_path_factory, capsys):
  config, workdir = _untrained(tmp_path_factory, COND, {"loss": 0.1},
                               **{"sample.label": 3, "sample.num": 6, "sample.batch_size": 4})
  stem = sample_lib.sample_to_workdir(config, str(workdir))
  assert stem.name.startswith("sample_0_label-3")
  with np.load(f"{stem}.npz") as f:
    images, labels = f["images"], f["labels"]
  np.testing.assert_array_equal(labels, np.full(6, 3))
  # The images are the chains on E(x, 3): the first batch again, directly.
  run, state = workdir_lib.load_trained(str(workdir), config, device=jax.local_devices()[0])
  key = jax.random.fold_in(jax.random.fold_in(run.keys["sample"], config.seed), 0)
  first = run.task.sample(run.task.sample_params(state), key, 4, label=3)
  # (one uint8 level of slack: the mode compiles the chain inside another jit)
  diff = images[:4].astype(int) - image_lib.to_uint8(np.asarray(first)).astype(int)
  assert np.abs(diff).max() <= 1 and np.mean(diff == 0) > 0.99


def test_mode_evaluate_reports_accuracy_restoration_and_both_protocols(cond_workdir, classifier):
  config, workdir = cond_workdir
  config = config_lib.load(f"{ROOT}/configs/{COND}",
                           {"eval.classifier_workdir": str(classifier[1]),
                            "eval.min_classifier_accuracy": 0.0, "eval.num_samples": 12})
  records = evaluate.evaluate_workdir(config, str(workdir))
  assert json.loads((workdir / "eval.json").read_text()) == records
  by_key = {(r.get("protocol"), r["metric"]): r for r in records}
  assert all(math.isfinite(r["value"]) for r in records)
  assert {("config", "class_accuracy"), ("config", "fd_fmnist"), ("marginal", "fd_fmnist"),
          ("marginal", "class_histogram")} <= set(by_key)
  assert ("marginal", "class_accuracy") not in by_key
  assert by_key[("config", "fd_fmnist")]["labels"] == "cycling 0..9"
  assert by_key[("marginal", "fd_fmnist")]["labels"].startswith("none")
  # The JEM's own accuracy, recomputed from its logits on the (mock) test split.
  run, state = workdir_lib.load_trained(str(workdir), config, device=jax.local_devices()[0])
  task, params = run.task, run.task.sample_params(state)
  images, labels = data_lib.load_arrays(config.data, "test")
  x = data_lib.preprocess(images, config.data)
  pred = np.argmax(_np(task.class_logits(params, jnp.asarray(x))), axis=1)
  acc = by_key[(None, "accuracy")]
  assert acc["value"] == pytest.approx(np.mean(pred == labels)) and acc["num_examples"] == len(x)
  # Restoration: recomputed from the images the same program returns for the same key.
  n = config.eval.restore_num
  key = jax.random.fold_in(jax.random.key(config.seed), evaluate._RESTORE_STREAM)
  out = jax.tree.map(_np, task.restoration_run(params, jnp.asarray(x[:n]), key))
  top, left, h, w = task.restoration.box
  orig = x[:n].astype(np.float64)
  sl = (slice(None), slice(top, top + h), slice(left, left + w))
  for name, region in (("inpaint", sl), ("denoise", (slice(None),))):
    for field, img in (("value", out[name]["restored"]), ("corrupted", out[name]["corrupted"])):
      per_image = np.square(img[region] - orig[region]).reshape(n, -1).mean(1)
      rec_mse, rec_psnr = by_key[(None, f"{name}_mse")], by_key[(None, f"{name}_psnr")]
      assert rec_mse[field] == pytest.approx(per_image.mean(), rel=1e-5)
      assert rec_psnr[field] == pytest.approx(np.mean(10 * np.log10(4 / per_image)), rel=1e-5)
      assert rec_mse["num_examples"] == n
  assert by_key[(None, "inpaint_mse")]["box"] == list(task.restoration.box)
  assert by_key[(None, "denoise_mse")]["sigma"] == config.eval.denoise_sigma
  assert {r["ood_set"] for r in records if r["metric"].startswith("ood_auroc_")} == {
      "uniform_noise", "inverted", "vflip", "hflip", "gaussian_noised"}


def test_mode_figures_class_grid_restoration_and_histograms(cond_workdir, monkeypatch):
  config, workdir = cond_workdir
  drawn = {}
  save = figures.save_figure
  def recording_save(fig, path, *args, **kwargs):
    drawn[path.stem] = fig
    save(fig, path, *args, **kwargs)
  monkeypatch.setattr(figures, "save_figure", recording_save)
  written = figure_mode.figures_workdir(config, str(workdir))
  names = ["langevin_chain", "class_grid", "inpainting", "denoising", "energy_histogram",
           "buffer", "energies", "training_curve"]
  assert [p.name for p in written] == [f"{n}.png" for n in names]
  for path in written:
    assert pathlib.Path(path).stat().st_size > 1000
  # Class grid: one row per class, labelled with its name, 10 samples per row.
  (ax,) = drawn["class_grid"].axes
  assert [t.get_text() for t in ax.get_yticklabels()] == list(
      data_lib.class_names("fashion_mnist"))
  h, w = ax.get_images()[0].get_array().shape[:2]
  assert (h, w) == (2 + 10 * 30, 2 + 10 * 30)   # 10 x 10 tiles of 28 + padding 2
  # Restoration: three rows of 10 images, corrupted | restored | original.
  for name in ("inpainting", "denoising"):
    axes = drawn[name].axes
    assert [a.get_ylabel() for a in axes] == ["corrupted", "restored", "original"]
    assert all(a.get_images()[0].get_array().shape[1] == 2 + 10 * 30 for a in axes)
  (ax,) = drawn["energy_histogram"].axes
  legend = [t.get_text().split(" ")[0] for t in ax.get_legend().get_texts()]
  assert legend == ["test", "gaussian_noised", "hflip", "inverted", "uniform_noise", "vflip"]


@pytest.mark.slow  # two short trainings and an evaluation (~1-2 min on 2 cores)
def test_conditional_training_resumes_and_evaluates(tmp_path, classifier):
  def config(steps):
    return config_lib.load(f"{ROOT}/configs/{COND}", {
        "train.steps": steps, "train.ckpt_every": 2, "train.num_samples": 0,
        "eval.classifier_workdir": str(classifier[1]), "eval.min_classifier_accuracy": 0.0,
        "eval.num_samples": 10})
  first = train_lib.train_and_evaluate(config(2), tmp_path)
  labels_before = np.asarray(jax.device_get(first.extras["buffer_labels"]))
  state = train_lib.train_and_evaluate(config(4), tmp_path)
  assert int(state.step) == 4
  # The per-class buffer keeps every class's slots: labels are slot-aligned, not moved.
  np.testing.assert_array_equal(np.asarray(jax.device_get(state.extras["buffer_labels"])),
                                labels_before)
  logged = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("ce" in r and "accuracy" in r for r in logged)
  records = evaluate.evaluate_workdir(config(4), str(tmp_path))
  metrics = {r["metric"] for r in records}
  assert {"accuracy", "class_accuracy", "inpaint_mse", "inpaint_psnr", "denoise_mse",
          "denoise_psnr"} <= metrics
  assert all(r["step"] == 4 for r in records if "step" in r)
