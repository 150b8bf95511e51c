"""Exact resume of the generative tasks: a run stopped and resumed equals an
uninterrupted one bit for bit, in every part of the state (parameters, EMA,
optimiser state, step, lr scale and the EBM replay buffer).

The classifier's resume and the kill -9 test are in test_train_loop.py.
"""
import jax
import numpy as np
import pytest

from launch import config as config_lib
from launch import train as train_lib


MOCK_EXAMPLES = 64
pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _assert_states_identical(a, b):
  """Every leaf of two TrainStates equal bit for bit, named on failure."""
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(jax.device_get(a))
  flat_b, tree_b = jax.tree.flatten(jax.device_get(b))
  assert tree_a == tree_b
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("config_file, extras", [
    ("configs/ddpm_mnist.py:smoke", set()),
    ("configs/ebm_fashion_mnist.py:smoke", {"buffer"}),
    ("configs/ebm_fashion_mnist.py:conditional_smoke", {"buffer", "buffer_labels"}),
], ids=["ddpm", "ebm", "ebm_conditional"])
@pytest.mark.slow  # four trainings per task (~70 s on 2 cores); .ci/run runs it
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, config_file, extras):
  def config(steps):
    return config_lib.load(config_file, {"train.steps": steps, "train.ckpt_every": 2,
                                         "train.log_every": 1, "train.num_samples": 0})
  full = train_lib.train_and_evaluate(config(4), tmp_path / "full")
  first = train_lib.train_and_evaluate(config(2), tmp_path / "resumed")
  assert int(first.step) == 2
  resumed = train_lib.train_and_evaluate(config(4), tmp_path / "resumed")
  assert int(resumed.step) == 4
  assert set(full.extras) == extras
  # The resumed half really trained: its state moved on from the checkpoint.
  assert not np.array_equal(jax.device_get(jax.tree.leaves(first.params)[0]),
                            jax.device_get(jax.tree.leaves(resumed.params)[0]))
  _assert_states_identical(full, resumed)
