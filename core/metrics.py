"""The class metrics of generated images and the helpers of the feature networks.

Pure NumPy (and a jitted `apply` given by the caller); no file I/O. The
Fréchet distance is `core.frechet`, the Inception network `core.inception`,
the pixel-space nearest neighbours `core.nearest`; `launch.eval.scores`
turns all of them into records.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def center_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """[N, H, W, C] -> [N, h, w, C], the centred h x w window (undoes data.pad_to_32)."""
  h, w = x.shape[1:3]
  th, tw = size
  if (h, w) == (th, tw):
    return x
  if h < th or w < tw:
    raise ValueError(f"images of {h}x{w} are smaller than the classifier's {th}x{tw}")
  top, left = (h - th) // 2, (w - tw) // 2
  return x[:, top:top + th, left:left + tw]


def batched_apply(apply: Callable, params, x: np.ndarray, batch_size: int
                  ) -> tuple[np.ndarray, ...]:
  """`apply(params, batch)` over x in batches of one shape (the last padded with zeros).

  Args:
    apply: (params, [B, ...] float32) -> a tuple of [B, ...] arrays (jitted:
      every call has the same shape, so it compiles once).
    params: its parameters.
    x: [N, ...] float32 inputs, N >= 1.
    batch_size: B (min(B, N) is used).

  Returns:
    The outputs' concatenations over the N inputs, as NumPy arrays (the host
    copy of a batch overlaps with the next batch's device call).
  """
  n = x.shape[0]
  bs = max(1, min(int(batch_size), n))
  parts, pending = [], None
  for start in range(0, n, bs):
    batch = x[start:start + bs]
    valid = batch.shape[0]
    if valid < bs:
      batch = np.concatenate([batch, np.zeros((bs - valid,) + batch.shape[1:], batch.dtype)])
    out = apply(params, batch)
    # Fetch the previous batch only after dispatching this one, so the host
    # copy overlaps with the device's work.
    if pending is not None:
      parts.append([np.asarray(o)[:pending[1]] for o in pending[0]])
    pending = (out, valid)
  parts.append([np.asarray(o)[:pending[1]] for o in pending[0]])
  return tuple(np.concatenate(outs) for outs in zip(*parts))


def class_histogram(predictions: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
  """(counts [K], entropy of the predicted class frequencies / log K): 1 = balanced."""
  counts = np.bincount(np.asarray(predictions).reshape(-1), minlength=num_classes)
  freq = counts / counts.sum()
  entropy = -float(np.sum(freq[freq > 0] * np.log(freq[freq > 0])))
  return counts, entropy / math.log(num_classes)


def class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int
                   ) -> tuple[float, list[float | None]]:
  """(fraction of predictions equal to labels, the same per class; None for an absent class)."""
  labels = np.asarray(labels).reshape(-1)
  correct = np.asarray(predictions).reshape(-1) == labels
  per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else None
               for c in range(num_classes)]
  return float(correct.mean()), per_class
