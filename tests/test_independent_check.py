"""The independent check of `--mode evaluate` (docs/evaluation.md).

The independent network (configs/classifier_fashion_mnist.py:independent_smoke,
an MLP-Mixer) is trained once per module on `tfds.testing.mock_data` through
the launch path; it also stands in for the project's classifier, so one
smoke training serves both roles. The generative workdir holds its initial
state (the metrics do not need a trained model).
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import classifier_fashion_mnist
from core import classifier_task as classifier_task_lib
from core import images as image_lib
from core import nearest
from launch import config as config_lib
from launch import data as data_lib
from launch import train as train_lib
from launch.config_errors import ConfigError
from launch.eval import evaluate
from launch.eval import feature_check
from launch.tasks import classifier as classifier_task
from helpers import untrained as _untrained

ROOT = pathlib.Path(__file__).resolve().parent.parent
MOCK_EXAMPLES = 40
NUM_SAMPLES = 12


pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


@pytest.fixture(scope="module")
def independent(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("independent")
  config = config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py:independent_smoke")
  state = train_lib.train_and_evaluate(config, workdir)
  return config, workdir, state


# ----------------------------------------------------------------------------
# Nearest neighbours.


def _brute_force(queries, keys):
  """float64 NumPy: every query-key distance, the nearest of each row."""
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  k = np.asarray(keys, np.float64).reshape(len(keys), -1)
  d = np.sqrt(((q[:, None, :] - k[None, :, :]) ** 2).sum(-1))
  return d.min(1), d.argmin(1)


def test_nearest_neighbour_matches_numpy_brute_force():
  rng = np.random.default_rng(0)
  keys = rng.random((37, 6, 5, 1), np.float32)
  queries = rng.random((23, 6, 5, 1), np.float32)
  queries[[3, 11, 22]] = keys[[0, 36, 17]]          # copies: distance exactly 0
  distance, index = nearest.nearest_neighbour(queries, keys, block=8)   # 3 blocks, last padded
  want_d, want_i = _brute_force(queries, keys)
  np.testing.assert_array_equal(index, want_i)
  np.testing.assert_allclose(distance, want_d, rtol=1e-5, atol=1e-6)
  assert distance[[3, 11, 22]].tolist() == [0.0, 0.0, 0.0]
  assert distance.shape == (23,) and distance.dtype == np.float32
  with pytest.raises(ValueError, match="cannot be compared"):
    nearest.nearest_neighbour(queries, keys[:, :5])


def test_nearest_summary_fields():
  fields = nearest.summary(np.array([1.0, 2.0, 6.0]), np.array([2.0, 4.0]), (28, 28, 1))
  assert fields["value"] == 3.0 and fields["median"] == 2.0
  assert fields["test_value"] == 3.0 and fields["ratio"] == 1.0 and fields["num_test"] == 2
  assert "at most 28.0" in fields["pixel_space"]


# ----------------------------------------------------------------------------
# The network and its training augmentation.


def test_random_shift_is_a_translation_with_black_border():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (5, 7, 6, 1)).astype(np.float32)
  key = jax.random.key(3)
  shifted = np.asarray(classifier_task_lib.random_shift(jnp.asarray(x), key, 2))
  offsets = np.asarray(jax.random.randint(key, (5, 2), 0, 5))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  for b, (dy, dx) in enumerate(offsets):
    np.testing.assert_array_equal(shifted[b], padded[b, dy:dy + 7, dx:dx + 6])
  assert len({tuple(o) for o in offsets}) > 1   # each image its own offset
  np.testing.assert_array_equal(classifier_task_lib.random_shift(jnp.asarray(x), key, 0), x)


def test_independent_variant_is_a_different_network_on_unpadded_images():
  config = classifier_fashion_mnist.get_config("independent")
  main = classifier_fashion_mnist.get_config()
  task = classifier_task.build(config)
  assert type(task.net).__name__ == "MixerClassifier" and task.image_shape == (28, 28, 1)
  assert type(classifier_task.build(main).net).__name__ == "ClassifierCNN"
  assert config.seed != main.seed and config.data.random_shift == 1
  assert not config.data.random_flip and not config.data.pad_to_32
  features, logits = task.net.apply(task.net.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)),
                                                  train=False),
                                    jnp.zeros((2, 28, 28, 1)), train=False)
  assert features.shape == (2, 128) and logits.shape == (2, 10)


# ----------------------------------------------------------------------------
# Config errors name the key.


@pytest.mark.parametrize("key, value", [
    ("eval.min_independent_accuracy", 1.5),
    ("eval.nearest_train_images", -1),
    ("data.random_shift", -1),
    ("model.patch_size", 5),
])
def test_config_errors_name_the_key(key, value):
  spec = ("classifier_fashion_mnist.py:independent" if key.startswith(("data.", "model."))
          else "ddpm_fashion_mnist.py")
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    config_lib.validate(config_lib.load(f"{ROOT}/configs/{spec}", {key: value}))


def test_missing_independent_network_is_named_before_loading(tmp_path, independent):
  config = config_lib.load(f"{ROOT}/configs/ddpm_fashion_mnist.py", {
      "eval.classifier_workdir": str(independent[1]),
      "eval.independent_workdir": str(tmp_path / "nothing")})
  with pytest.raises(evaluate.MissingClassifierError) as e:
    evaluate.evaluate_workdir(config, str(tmp_path))   # no model there: fails before it
  assert "config.eval.independent_workdir" in str(e.value)
  assert evaluate.INDEPENDENT_COMMAND in str(e.value)


# ----------------------------------------------------------------------------
# Scores.


def test_fd_of_the_test_split_against_itself_is_zero(independent):
  config, workdir, _ = independent
  network = evaluate.load_classifier(str(workdir), key="eval.independent_workdir")
  images, labels = data_lib.load_arrays(config.data, "test")
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))   # 32x32: centre-cropped back
  records = {r["metric"]: r for r in evaluate.independent_scores(
      network, padded, config.data, labels=labels, split="test")}
  assert set(records) == {"fd_independent", "entropy_independent",
                          "class_accuracy_independent"}
  assert abs(records["fd_independent"]["value"]) < 1e-6
  assert records["fd_independent"]["reference_size"] == MOCK_EXAMPLES
  assert all(r["check"] == "independent" for r in records.values())
  # Its cache sits in the independent workdir, not the project classifier's.
  assert any((workdir / "fd_reference").glob("fashion_mnist_test_n*_step*.npz"))
  # Pixel distances: uint8 samples at 32x32 against the (unpadded) training images.
  nn = evaluate.nearest_train(config.data, 1000, MOCK_EXAMPLES)
  train_images, _ = data_lib.load_arrays(config.data, "train")
  assert nn.train.shape == (MOCK_EXAMPLES, 784)       # capped at the split, flattened 28x28
  samples = np.random.default_rng(2).integers(0, 256, (9, 32, 32, 1)).astype(np.uint8)
  want, _ = _brute_force(samples[:, 2:30, 2:30] / 255.0, train_images / 255.0)
  record = nn.record(samples)
  assert record["value"] == pytest.approx(want.mean(), rel=1e-5)
  # Copies of training images are at distance exactly 0 (mock data: test == train).
  assert nn.record(np.pad(train_images, ((0, 0), (2, 2), (2, 2), (0, 0))))["value"] == 0.0
  assert record["test_value"] == 0.0 and record["ratio"] is None


def test_weak_independent_network_is_refused_before_sampling(tmp_path_factory, independent,
                                                             monkeypatch):
  config, workdir = _untrained(
      tmp_path_factory, "ddpm_fashion_mnist.py:smoke", {"loss": 1.0},
      **{"eval.classifier_workdir": str(independent[1]), "eval.min_classifier_accuracy": 0.0,
         "eval.independent_workdir": str(independent[1])})
  monkeypatch.setattr(evaluate.sample_lib, "generate", lambda *a, **k: pytest.fail("sampled first"))
  with pytest.raises(feature_check.WeakFeatureNetworkError) as e:
    evaluate.evaluate_workdir(config, str(workdir))
  assert "config.eval.min_independent_accuracy=0.85" in str(e.value)
  assert evaluate.INDEPENDENT_COMMAND in str(e.value)


def test_conditional_evaluation_records_the_independent_check(tmp_path_factory, independent,
                                                              capsys):
  overrides = {"data.name": "fashion_mnist", "eval.num_samples": NUM_SAMPLES,
               "eval.classifier_workdir": str(independent[1]), "eval.nll_images": 0,
               "eval.min_classifier_accuracy": 0.0, "eval.min_independent_accuracy": 0.0,
               "eval.independent_workdir": str(independent[1])}
  config, workdir = _untrained(tmp_path_factory, "ddpm_mnist_conditional.py:smoke",
                               {"loss": 1.0}, **overrides)
  records = evaluate.evaluate_workdir(config, str(workdir))
  by_key = {(r.get("protocol"), r["metric"]): r for r in records}
  metrics = ("fd_fmnist", "class_histogram", "class_accuracy", "fd_independent",
             "entropy_independent", "class_accuracy_independent", "nn_train_distance")
  assert set(by_key) == {(p, m) for p in ("pinned", "config") for m in metrics}
  for protocol in ("pinned", "config"):
    r = {m: by_key[(protocol, m)] for m in metrics}
    # The same network in both roles: the same numbers under both names.
    assert r["fd_independent"]["value"] == pytest.approx(r["fd_fmnist"]["value"])
    assert r["entropy_independent"]["counts"] == r["class_histogram"]["counts"]
    assert r["class_accuracy_independent"]["per_class"] == r["class_accuracy"]["per_class"]
    assert 0 <= r["entropy_independent"]["value"] <= 1
    assert "independent_network_accuracy" in r["fd_independent"]
    nn = r["nn_train_distance"]
    assert nn["num_samples"] == NUM_SAMPLES and nn["num_test"] == NUM_SAMPLES
    assert nn["num_train"] == min(config.data.num_examples, MOCK_EXAMPLES)
    assert 0 < nn["value"] <= 28 and nn["test_value"] == 0.0   # mock data: test == train
    # The scored samples themselves, 10 to a row, next to eval.json.
    fd = r["fd_fmnist"]
    path = evaluate.scored_grid_path(workdir, fd)
    assert path.name == f"{protocol}_{fd['sampler']}{fd['steps']}.png"
    grid = np.asarray(Image.open(path))
    tiles = image_lib.image_grid(np.zeros((min(NUM_SAMPLES, evaluate.GRID_SIZE), 32, 32, 1),
                                        np.uint8), nrow=10)
    assert grid.shape[:2] == image_lib.upscale_nearest(tiles).shape[:2] and grid.std() > 0
  # Unset: skipped, and said so.
  config, workdir = _untrained(tmp_path_factory, "ddpm_mnist_conditional.py:smoke", {"loss": 1.0},
                               **dict(overrides, **{"eval.independent_workdir": ""}))
  records = evaluate.evaluate_workdir(config, str(workdir))
  assert not any("independent" in r["metric"] or r["metric"] == "nn_train_distance"
                 for r in records)
  assert "independent check is skipped" in capsys.readouterr().out


def test_npz_samples_get_the_independent_check(tmp_path, independent):
  config, workdir, _ = independent
  images, labels = data_lib.load_arrays(config.data, "test")
  path = tmp_path / "samples.npz"
  np.savez(path, images=images.transpose(0, 3, 1, 2), labels=labels)   # as PyTorch saves them
  out = tmp_path / "eval.json"
  assert evaluate.main(["--npz", str(path), "--classifier_workdir", str(workdir),
                        "--independent_workdir", str(workdir), "--out", str(out),
                        "--min_classifier_accuracy=0", "--min_independent_accuracy=0"]) == 0
  records = {r["metric"]: r for r in json.loads(out.read_text())}
  assert set(records) == {"fd_fmnist", "class_histogram", "class_accuracy", "fd_independent",
                          "entropy_independent", "class_accuracy_independent",
                          "nn_train_distance"}
  assert abs(records["fd_independent"]["value"]) < 1e-6
  assert records["nn_train_distance"]["value"] == 0.0   # mock data: test == train
  assert "independent_network_accuracy" in records["fd_independent"]
  # The bar applies to samples from elsewhere too, and names its own key.
  with pytest.raises(feature_check.WeakFeatureNetworkError, match="min_independent_accuracy"):
    evaluate.evaluate_npz(path, str(workdir), min_classifier_accuracy=0.0,
                          independent_workdir=str(workdir))


def test_corruptions_of_the_demo_table():
  from launch.eval import corruptions
  flat = np.full((2, 28, 28, 1), 100.0)
  sets = corruptions.corrupted_sets(flat)
  np.testing.assert_allclose(sets["test, 3x3 box blur"], flat)   # a constant is its own blur
  dark = np.zeros((1, 28, 28, 1))
  grey = corruptions.corrupted_sets(dark)["test, grey background (pixels < 30 set to 64)"]
  assert np.all(grey == 64.0)
  speckled = corruptions.corrupted_sets(dark)["test, speckle on the item (sigma = 40 grey levels)"]
  np.testing.assert_array_equal(speckled, dark)   # no item: nothing speckled
