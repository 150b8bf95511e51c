"""`--mode evaluate` on a trained classifier workdir."""
import json
import pathlib

import jax
import numpy as np
import tensorflow_datasets as tfds

from launch import config as config_lib
from launch import data as data_lib
from launch import evaluate
from launch import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_classifier_accuracy_matches_a_direct_count(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    config = config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py:smoke")
    state = train_lib.train_and_evaluate(config, tmp_path)
    records = evaluate.evaluate_workdir(config, str(tmp_path))
    task = train_lib.prepare(config).task
    images, labels = data_lib.load_arrays(config.data, "test")
    logits = task.apply(jax.device_get(state.ema_params), data_lib.preprocess(images, config.data))[1]
    expected = float(np.mean(np.argmax(logits, -1) == labels))
  assert records[0]["metric"] == "accuracy" and records[0]["num_examples"] == 40
  np.testing.assert_allclose(records[0]["value"], expected)
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved[0]["value"] == records[0]["value"] and saved[0]["weights"] == "ema"
