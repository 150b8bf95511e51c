"""Image datasets as NumPy batches: NHWC, float32 in [-1, 1], per host.

Datasets by name: `fashion_mnist`, `mnist` (28x28x1, optionally padded to
32x32 with black) and `cifar10` (32x32x3, optional horizontal flips).

Where the data comes from, in this order, for each split:

1. A tfds dataset prepared in array_record format in `data.data_dir` (read
   with `tfds.data_source(..., download=False)`, no TensorFlow needed). Under
   `tfds.testing.mock_data` this is the mock.
2. MNIST family only: the original IDX files in `data.manual_dir` ("" means
   Debian's /usr/share/datasets/fashion-mnist, from `apt-get install
   dataset-fashion-mnist`). The headers are validated and the sha256 of the
   decompressed bytes is checked against the pinned upstream values (Debian
   recompressed the .gz files, so only the decompressed bytes match
   upstream). Decoded arrays are cached in-process.
3. Otherwise `DatasetNotFoundError`, whose message says how to get the data.

Training batches are a pure function of (seed, step, process index): a grain
`MapDataset` shuffles the example indices with a fresh permutation per epoch,
draws the flips from each element's position in that infinite stream, and
cuts the stream into global batches, of which each host takes its own
contiguous rows. A resumed run asks for `source[step]` and gets exactly the
batch the interrupted run would have seen.

Check or prepare a dataset from the command line:

  python -m launch.data prepare fashion_mnist [--manual_dir DIR] [--data_dir DIR]
  python -m launch.data info
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import operator
import os
import pathlib
import sys
import threading
import types
import zlib
from typing import Any, Callable, Iterator

from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds

from launch.config_errors import ConfigError
from launch.config_errors import check_choice

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")

# IDX file names of each split: (images, labels), stored gzipped or not.
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What is known about a dataset before reading it."""
  name: str
  image_shape: tuple[int, int, int]           # (H, W, C) as stored
  num_classes: int
  split_sizes: dict[str, int]
  # sha256 of the decompressed upstream IDX files; empty = no IDX path.
  idx_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
  default_manual_dir: str = ""                # "" = none
  class_names: tuple[str, ...] = ()           # num_classes names, for figures


MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


_SPECS = {
    "fashion_mnist": _Spec(
        name="fashion_mnist", image_shape=(28, 28, 1), num_classes=10,
        split_sizes={"train": 60_000, "test": 10_000},
        idx_sha256={
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        default_manual_dir=DEBIAN_FASHION_MNIST_DIR, class_names=FASHION_MNIST_CLASSES),
    "mnist": _Spec(
        name="mnist", image_shape=(28, 28, 1), num_classes=10,
        split_sizes={"train": 60_000, "test": 10_000},
        idx_sha256={
            "train-images-idx3-ubyte":
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte":
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte":
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte":
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        }, class_names=MNIST_CLASSES),
    "cifar10": _Spec(
        name="cifar10", image_shape=(32, 32, 3), num_classes=10,
        split_sizes={"train": 50_000, "test": 10_000}, class_names=CIFAR10_CLASSES),
}
NAMES = tuple(_SPECS)
MNIST_FAMILY = tuple(name for name, spec in _SPECS.items() if spec.idx_sha256)


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is in none of the places searched; the message says how to get it."""


class DatasetCorruptError(ValueError):
  """Dataset files exist but are damaged or are not the expected dataset."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A dataset split as the model sees it.

  Attributes:
    name: dataset name (`data.name`).
    image_shape: (H, W, C) of the batches, after padding.
    num_classes: number of labels.
    num_examples: examples of the split used (after `data.num_examples`).
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: int


# ------------------------------------------------------------------ config --


def validate(data_config) -> None:
  """Checks the `data` section without touching the filesystem.

  Args:
    data_config: the `config.data` section (any object with its attributes).

  Raises:
    ConfigError: naming the first bad `data.*` key.
  """
  name = check_choice("data.name", data_config.name, NAMES)
  check_choice("data.split", data_config.split, SPLITS)
  check_choice("data.eval_split", data_config.eval_split, SPLITS)
  for key in ("pad_to_32", "random_flip"):
    value = getattr(data_config, key)
    if not isinstance(value, (bool, np.bool_)):
      raise ConfigError(f"data.{key}", value, allowed=(True, False))
  if data_config.pad_to_32 and name not in MNIST_FAMILY:
    raise ConfigError("data.pad_to_32", data_config.pad_to_32,
                      reason=f"only the 28x28 MNIST family ({', '.join(MNIST_FAMILY)}) is "
                             f"padded; {name} is already {_SPECS[name].image_shape[:2]}")
  num = data_config.num_examples
  if not _is_int(num) or not (num == -1 or num > 0):
    raise ConfigError("data.num_examples", num, allowed="-1 (all) or a positive integer")
  for key in ("data_dir", "manual_dir"):
    value = getattr(data_config, key)
    if not isinstance(value, (str, os.PathLike)):
      raise ConfigError(f"data.{key}", value, allowed='a directory path, or "" for the default')


def image_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) of the batches `config.data` yields (after padding), without reading files.

  Raises:
    ConfigError: an unknown data.name or a bad data.pad_to_32.
  """
  name = check_choice("data.name", data_config.name, NAMES)
  pad = data_config.pad_to_32
  if not isinstance(pad, (bool, np.bool_)):
    raise ConfigError("data.pad_to_32", pad, allowed=(True, False))
  return _image_shape(_SPECS[name], bool(pad))


def class_names(name: str) -> tuple[str, ...]:
  """The class names of dataset `name` (config.data.name), label order."""
  return _SPECS[check_choice("data.name", name, NAMES)].class_names


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _image_shape(spec: _Spec, pad_to_32: bool) -> tuple[int, int, int]:
  h, w, c = spec.image_shape
  return (32, 32, c) if pad_to_32 else (h, w, c)


# ------------------------------------------------------------- IDX reading --

_IDX_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, tuple[str, ...]]] = {}
_IDX_CACHE_LOCK = threading.Lock()


def _find_idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for candidate in (directory / f"{stem}.gz", directory / stem):
    if candidate.is_file():
      return candidate
  return None


def _idx_bytes(path: pathlib.Path) -> bytes:
  raw = path.read_bytes()
  if path.suffix != ".gz":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    fix = ("sudo apt-get install --reinstall dataset-fashion-mnist"
           if str(path).startswith(DEBIAN_FASHION_MNIST_DIR) else "replace it with a fresh copy")
    raise DatasetCorruptError(
        f"{path}: not a complete gzip file ({e}); the file is truncated or damaged: "
        f"{fix}.") from None


def _parse_idx(path: pathlib.Path, data: bytes, magic: int) -> np.ndarray:
  """Validates an IDX header against the file size and returns the array view."""
  kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
  if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    raise DatasetCorruptError(
        f"{path}: bad IDX magic number {got if got is None else hex(got)}, expected "
        f"{magic:#010x} (uint8 {kind}); this is not an IDX {kind} file or it is damaged.")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DatasetCorruptError(f"{path}: truncated IDX header ({len(data)} bytes)")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  expected = header + int(np.prod(dims, dtype=np.int64))
  if len(data) != expected:
    what = "truncated" if len(data) < expected else "has trailing bytes"
    raise DatasetCorruptError(
        f"{path}: {what}: {len(data)} bytes, but the IDX header {dims} needs {expected}.")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _check_sha256(spec: _Spec, path: pathlib.Path, stem: str, data: bytes) -> str:
  digest = hashlib.sha256(data).hexdigest()
  if digest != spec.idx_sha256[stem]:
    others = [s.name for s in _SPECS.values() if s.idx_sha256.get(stem) == digest]
    hint = (f" These are {others[0]}'s files: set data.name={others[0]} or point "
            f"data.manual_dir at the {spec.name} files." if others else
            " The file is damaged or is not the original upstream file.")
    raise DatasetCorruptError(
        f"{path}: sha256 of the decompressed contents is {digest}, expected "
        f"{spec.idx_sha256[stem]} ({spec.name} {stem}).{hint}")
  return digest


def _read_idx_split(spec: _Spec, split: str, image_path: pathlib.Path,
                    label_path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Decodes and verifies one split; cached per file identity (path, size, mtime)."""
  stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
           for p in (image_path, label_path)]
  key = (spec.name, split, *stats)
  with _IDX_CACHE_LOCK:
    if key in _IDX_CACHE:
      return _IDX_CACHE[key]
  image_stem, label_stem = _IDX_FILES[split]
  checks = []
  image_bytes = _idx_bytes(image_path)
  images = _parse_idx(image_path, image_bytes, _IDX_IMAGES_MAGIC)
  label_bytes = _idx_bytes(label_path)
  labels = _parse_idx(label_path, label_bytes, _IDX_LABELS_MAGIC)
  if images.shape[1:] != spec.image_shape[:2]:
    raise DatasetCorruptError(f"{image_path}: images are {images.shape[1:]}, expected "
                              f"{spec.image_shape[:2]} for {spec.name}")
  if len(images) != len(labels):
    raise DatasetCorruptError(f"{image_path} has {len(images)} images but {label_path} has "
                              f"{len(labels)} labels")
  for path, stem, data in ((image_path, image_stem, image_bytes),
                           (label_path, label_stem, label_bytes)):
    checks.append(f"{stem}: sha256 {_check_sha256(spec, path, stem, data)[:16]}... ok")
  images = images.reshape(-1, *spec.image_shape)  # a view of `image_bytes`: read-only
  labels = labels.astype(np.int32)
  labels.setflags(write=False)
  entry = (images, labels, tuple(checks))
  with _IDX_CACHE_LOCK:
    _IDX_CACHE[key] = entry
  return entry


# ---------------------------------------------------------------- sources --


@dataclasses.dataclass(frozen=True)
class _Split:
  """An opened split: random access to examples by index."""
  spec: _Spec
  split: str
  num_examples: int                                   # after the data.num_examples limit
  origin: str                                         # where it was found, for messages
  checks: tuple[str, ...]                             # integrity checks passed
  # indices int [n] -> (images uint8 [n, H, W, C], labels int32 [n])
  read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _read_arrays(images: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return images[indices], labels[indices]


def _read_tfds(source, spec: _Spec, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  records = [source[int(i)] for i in indices]
  if not records:
    return np.zeros((0, *spec.image_shape), np.uint8), np.zeros((0,), np.int32)
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  if images.shape[1:] != spec.image_shape:
    raise DatasetCorruptError(f"tfds {spec.name} has images of shape {images.shape[1:]}, "
                              f"expected {spec.image_shape}")
  labels = np.array([int(r["label"]) for r in records], np.int32)
  return images, labels


def _open_tfds(spec: _Spec, split: str, data_dir: str):
  """Returns (data source or None, reason it was not usable)."""
  data_dir = os.path.expanduser(data_dir) or None
  try:
    source = tfds.data_source(spec.name, split=split, data_dir=data_dir, download=False)
    return source, ""
  except Exception as e:  # pylint: disable=broad-except  # tfds raises many types here
    try:
      builder = tfds.builder(spec.name, data_dir=data_dir)
      where, prepared = builder.data_dir, builder.is_prepared()
    except Exception:  # pylint: disable=broad-except
      where, prepared = data_dir or "the tfds default data_dir", False
    if not prepared:
      return None, f"tfds: no prepared dataset at {where}"
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    logging.warning("tfds %s at %s is not readable (%s: %s); trying other sources.",
                    spec.name, where, type(e).__name__, first_line)
    return None, (f"tfds: the dataset at {where} cannot be read as array_record "
                  f"({type(e).__name__}: {first_line})")


def _manual_dir(spec: _Spec, manual_dir: str) -> str:
  return os.path.expanduser(manual_dir) or spec.default_manual_dir


def _limit(n: int, num_examples: int) -> int:
  return n if num_examples <= 0 else min(n, int(num_examples))


def _open(data_config, split: str) -> _Split:
  """Finds a split: prepared tfds → IDX files (MNIST family) → DatasetNotFoundError."""
  validate(data_config)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  spec = _SPECS[data_config.name]
  reasons = []
  source, reason = _open_tfds(spec, split, data_config.data_dir)
  if source is not None:
    where = getattr(getattr(source, "dataset_info", None), "data_dir", "") or "tfds"
    n = _limit(len(source), data_config.num_examples)
    return _Split(spec, split, n, origin=f"tfds (array_record) at {where}",
                  checks=("tfds: checksums verified by tfds when it was prepared",),
                  read=functools.partial(_read_tfds, source, spec))
  reasons.append(reason)
  if spec.idx_sha256:
    directory = _manual_dir(spec, data_config.manual_dir)
    if directory:
      found = [_find_idx_file(pathlib.Path(directory), stem) for stem in _IDX_FILES[split]]
      if all(found):
        images, labels, checks = _read_idx_split(spec, split, *found)
        return _Split(spec, split, _limit(len(images), data_config.num_examples),
                      origin=f"IDX files in {directory}", checks=checks,
                      read=functools.partial(_read_arrays, images, labels))
      missing = [stem for stem, f in zip(_IDX_FILES[split], found) if f is None]
      reasons.append(f"IDX files: {', '.join(missing)}[.gz] not in {directory}")
    else:
      reasons.append("IDX files: no data.manual_dir given")
  raise DatasetNotFoundError(_not_found_message(spec, split, reasons))


def _not_found_message(spec: _Spec, split: str, reasons: list[str]) -> str:
  lines = [f"dataset {spec.name!r} (split {split!r}) was not found:"]
  lines += [f"  - {r}" for r in reasons]
  lines.append("Get it in one of these ways:")
  files = ", ".join(f"{stem}.gz" for pair in _IDX_FILES.values() for stem in pair)
  if spec.name == "fashion_mnist":
    lines.append(f"  * offline, from Debian: sudo apt-get install dataset-fashion-mnist "
                 f"(installs the IDX files in {DEBIAN_FASHION_MNIST_DIR}, used by default)")
  if spec.idx_sha256:
    lines.append(f"  * offline, from your own copy: --config.data.manual_dir=DIR where DIR "
                 f"holds the {spec.name} IDX files ({files}; gzipped or not)")
  lines.append(f"  * with internet: python -m launch.data prepare {spec.name} [--data_dir DIR] "
               "(tfds download_and_prepare in array_record format; pass the same "
               "--config.data.data_dir=DIR to training)")
  return "\n".join(lines)


# ------------------------------------------------------------- public API --


def get_info(data_config, split: str | None = None) -> DatasetInfo:
  """Returns the shape and size of a split (finding the data, or raising).

  Args:
    data_config: the `config.data` section.
    split: "train" or "test"; None = `data_config.split`.

  Raises:
    ConfigError: a bad `data.*` value.
    DatasetNotFoundError: the data is nowhere; the message says how to get it.
    DatasetCorruptError: the IDX files are damaged or not the expected ones.
  """
  s = _open(data_config, data_config.split if split is None else split)
  return DatasetInfo(name=s.spec.name, image_shape=_image_shape(s.spec, data_config.pad_to_32),
                     num_classes=s.spec.num_classes, num_examples=s.num_examples)


def load_arrays(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the whole split (its first `data.num_examples` when > 0).

  IDX files are decoded and verified once per process (later calls only copy
  the cached arrays); a tfds dataset is read record by record on every call.

  Returns:
    images: uint8 [N, H, W, C], unpadded.
    labels: int32 [N].
  """
  s = _open(data_config, split)
  return s.read(np.arange(s.num_examples))


def _preprocess(images_uint8: np.ndarray, pad_to_32: bool) -> np.ndarray:
  x = np.asarray(images_uint8)
  if x.dtype != np.uint8:
    raise TypeError(f"expected uint8 images, got {x.dtype}")
  if pad_to_32:
    h, w = x.shape[-3:-1]
    if h > 32 or w > 32:
      raise ValueError(f"cannot pad images of {h}x{w} to 32x32")
    pads = [(0, 0)] * (x.ndim - 3)
    pads += [((32 - h) // 2, 32 - h - (32 - h) // 2), ((32 - w) // 2, 32 - w - (32 - w) // 2),
             (0, 0)]
    x = np.pad(x, pads, constant_values=0)  # uint8 0 -> -1, black
  return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def preprocess(images_uint8: np.ndarray, data_config) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 [..., H', W', C] in [-1, 1] (padded if configured)."""
  return _preprocess(images_uint8, bool(data_config.pad_to_32))


def _derive_seed(seed: int, stream: int) -> int:
  """An independent 32-bit seed per random stream (shuffle, flips) of one run seed."""
  return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


_SHUFFLE_STREAM, _FLIP_STREAM = 0, 1


def _draw_flip(index: int, rng: np.random.Generator) -> dict[str, Any]:
  return {"index": index, "flip": bool(rng.random() < 0.5)}


def _no_flip(index: int) -> dict[str, Any]:
  return {"index": index, "flip": False}


def _load_rows(read, pad_to_32: bool, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  images, labels = read(rows["index"])
  flip = rows["flip"]
  if flip.any():
    images = np.array(images)  # never write into shared (cached) arrays
    images[flip] = images[flip, :, ::-1]
  return {"image": _preprocess(images, pad_to_32), "label": labels}


def _with_step(step: int, batch: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
  return step, batch


class BatchSource:
  """This host's rows of every global training batch, by step.

  `source[step]` is a pure function of (seed, step, process index): element
  k of the infinite stream is record `perm_e[k % n]` of the epoch
  `e = k // n` permutation (grain's shuffle, reseeded per epoch), flipped by
  a draw seeded by k; global batch s is stream elements [s*B, (s+1)*B), and
  host p takes its contiguous rows [p*B/P, (p+1)*B/P) of it. Batches may
  straddle an epoch boundary; no example is dropped.

  Attributes:
    info: the `DatasetInfo` of the training split.
    global_batch_size: rows per step over all hosts.
    local_batch_size: rows per step on this host.
  """

  def __init__(self, split: _Split, *, pad_to_32: bool, random_flip: bool,
               global_batch_size: int, seed: int, process_index: int, process_count: int):
    self.info = DatasetInfo(name=split.spec.name, image_shape=_image_shape(split.spec, pad_to_32),
                            num_classes=split.spec.num_classes, num_examples=split.num_examples)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    stream = (grain.MapDataset.range(split.num_examples)
              .shuffle(seed=_derive_seed(seed, _SHUFFLE_STREAM))
              .repeat())  # infinite; each epoch a fresh permutation
    if random_flip:
      stream = stream.random_map(_draw_flip, seed=_derive_seed(seed, _FLIP_STREAM))
    else:
      stream = stream.map(_no_flip)
    rows = stream.batch(self.local_batch_size)[process_index::process_count]
    self._batches = rows.map(functools.partial(_load_rows, split.read, pad_to_32))

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    """{"image": float32 [B/P, H, W, C] in [-1, 1], "label": int32 [B/P]} of `step`."""
    step = operator.index(step)
    if step < 0:
      raise IndexError(f"step must be >= 0, got {step}")
    return self._batches[step]

  def iterate(self, start_step: int = 0, *, prefetch: int = 4,
              num_threads: int = 2) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (step, batch) from `start_step` on, forever, computed ahead in threads.

    Args:
      start_step: the first step (a resumed run passes its restored step).
      prefetch: batches computed ahead.
      num_threads: threads computing them.
    """
    start_step = operator.index(start_step)
    if start_step < 0:
      raise IndexError(f"start_step must be >= 0, got {start_step}")
    ds = self._batches.map_with_index(_with_step)[start_step:]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch))

    def generate():
      iterator = iter(it)
      try:
        yield from iterator
      finally:  # on close() or garbage collection: stop the prefetch threads
        iterator.close()

    return generate()

  def __iter__(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    return self.iterate(0)


def _check_hosts(batch_size: int, process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count="
                     f"{process_count})")
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} must be divisible by the number of processes "
                     f"({process_count}): each host takes an equal share of every batch")


def make_train_batches(data_config, *, global_batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1) -> BatchSource:
  """The training stream of `data_config.split`: shuffled, infinite, per host.

  Args:
    data_config: the `config.data` section.
    global_batch_size: rows per step over all hosts (divisible by process_count).
    seed: the run's seed (>= 0); the order and the flips derive from it.
    process_index: this host.
    process_count: number of hosts.

  Returns:
    A `BatchSource`: `source[step]` and `source.iterate(start_step)`.

  Raises:
    ConfigError: a bad `data.*` value or batch size.
    DatasetNotFoundError, DatasetCorruptError: see `get_info`.
  """
  validate(data_config)
  try:
    _check_hosts(global_batch_size, process_index, process_count)
  except ValueError as e:
    raise ConfigError("train.batch_size", global_batch_size, reason=str(e)) from None
  seed = operator.index(seed)
  if seed < 0:
    raise ConfigError("seed", seed, allowed="a non-negative integer")
  split = _open(data_config, data_config.split)
  return BatchSource(split, pad_to_32=bool(data_config.pad_to_32),
                     random_flip=bool(data_config.random_flip),
                     global_batch_size=int(global_batch_size), seed=seed,
                     process_index=process_index, process_count=process_count)


def eval_batches(data_config, split: str, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, no shuffle or flips (padding applied).

  Global batch b holds examples [b*batch_size, (b+1)*batch_size) (the last one
  may be smaller); this host yields its contiguous share of each, so every host
  yields the same number of batches and their concatenation is the global one.

  Args:
    data_config: the `config.data` section.
    split: "train" or "test".
    batch_size: global rows per batch (divisible by process_count).
    process_index: this host.
    process_count: number of hosts.

  Returns:
    An iterator of {"image": float32 [b, H, W, C], "label": int32 [b]}. The data
    is found (or the error raised) when this is called, not at the first batch.
  """
  _check_hosts(batch_size, process_index, process_count)
  s = _open(data_config, split)
  pad_to_32 = bool(data_config.pad_to_32)

  def generate():
    for start in range(0, s.num_examples, batch_size):
      rows = np.array_split(np.arange(start, min(start + batch_size, s.num_examples)),
                            process_count)[process_index]
      images, labels = s.read(rows)
      yield {"image": _preprocess(images, pad_to_32), "label": labels}

  return generate()


# ----------------------------------------------------- preparation (CLI) --


def download_and_prepare(name: str, data_dir: str = "") -> None:
  """Downloads `name` with tfds and writes it in array_record format (needs internet)."""
  check_choice("data.name", name, NAMES)
  builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) or None,
                         file_format="array_record")
  builder.download_and_prepare(file_format="array_record")


def _cli_config(name: str, data_dir: str, manual_dir: str):
  return types.SimpleNamespace(name=name, split="train", eval_split="test", pad_to_32=False,
                               random_flip=False, data_dir=data_dir, manual_dir=manual_dir,
                               num_examples=-1)


def _describe(cfg, histogram: bool) -> list[str]:
  """Finds (and for IDX files verifies) every split of `cfg.name`; raises if missing."""
  lines = [f"{cfg.name}:"]
  for split in SPLITS:
    s = _open(cfg, split)
    line = (f"  {split}: {s.num_examples} examples, images uint8 {s.spec.image_shape}, "
            f"labels 0..{s.spec.num_classes - 1}")
    if histogram:
      _, labels = s.read(np.arange(s.num_examples))
      counts = np.bincount(labels, minlength=s.spec.num_classes)
      line += f" ({counts.min()} to {counts.max()} per class)"
    lines += [line, f"    from {s.origin}", *(f"    {c}" for c in s.checks)]
  return lines


def _prepare(args) -> int:
  cfg = _cli_config(args.name, args.data_dir, args.manual_dir)
  try:
    print("\n".join(_describe(cfg, histogram=True)))
  except DatasetNotFoundError as e:
    if args.no_download:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"{args.name} is not available locally; downloading with tfds "
          f"(needs internet) into {args.data_dir or 'the tfds default data_dir'} ...")
    try:
      download_and_prepare(args.name, args.data_dir)
    except Exception as download_error:  # pylint: disable=broad-except
      print(f"error: {e}\n\nThe download failed too: {type(download_error).__name__}: "
            f"{download_error}", file=sys.stderr)
      return 1
    try:
      print("\n".join(_describe(cfg, histogram=True)))
    except (DatasetNotFoundError, DatasetCorruptError) as again:
      print(f"error: {again}", file=sys.stderr)
      return 1
  except DatasetCorruptError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"ok: train with --config.data.name={args.name}"
        + (f" --config.data.data_dir={args.data_dir}" if args.data_dir else "")
        + (f" --config.data.manual_dir={args.manual_dir}" if args.manual_dir else ""))
  return 0


def _info(args) -> int:
  print(f"tfds data_dir: {args.data_dir or 'tfds default'}; IDX manual_dir: "
        f"{args.manual_dir or DEBIAN_FASHION_MNIST_DIR + ' (fashion_mnist only)'}")
  for name in NAMES:
    cfg = _cli_config(name, args.data_dir, args.manual_dir)
    try:
      lines = _describe(cfg, histogram=False)
    except (DatasetNotFoundError, DatasetCorruptError) as e:
      lines = [f"{name}: NOT AVAILABLE", *(f"  {line}" for line in str(e).splitlines())]
    spec = _SPECS[name]
    lines.insert(1, f"  image shape {spec.image_shape}, {spec.num_classes} classes"
                    + (", pad_to_32 gives (32, 32, 1)" if name in MNIST_FAMILY else ""))
    print("\n".join(lines))
  return 0


def main(argv: list[str] | None = None) -> int:
  """`python -m launch.data {prepare NAME | info}`; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m launch.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  prepare = commands.add_parser(
      "prepare", help="check a dataset (IDX files or prepared tfds), downloading it with "
                      "tfds if it is missing")
  prepare.add_argument("name", choices=NAMES)
  prepare.add_argument("--no_download", action="store_true",
                       help="only check; exit 1 with instructions if the data is missing")
  info = commands.add_parser("info", help="what is available, for every dataset")
  for p in (prepare, info):
    p.add_argument("--data_dir", default="", help="tfds data_dir (default: tfds default)")
    p.add_argument("--manual_dir", default="",
                   help=f"directory of IDX files (default: {DEBIAN_FASHION_MNIST_DIR})")
  args = parser.parse_args(argv)
  return _prepare(args) if args.command == "prepare" else _info(args)


if __name__ == "__main__":
  sys.exit(main())
