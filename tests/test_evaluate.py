"""`--mode evaluate` on smoke workdirs (classifier, conditional DDPM, EBM) and on .npz files.

Everything runs on `tfds.testing.mock_data`. The classifier (the feature
network) is the session's smoke classifier (tests/conftest.py, trained once
and shared with the figure and JEM tests); the generative workdirs hold their
initial state (the metrics do not need a trained model, and compiling their
train steps would triple the time).
"""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import images as image_lib
from launch import config as config_lib
from launch import data as data_lib
from launch import workdir as workdir_lib
from launch.config_errors import ConfigError
from launch.eval import evaluate
from launch.eval import feature_check
from launch.eval import inception
from helpers import MOCK_EXAMPLES, ROOT, untrained as _untrained

NUM_SAMPLES = 12
PROTOCOL_FIELDS = ("num_samples", "sampler", "steps", "weights", "step", "seed",
                   "uint8_roundtrip")


pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _config(name, **overrides):
  return config_lib.load(f"{ROOT}/configs/{name}.py", overrides)


@pytest.fixture
def classifier(smoke_classifier):
  return smoke_classifier   # (config, workdir, state), trained once per session: conftest.py


def _check_records(records, workdir):
  saved = json.loads((workdir / "eval.json").read_text())
  assert saved == records
  for r in records:
    assert isinstance(r["metric"], str) and math.isfinite(r["value"]), r
  return {(r.get("protocol"), r["metric"]): r for r in records}


def test_classifier_accuracy_and_real_data_floor(classifier):
  config, workdir, state = classifier
  records = evaluate.evaluate_workdir(config, str(workdir))
  task = workdir_lib.prepare(config).task
  images, labels = data_lib.load_arrays(config.data, "test")
  logits = task.apply(jax.device_get(state.ema_params),
                      data_lib.preprocess(images, config.data))[1]
  expected = float(np.mean(np.argmax(logits, -1) == labels))
  assert records[0]["metric"] == "accuracy" and records[0]["num_examples"] == MOCK_EXAMPLES
  np.testing.assert_allclose(records[0]["value"], expected)
  assert records[0]["weights"] == "ema"
  floors = [r for r in records if r["metric"] == "fd_train_vs_test"]
  assert [r["n"] for r in floors] == [1000, 10_000]
  for r in floors:   # capped at the mock split's size
    assert r["num_samples"] == MOCK_EXAMPLES and r["reference_size"] == MOCK_EXAMPLES
    assert r["value"] >= 0
  _check_records(records, workdir)
  # The reference statistics were cached in the classifier workdir, keyed by the checkpoint.
  # (The classifier is the session's: other modules may have cached its accuracy there.)
  cached = sorted(p.name for p in (workdir / "fd_reference").glob("*.npz"))
  assert cached == [f"fashion_mnist_test_n{MOCK_EXAMPLES}_step{config.train.steps}.npz"]
  floor = evaluate.real_data_floor(config, 8, str(workdir))
  assert floor["num_samples"] == 8 and floor["value"] > 0


@pytest.mark.slow
def test_conditional_ddpm_pinned_and_config_sampler(tmp_path_factory, classifier):
  config, workdir = _untrained(tmp_path_factory, "ddpm_mnist_conditional.py:smoke", {"loss": 1.0},
                               **{"data.name": "fashion_mnist", "eval.num_samples": NUM_SAMPLES,
                                  "eval.classifier_workdir": str(classifier[1]),
                                  "eval.nll_images": 6, "eval.min_classifier_accuracy": 0.0})
  records = evaluate.evaluate_workdir(config, str(workdir))
  by_key = _check_records(records, workdir)
  t = config.diffusion.num_timesteps
  assert set(by_key) == {(p, m) for p in ("pinned", "config")
                         for m in ("fd_fmnist", "class_histogram", "class_accuracy")
                         } | {(None, "nll_bpd")}
  # The variational bound of 6 test images (2 batches of sample.batch_size = 4),
  # in bits per 28 x 28 dimension of the (32 x 32 padded) images.
  nll = by_key[(None, "nll_bpd")]
  assert nll["num_images"] == 6 and nll["dims"] == 784 and nll["model_dims"] == 1024
  assert nll["value"] == pytest.approx(nll["bpd_model_dims"] * 1024 / 784, rel=1e-6)
  assert nll["value"] > 0 and nll["weights"] == "ema" and nll["variance"] == "beta"
  with np.load(workdir / nll["terms_file"]) as f:
    assert f["terms_bpd"].shape == f["x0_mse"].shape == (6, t)
    np.testing.assert_allclose(f["total_bpd"], f["prior_bpd"] + f["terms_bpd"].sum(1), rtol=1e-5)
    assert f["total_bpd"].mean() == pytest.approx(nll["bpd_model_dims"], rel=1e-6)
  assert (workdir / nll["figure"]).stat().st_size > 1000
  for protocol, sampler in (("pinned", "ddim"), ("config", "ancestral")):
    fd = by_key[(protocol, "fd_fmnist")]
    for field in PROTOCOL_FIELDS + ("clip_x0", "eta", "reference_split", "reference_size"):
      assert field in fd, field
    assert fd["sampler"] == sampler and fd["steps"] == t and fd["num_samples"] == NUM_SAMPLES
    assert fd["weights"] == "ema" and fd["step"] == 0
    assert fd["uint8_roundtrip"] is True and fd["reference_size"] == MOCK_EXAMPLES
    assert fd["labels"] == "cycling 0..9" and fd["guidance"] == config.sample.guidance
    hist = by_key[(protocol, "class_histogram")]
    assert sum(hist["counts"]) == NUM_SAMPLES and 0 <= hist["value"] <= 1
    acc = by_key[(protocol, "class_accuracy")]
    assert 0 <= acc["value"] <= 1 and len(acc["per_class"]) == 10
  assert by_key[("pinned", "fd_fmnist")]["eta"] == 0.0


@pytest.mark.slow
def test_ebm_samples_and_ood(tmp_path_factory, classifier):
  config, workdir = _untrained(tmp_path_factory, "ebm_fashion_mnist.py:smoke", {"loss": 0.1},
                               **{"eval.classifier_workdir": str(classifier[1]),
                                  "eval.min_classifier_accuracy": 0.0})
  records = evaluate.evaluate_workdir(config, str(workdir))
  by_key = _check_records(records, workdir)
  fd = by_key[("config", "fd_fmnist")]
  assert fd["sampler"] == "langevin" and fd["steps"] == config.ebm.sample_steps
  assert fd["num_samples"] == config.eval.num_samples and fd["weights"] == "raw"
  ood = {r["ood_set"]: r for r in records if r["metric"].startswith("ood_auroc_")}
  assert set(ood) == {"uniform_noise", "inverted", "vflip", "hflip", "gaussian_noised"}
  for r in ood.values():
    assert 0 <= r["value"] <= 1 and r["num_examples"] == MOCK_EXAMPLES


def test_npz_of_the_test_split_scores_zero(tmp_path, classifier):
  config, workdir, _ = classifier
  images, labels = data_lib.load_arrays(config.data, "test")
  # As a PyTorch program would save them: 32x32 padded, NCHW; with their labels.
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))).transpose(0, 3, 1, 2)
  path = tmp_path / "samples.npz"
  np.savez(path, images=padded, labels=labels)
  records = {r["metric"]: r for r in evaluate.evaluate_npz(path, str(workdir),
                                                           min_classifier_accuracy=0.0)}
  assert records["fd_fmnist"]["value"] < 1e-6
  assert records["fd_fmnist"]["num_samples"] == MOCK_EXAMPLES
  assert sum(records["class_histogram"]["counts"]) == MOCK_EXAMPLES
  assert records["class_accuracy"]["value"] == pytest.approx(float(np.mean(
      np.argmax(workdir_lib.prepare(config).task.apply(
          jax.device_get(classifier[2].ema_params),
          data_lib.preprocess(images, config.data))[1], -1) == labels)))
  # The command line, on the first half as [N, H, W] without labels.
  half = tmp_path / "half.npz"
  np.savez(half, images[:MOCK_EXAMPLES // 2, ..., 0])
  out = tmp_path / "half.json"
  assert evaluate.main(["--npz", str(half), "--classifier_workdir", str(workdir),
                        "--out", str(out), "--min_classifier_accuracy=0"]) == 0
  saved = {r["metric"]: r for r in json.loads(out.read_text())}
  assert set(saved) == {"fd_fmnist", "class_histogram"} and saved["fd_fmnist"]["value"] > 0


def _smoke_accuracy(classifier) -> float:
  """The smoke classifier's accuracy on the mock test split, computed here from its logits."""
  config, workdir, state = classifier
  images, labels = data_lib.load_arrays(config.data, "test")
  _, logits = workdir_lib.prepare(config).task.apply(jax.device_get(state.ema_params),
                                                   data_lib.preprocess(images, config.data))
  return float(np.mean(np.argmax(logits, -1) == labels))


def test_weak_feature_network_is_refused_before_sampling(tmp_path_factory, classifier,
                                                         monkeypatch):
  """A smoke classifier's FD means nothing: evaluate says so instead of reporting it."""
  accuracy = _smoke_accuracy(classifier)
  assert accuracy < feature_check.DEFAULT_MIN_ACCURACY   # random mock labels: ~10%
  config, workdir = _untrained(tmp_path_factory, "ddpm_fashion_mnist.py:smoke", {"loss": 1.0},
                               **{"eval.classifier_workdir": str(classifier[1])})
  assert config.eval.min_classifier_accuracy == feature_check.DEFAULT_MIN_ACCURACY
  monkeypatch.setattr(evaluate.sample_lib, "generate", lambda *a, **k: pytest.fail("sampled first"))
  with pytest.raises(feature_check.WeakFeatureNetworkError) as e:
    evaluate.evaluate_workdir(config, str(workdir))
  message = str(e.value)
  assert "\n" not in message and f"{accuracy:.1%}" in message
  assert "config.eval.min_classifier_accuracy=0.85" in message
  assert not (workdir / "eval.json").exists()
  # Cached next to the reference statistics, and the same number as computed here.
  assert feature_check.measure_accuracy(evaluate.load_classifier(str(classifier[1])),
                                        config.data) == pytest.approx(accuracy)
  # Samples from elsewhere: the same bar.
  path = tmp_path_factory.mktemp("npz") / "s.npz"
  np.savez(path, images=np.zeros((4, 28, 28), np.uint8))
  with pytest.raises(feature_check.WeakFeatureNetworkError):
    evaluate.evaluate_npz(path, str(classifier[1]))
  assert evaluate.main(["--npz", str(path), "--classifier_workdir", str(classifier[1])]) == 1


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_lowered_bar_scores_with_the_accuracy_in_every_record(tmp_path_factory, classifier,
                                                              caplog):
  config, workdir = _untrained(tmp_path_factory, "ddpm_fashion_mnist.py:smoke", {"loss": 1.0},
                               **{"eval.classifier_workdir": str(classifier[1]),
                                  "eval.min_classifier_accuracy": 0.0})
  assert config.eval.num_samples <= 16   # the smoke variant draws few samples
  records = evaluate.evaluate_workdir(config, str(workdir))
  accuracy = _smoke_accuracy(classifier)
  for r in records:
    if r["metric"] != "nll_bpd":   # the likelihood uses no feature network
      assert r["feature_network_accuracy"] == pytest.approx(accuracy)
  assert any("not comparable" in r.getMessage() for r in caplog.records)


def test_min_classifier_accuracy_is_validated():
  with pytest.raises(ConfigError, match="eval.min_classifier_accuracy"):
    _config("ddpm_fashion_mnist", **{"eval.min_classifier_accuracy": 1.5})


def test_missing_classifier_says_how_to_train_it(tmp_path):
  config = _config("ddpm_fashion_mnist")   # no eval.classifier_workdir: fails before loading
  with pytest.raises(evaluate.MissingClassifierError) as e:
    evaluate.evaluate_workdir(config, str(tmp_path))
  assert "config.eval.classifier_workdir" in str(e.value)
  assert evaluate.CLASSIFIER_COMMAND in str(e.value)
  with pytest.raises(FileNotFoundError, match="no trained classifier"):
    evaluate.evaluate_npz(tmp_path / "x.npz", str(tmp_path / "nothing"))


def test_missing_inception_weights_say_which_file(tmp_path):
  config = _config("ddpm_cifar10", **{"eval.inception_weights": str(tmp_path / "fid.npz")})
  with pytest.raises(FileNotFoundError) as e:
    evaluate.evaluate_workdir(config, str(tmp_path))
  message = str(e.value)
  assert str(tmp_path / "fid.npz") in message and inception.PTH_FILENAME in message
  assert inception.PTH_URL in message and "python -m launch.eval.inception convert" in message


def test_inception_fid_and_is_with_a_stand_in_network(tmp_path, monkeypatch):
  """The CIFAR-10 path, with a tiny stand-in for the 23M-parameter Inception."""
  def apply_fn(variables, images_uint8):
    x = jnp.asarray(images_uint8, jnp.float32).reshape(images_uint8.shape[0], -1)
    return x[:, :8] @ variables["w"], x[:, :16] @ variables["v"]

  rng = np.random.default_rng(0)
  variables = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
               "v": jnp.asarray(rng.normal(size=(16, 5)) / 100, jnp.float32)}
  monkeypatch.setattr(inception, "load_inception", lambda path: (apply_fn, variables))
  weights = tmp_path / "inception_fid.npz"
  weights.write_bytes(b"")
  data_config = config_lib.load(f"{ROOT}/configs/ddpm_cifar10.py:smoke").data
  real, _ = data_lib.load_arrays(data_config, "train")
  records = {r["metric"]: r for r in evaluate.inception_scores(real, data_config, str(weights))}
  assert records["fid"]["value"] < 1e-6   # the train split against itself
  assert records["fid"]["reference_split"] == "train"
  assert records["fid"]["reference_size"] == MOCK_EXAMPLES
  assert records["inception_score"]["value"] >= 1.0 and records["inception_score"]["splits"] == 10
  assert (tmp_path / f"fid_reference_inception_fid_cifar10_train_n{MOCK_EXAMPLES}.npz").exists()


def test_mode_sample_saves_labels_and_settings_that_npz_evaluation_reads(tmp_path_factory,
                                                                         classifier):
  """Labels of a class-conditional `--mode sample` follow the image's index in the run
  (image i: class i mod 10), not its index in a batch, and are saved with the settings."""
  from launch import sample as sample_lib
  config, workdir = _untrained(tmp_path_factory, "ddpm_mnist_conditional.py:smoke", {"loss": 1.0},
                               **{"data.name": "fashion_mnist", "sample.num": 12,
                                  "sample.batch_size": 8})
  stem = sample_lib.sample_to_workdir(config, str(workdir))
  with np.load(f"{stem}.npz") as f:
    images, labels, sampling = f["images"], f["labels"], json.loads(str(f["sampling"]))
  np.testing.assert_array_equal(labels, np.arange(12) % 10)  # not 0..7, 0..3
  assert sampling == {"sampler": "ancestral", "steps": config.diffusion.num_timesteps,
                      "clip_x0": bool(config.sample.clip_x0), "eta": None,
                      "variance": config.sample.variance,
                      "guidance": config.sample.guidance, "label": -1, "weights": "ema",
                      "step": 0, "seed": config.seed}
  # The second batch's images were sampled for classes 8, 9, 0, 1.
  run, state = workdir_lib.load_trained(str(workdir), config, device=jax.local_devices()[0])
  key = jax.random.fold_in(jax.random.fold_in(run.keys["sample"], config.seed), 8)
  params = run.task.sample_params(state)
  direct = [np.asarray(run.task.sample(params, key, 8, label=jnp.asarray(np.resize(lab, 8))))[:4]
            for lab in ([8, 9, 0, 1], [0, 1, 2, 3])]
  diffs = [np.abs(images[8:].astype(int) - image_lib.to_uint8(d).astype(int)).max() for d in direct]
  assert diffs[0] <= 1 and diffs[1] > 1, diffs
  # The .npz evaluation reads both.
  records = evaluate.evaluate_npz(f"{stem}.npz", str(classifier[1]), min_classifier_accuracy=0.0)
  by_metric = {r["metric"]: r for r in records}
  accuracy = by_metric["class_accuracy"]
  assert accuracy["labels"] == "from the file" and accuracy["guidance"] == config.sample.guidance
  assert accuracy["sampler"] == "ancestral" and accuracy["num_samples"] == 12
  bad = tmp_path_factory.mktemp("bad_npz") / "bad.npz"
  np.savez(bad, images=images, labels=labels[:5])
  with pytest.raises(ValueError, match="expected 12 integer labels"):
    evaluate.load_npz_images(bad)
