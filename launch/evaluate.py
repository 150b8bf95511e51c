"""`--mode evaluate`: metrics of a trained workdir, written to `WORKDIR/eval.json`.

Implemented here: the classifier's accuracy on the evaluation split (the
ceiling for the class accuracy of conditional samples). Each record holds
the metric, its value and the protocol fields that produced it.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from etils import epath

from launch import data as data_lib
from launch import sample as sample_lib


def classifier_accuracy(task, params, data_config, split: str, batch_size: int = 500) -> dict:
  """Accuracy and per-class accuracy of `params` on a whole split."""
  apply = jax.jit(lambda p, x: task.apply(p, x)[1].argmax(-1))
  correct, labels_all = [], []
  for batch in data_lib.eval_batches(data_config, split, batch_size):
    correct.append(np.asarray(apply(params, batch["image"])) == batch["label"])
    labels_all.append(batch["label"])
  correct, labels = np.concatenate(correct), np.concatenate(labels_all)
  per_class = [float(correct[labels == k].mean()) for k in range(task.num_classes)]
  return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class,
          "num_examples": int(len(labels))}


def evaluate_workdir(config, workdir: str) -> list[dict]:
  run, state = sample_lib.load_trained(config, workdir)
  if config.task != "classifier":
    raise ValueError(f"--mode evaluate is available for task 'classifier' only so far, "
                     f"not for {config.task!r}")
  params = state.ema_params if config.sample.use_ema else state.params
  result = classifier_accuracy(run.task, params, config.data, config.data.eval_split)
  records = [{"metric": "accuracy", "value": result["accuracy"],
              "split": config.data.eval_split, "num_examples": result["num_examples"],
              "weights": "ema" if config.sample.use_ema else "raw",
              "step": int(state.step), "per_class": result["per_class_accuracy"]}]
  if jax.process_index() == 0:
    (epath.Path(workdir) / "eval.json").write_text(json.dumps(records, indent=2))
    for r in records:
      print(f"{r['metric']:>12s}  {r['value']:.4f}  (split={r['split']}, n={r['num_examples']}, "
            f"weights={r['weights']}, step={r['step']})")
  return records
