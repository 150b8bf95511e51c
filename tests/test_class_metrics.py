"""Tests of core/metrics.py against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import metrics


def test_class_histogram_balanced_one_class_and_two():
  counts, h = metrics.class_histogram(np.arange(100) % 10, 10)
  assert counts.tolist() == [10] * 10 and h == pytest.approx(1.0)
  counts, h = metrics.class_histogram(np.full(7, 3), 10)
  assert counts.tolist() == [0, 0, 0, 7] + [0] * 6 and h == 0.0
  # Two classes, 3:1 -> -(3/4 log 3/4 + 1/4 log 1/4) / log 4.
  _, h = metrics.class_histogram(np.array([0, 0, 0, 1]), 4)
  assert h == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4))


def test_class_accuracy_overall_and_per_class():
  labels = np.array([0, 0, 1, 1, 1, 2])
  pred = np.array([0, 1, 1, 1, 0, 2])
  accuracy, per_class = metrics.class_accuracy(pred, labels, 4)
  assert accuracy == pytest.approx(4 / 6)
  assert per_class == [pytest.approx(0.5), pytest.approx(2 / 3), 1.0, None]


def test_batched_apply_matches_one_call_and_pads_the_last_batch():
  x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
  shapes = []

  def apply(params, batch):
    shapes.append(batch.shape)
    return batch * params, batch.sum(-1)

  doubled, sums = metrics.batched_apply(apply, 2.0, x, batch_size=3)
  np.testing.assert_array_equal(doubled, 2 * x)
  np.testing.assert_allclose(sums, x.sum(-1), rtol=1e-6)
  assert shapes == [(3, 3)] * 3   # one shape: 7 images in 3 calls, the last padded


def test_center_crop_undoes_centred_padding():
  x = np.arange(2 * 28 * 28).reshape(2, 28, 28, 1).astype(np.float32)
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  np.testing.assert_array_equal(metrics.center_crop(padded, (28, 28)), x)
  assert metrics.center_crop(x, (28, 28)) is x
  with pytest.raises(ValueError, match="smaller than the classifier"):
    metrics.center_crop(x, (32, 32))
