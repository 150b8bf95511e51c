"""What the evaluation sees: real images corrupted as a generator might corrupt them.

  python -m launch.eval.corruptions --classifier_workdir runs/classifier_fashion_mnist \
      --independent_workdir runs/classifier_independent

Scores 1000 Fashion-MNIST images each (the last 1000 test images, so that
none is among the nearest-neighbour test images; the first 1000 training
images, i.e. copies; and the test images blurred, on a grey background, and
speckled) with `evaluate.evaluate_npz`, and prints the table of
docs/evaluation.md: both FDs, class-histogram entropies, class accuracies
and the nearest-train-neighbour distance.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from typing import Sequence

import numpy as np

from launch import data as data_lib
from launch.eval import evaluate

NUM = 1000


def corrupted_sets(test: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
  """float [N, 28, 28, 1] in 0..255 -> {name: corrupted copy}."""
  rng = np.random.default_rng(seed)
  padded = np.pad(test, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  blur = sum(padded[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9
  return {"test, 3x3 box blur": blur,
          "test, grey background (pixels < 30 set to 64)": np.where(test < 30, 64.0, test),
          "test, speckle on the item (sigma = 40 grey levels)":
              np.clip(test + rng.normal(0, 40, test.shape) * (test > 30), 0, 255)}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.eval.corruptions",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--classifier_workdir", required=True)
  parser.add_argument("--independent_workdir", required=True)
  parser.add_argument("--manual_dir", default="", help="IDX files (config.data.manual_dir)")
  args = parser.parse_args(argv)
  data = types.SimpleNamespace(name="fashion_mnist", split="train", eval_split="test",
                               pad_to_32=False, random_flip=False, data_dir="",
                               manual_dir=args.manual_dir, num_examples=-1)
  x_test, y_test = data_lib.load_arrays(data, "test")
  x_train, y_train = data_lib.load_arrays(data, "train")
  test, labels = x_test[-NUM:].astype(np.float64), y_test[-NUM:]
  sets = {"test, last 1000": (test, labels), "train, first 1000 (copies)":
          (x_train[:NUM].astype(np.float64), y_train[:NUM])}
  sets.update({k: (v, labels) for k, v in corrupted_sets(test).items()})
  print("| images | fd_fmnist | fd_independent | entropy (CNN / independent) | class accuracy "
        "(CNN / independent) | nn_train_distance | test images | ratio |")
  print("|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "images.npz")
    for name, (images, y) in sets.items():
      np.savez(path, images=np.rint(images).astype(np.uint8), labels=y)
      r = {rec["metric"]: rec for rec in evaluate.evaluate_npz(
          path, args.classifier_workdir, independent_workdir=args.independent_workdir,
          manual_dir=args.manual_dir)}
      nn = r["nn_train_distance"]
      print(f"| {name} | {r['fd_fmnist']['value']:.3f} | {r['fd_independent']['value']:.3f} | "
            f"{r['class_histogram']['value']:.3f} / {r['entropy_independent']['value']:.3f} | "
            f"{r['class_accuracy']['value']:.3f} / "
            f"{r['class_accuracy_independent']['value']:.3f} | {nn['value']:.3f} | "
            f"{nn['test_value']:.3f} | {nn['ratio']:.2f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
