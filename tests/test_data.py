"""Tests of launch/data.py: mock tfds data, the IDX path, errors and the CLI."""
from __future__ import annotations

import gzip
import hashlib
import pathlib
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from launch import data
from launch.config_errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
FASHION_DIR = pathlib.Path(data.DEBIAN_FASHION_MNIST_DIR)
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason=f"{FASHION_DIR} is absent (apt-get install dataset-fashion-mnist)")
MOCK_N = 64


def _cfg(tmp_path, **overrides):
  """The base `data` section, with empty tmp dirs so no real data is found by accident."""
  c = base.get_base().data
  c.data_dir = str(tmp_path / "tfds")
  c.manual_dir = str(tmp_path / "idx")
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def _stack(source, steps):
  return {k: np.concatenate([source[s][k] for s in steps]) for k in ("image", "label")}


def _row_keys(images):
  return [row.tobytes() for row in images]


# ----------------------------------------------------------------- config --


def test_unknown_name_is_a_config_error_before_loading(tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("tfds was called for an invalid config")
  monkeypatch.setattr(tfds, "data_source", fail)
  cfg = _cfg(tmp_path, name="imagenet")
  for call in (lambda: data.validate(cfg), lambda: data.get_info(cfg),
               lambda: data.make_train_batches(cfg, global_batch_size=8, seed=0)):
    with pytest.raises(ConfigError) as e:
      call()
    assert e.value.key == "data.name"
    assert "fashion_mnist" in str(e.value) and "cifar10" in str(e.value)


@pytest.mark.parametrize("key,value,overrides", [
    ("data.pad_to_32", True, {"name": "cifar10"}),
    ("data.random_flip", "yes", {}),
    ("data.num_examples", 0, {}),
    ("data.split", "validation", {}),
])
def test_bad_values_name_the_key(tmp_path, key, value, overrides):
  cfg = types.SimpleNamespace(**_cfg(tmp_path, **overrides).to_dict())  # any object will do
  setattr(cfg, key.split(".")[1], value)
  with pytest.raises(ConfigError) as e:
    data.validate(cfg)
  assert e.value.key == key


def test_batch_size_must_divide_by_hosts(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    with pytest.raises(ConfigError, match="divisible") as e:
      data.make_train_batches(_cfg(tmp_path), global_batch_size=9, seed=0, process_count=2)
  assert e.value.key == "train.batch_size"


# ------------------------------------------------------------- mock tfds --


@pytest.mark.parametrize("name,pad,shape", [
    ("fashion_mnist", False, (28, 28, 1)),
    ("mnist", True, (32, 32, 1)),
    ("cifar10", False, (32, 32, 3)),
])
def test_mock_batches_shape_dtype_range(tmp_path, name, pad, shape):
  cfg = _cfg(tmp_path, name=name, pad_to_32=pad)
  with tfds.testing.mock_data(num_examples=MOCK_N):
    info = data.get_info(cfg)
    assert info == data.DatasetInfo(name, shape, 10, MOCK_N)
    images, labels = data.load_arrays(cfg, "test")
    source = data.make_train_batches(cfg, global_batch_size=16, seed=0)
    batch = source[3]
  assert images.dtype == np.uint8 and images.shape == (MOCK_N, *data._SPECS[name].image_shape)
  assert labels.dtype == np.int32 and labels.shape == (MOCK_N,)
  assert source.info == info
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, *shape)
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  assert batch["image"].std() > 0.1
  assert np.all((batch["label"] >= 0) & (batch["label"] < 10))


def test_preprocess_range_and_black_padding(tmp_path):
  images = np.array([[[[0], [255]], [[128], [7]]]], np.uint8)   # [1, 2, 2, 1]
  out = data.preprocess(images, _cfg(tmp_path))
  np.testing.assert_allclose(out[0, ..., 0], [[-1, 1], [128 / 127.5 - 1, 7 / 127.5 - 1]],
                             atol=1e-6)
  assert out.dtype == np.float32
  with tfds.testing.mock_data(num_examples=MOCK_N):
    plain = data.make_train_batches(_cfg(tmp_path, name="mnist"), global_batch_size=8, seed=1)
    padded = data.make_train_batches(_cfg(tmp_path, name="mnist", pad_to_32=True),
                                     global_batch_size=8, seed=1)
    x, x_pad = plain[2]["image"], padded[2]["image"]
  assert x_pad.shape == (8, 32, 32, 1)
  np.testing.assert_array_equal(x_pad[:, 2:30, 2:30], x)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  np.testing.assert_array_equal(x_pad[:, border], -1.0)


def test_flips_only_when_enabled_and_deterministic(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    plain = data.make_train_batches(_cfg(tmp_path, name="cifar10"), global_batch_size=32, seed=3)
    cfg_flip = _cfg(tmp_path, name="cifar10", random_flip=True)
    flip = data.make_train_batches(cfg_flip, global_batch_size=32, seed=3)
    again = data.make_train_batches(cfg_flip, global_batch_size=32, seed=3)
    images, _ = data.load_arrays(_cfg(tmp_path, name="cifar10"), "train")
    a, b, c = plain[5], flip[5], again[5]
  # Without flips every row is an unmodified example.
  examples = set(_row_keys(data.preprocess(images, _cfg(tmp_path, name="cifar10"))))
  assert set(_row_keys(a["image"])) <= examples
  np.testing.assert_array_equal(a["label"], b["label"])  # flips do not change the order
  same = np.all(a["image"] == b["image"], axis=(1, 2, 3))
  mirrored = np.all(a["image"][:, :, ::-1] == b["image"], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 0 < mirrored.sum() < 32
  np.testing.assert_array_equal(b["image"], c["image"])


def test_same_seed_same_batch_other_seed_other_order(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path)
    s0, s0b, s1 = (data.make_train_batches(cfg, global_batch_size=16, seed=s) for s in (0, 0, 1))
    for step in (0, 7):
      np.testing.assert_array_equal(s0[step]["image"], s0b[step]["image"])
      np.testing.assert_array_equal(s0[step]["label"], s0b[step]["label"])
    assert not np.array_equal(s0[0]["image"], s1[0]["image"])


def test_each_epoch_is_a_fresh_permutation(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path)
    source = data.make_train_batches(cfg, global_batch_size=16, seed=0)
    epoch0, epoch1 = _stack(source, range(4)), _stack(source, range(4, 8))
    all_rows = _row_keys(data.preprocess(data.load_arrays(cfg, "train")[0], cfg))
  for epoch in (epoch0, epoch1):
    assert sorted(_row_keys(epoch["image"])) == sorted(all_rows)
  assert _row_keys(epoch0["image"]) != _row_keys(epoch1["image"])


def test_resume_gives_the_same_stream(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path, name="cifar10", random_flip=True)
    source = data.make_train_batches(cfg, global_batch_size=24, seed=5)
    it = source.iterate(0)
    seen = [next(it) for _ in range(6)]   # crosses the first epoch boundary (64 / 24)
    it.close()
    fresh = data.make_train_batches(cfg, global_batch_size=24, seed=5)
    resumed = fresh.iterate(4)
    step, batch = next(resumed)
    resumed.close()
  assert [s for s, _ in seen] == list(range(6))
  assert step == 4
  np.testing.assert_array_equal(batch["image"], seen[4][1]["image"])
  for k in (3, 5):
    np.testing.assert_array_equal(fresh[k]["image"], seen[k][1]["image"])
    np.testing.assert_array_equal(fresh[k]["label"], seen[k][1]["label"])


def test_host_shards_are_disjoint_and_form_the_global_batch(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path, name="cifar10", random_flip=True)
    single = data.make_train_batches(cfg, global_batch_size=16, seed=2)
    hosts = [data.make_train_batches(cfg, global_batch_size=16, seed=2, process_index=p,
                                     process_count=2) for p in range(2)]
    for step in (0, 3, 9):
      shards = [h[step] for h in hosts]
      assert all(s["image"].shape[0] == 8 for s in shards)
      assert not set(_row_keys(shards[0]["image"])) & set(_row_keys(shards[1]["image"]))
      for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]),
                                      single[step][key])


def test_eval_batches_in_order_without_flips(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path, name="cifar10", random_flip=True)
    images, labels = data.load_arrays(cfg, "test")
    batches = list(data.eval_batches(cfg, "test", 24))
    hosts = [list(data.eval_batches(cfg, "test", 24, process_index=p, process_count=2))
             for p in range(2)]
  assert [len(b["label"]) for b in batches] == [24, 24, 16]
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]),
                                data.preprocess(images, cfg))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)
  assert len(hosts[0]) == len(hosts[1]) == 3
  for b, h0, h1 in zip(batches, *hosts):
    np.testing.assert_array_equal(np.concatenate([h0["image"], h1["image"]]), b["image"])


def test_num_examples_limits_the_split(tmp_path):
  with tfds.testing.mock_data(num_examples=MOCK_N):
    cfg = _cfg(tmp_path, num_examples=10)
    assert data.get_info(cfg).num_examples == 10
    first10, _ = data.load_arrays(cfg, "train")
    source = data.make_train_batches(cfg, global_batch_size=8, seed=0)
    drawn = _stack(source, range(5))["image"]
    cfg.num_examples = 1000   # more than the split: all of it
    assert data.get_info(cfg).num_examples == MOCK_N
    everything, _ = data.load_arrays(cfg, "train")
  np.testing.assert_array_equal(first10, everything[:10])
  assert set(_row_keys(drawn)) == set(_row_keys(data.preprocess(first10, cfg)))


@needs_fashion
def test_mock_data_wins_over_idx_files(tmp_path):
  cfg = _cfg(tmp_path, manual_dir="")   # Debian's real files are there
  with tfds.testing.mock_data(num_examples=MOCK_N):
    assert data.get_info(cfg).num_examples == MOCK_N


# -------------------------------------------------------- missing / corrupt --


@pytest.mark.parametrize("name,hints", [
    ("fashion_mnist", ["apt-get install dataset-fashion-mnist", "--config.data.manual_dir=",
                       "python -m launch.data prepare fashion_mnist"]),
    ("mnist", ["--config.data.manual_dir=", "python -m launch.data prepare mnist"]),
    ("cifar10", ["python -m launch.data prepare cifar10"]),
])
def test_missing_data_says_how_to_get_it(tmp_path, name, hints):
  (tmp_path / "idx").mkdir()
  (tmp_path / "tfds").mkdir()
  cfg = _cfg(tmp_path, name=name)
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.make_train_batches(cfg, global_batch_size=8, seed=0)
  assert isinstance(e.value, FileNotFoundError)
  for hint in hints:
    assert hint in str(e.value)
  if name == "cifar10":
    assert "apt-get" not in str(e.value) and "manual_dir" not in str(e.value)
  assert list((tmp_path / "tfds").iterdir()) == []   # looking did not write anything


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
  return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + body


def _write_test_split(directory: pathlib.Path, images: bytes, labels: bytes,
                      compress: bool = True):
  directory.mkdir(exist_ok=True)
  for stem, content in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
    if compress:
      (directory / f"{stem}.gz").write_bytes(gzip.compress(content))
    else:
      (directory / stem).write_bytes(content)


_GOOD_IMAGES = _idx(0x803, (5, 28, 28), bytes(5 * 28 * 28))
_GOOD_LABELS = _idx(0x801, (5,), bytes(5))


@pytest.mark.parametrize("images,labels,compress,match", [
    (_idx(0x804, (5, 28, 28), bytes(5 * 28 * 28)), _GOOD_LABELS, True, "bad IDX magic"),
    (_GOOD_IMAGES, _idx(0x803, (5,), bytes(5)), True, "bad IDX magic"),
    (_GOOD_IMAGES[:-100], _GOOD_LABELS, False, "truncated"),
    (_GOOD_IMAGES, _idx(0x801, (6,), bytes(6)), True, "5 images but .* 6 labels"),
    (_GOOD_IMAGES, _GOOD_LABELS, True, "sha256 of the decompressed contents"),
])
def test_corrupt_idx_files_are_reported(tmp_path, images, labels, compress, match):
  _write_test_split(tmp_path / "idx", images, labels, compress)
  with pytest.raises(data.DatasetCorruptError, match=match):
    data.load_arrays(_cfg(tmp_path), "test")


def test_truncated_gzip_is_reported(tmp_path):
  (tmp_path / "idx").mkdir()
  (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_GOOD_IMAGES)[:-30])
  (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_GOOD_LABELS))
  with pytest.raises(data.DatasetCorruptError, match="not a complete gzip file"):
    data.get_info(_cfg(tmp_path, split="test"))


# ------------------------------------------------------- real Fashion-MNIST --


@needs_fashion
def test_real_fashion_mnist_from_debian(tmp_path):
  cfg = _cfg(tmp_path, manual_dir="")   # "" = Debian's path; empty tfds data_dir
  train_info, test_info = data.get_info(cfg, "train"), data.get_info(cfg, "test")
  assert train_info == data.DatasetInfo("fashion_mnist", (28, 28, 1), 10, 60_000)
  assert test_info.num_examples == 10_000
  start = time.perf_counter()
  images, labels = data.load_arrays(cfg, "train")   # decoded and verified by get_info above
  assert time.perf_counter() - start < 1.0
  assert images.shape == (60_000, 28, 28, 1) and images.dtype == np.uint8
  assert labels[0] == 9   # the first training image is an ankle boot
  _, test_labels = data.load_arrays(cfg, "test")
  np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), [1000] * 10)
  split = data._open(cfg, "test")
  assert split.origin == f"IDX files in {FASHION_DIR}"
  assert len(split.checks) == 2 and all(c.endswith("ok") for c in split.checks)
  batch = data.make_train_batches(_cfg(tmp_path, manual_dir="", pad_to_32=True),
                                  global_batch_size=16, seed=0)[0]
  assert batch["image"].shape == (16, 32, 32, 1)


@needs_fashion
def test_real_fashion_mnist_checksums_are_enforced(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  shutil.copy(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", idx)
  raw = bytearray(gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()))
  assert hashlib.sha256(raw).hexdigest() == data._SPECS["fashion_mnist"].idx_sha256[
      "t10k-images-idx3-ubyte"]
  (idx / "t10k-images-idx3-ubyte").write_bytes(raw)   # uncompressed copies are read too
  assert data.get_info(_cfg(tmp_path), "test").num_examples == 10_000
  raw[5000] ^= 0xFF
  (idx / "t10k-images-idx3-ubyte").write_bytes(raw)
  with pytest.raises(data.DatasetCorruptError, match="sha256"):
    data.load_arrays(_cfg(tmp_path), "test")
  # Fashion-MNIST files offered as MNIST: the message names the right dataset.
  with pytest.raises(data.DatasetCorruptError, match="fashion_mnist's files"):
    data.load_arrays(_cfg(tmp_path, name="mnist", manual_dir=str(FASHION_DIR)), "test")


# -------------------------------------------------------------------- CLI --


@needs_fashion
def test_cli_prepare_reports_what_it_found(tmp_path, capsys):
  assert data.main(["prepare", "fashion_mnist", "--data_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "train: 60000 examples" in out and "test: 10000 examples" in out
  assert "(1000 to 1000 per class)" in out
  assert out.count("ok") >= 4


def test_cli_prepare_missing_exits_nonzero(tmp_path):
  (tmp_path / "idx").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "launch.data", "prepare", "fashion_mnist", "--no_download",
       "--data_dir", str(tmp_path / "tfds"), "--manual_dir", str(tmp_path / "idx")],
      cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 1
  assert "apt-get install dataset-fashion-mnist" in result.stderr


def test_cli_info(tmp_path, capsys):
  assert data.main(["info", "--data_dir", str(tmp_path), "--manual_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  for name in data.NAMES:
    assert f"{name}: NOT AVAILABLE" in out


# ------------------------------------------------------------ quiet probe --


def test_tfds_probe_does_not_warn_about_its_empty_variant_folder(tmp_path, caplog):
  """Reading the IDX files probes tfds first; its 'has no dataset_info.json' stays silent."""
  import logging
  caplog.set_level(logging.INFO)
  source, reason = data._open_tfds(data._SPECS["fashion_mnist"], "test", str(tmp_path / "tfds"))
  assert source is None and reason.startswith("tfds: no prepared dataset at")
  assert not [r for r in caplog.records if "dataset_info.json" in r.getMessage()]
  # The silencing is scoped to the probe: nothing stays installed on absl's logger ...
  assert logging.getLogger("absl").filters == []
  # ... and the same tfds check outside the probe still warns (the test sees the bug).
  from tensorflow_datasets.core.utils import file_utils
  from etils import epath
  folder = epath.Path(tmp_path / "tfds" / "fashion_mnist" / "3.0.1")
  folder.mkdir(parents=True)
  assert not file_utils.is_valid_variant_dir(folder)
  assert [r for r in caplog.records if "dataset_info.json" in r.getMessage()]
