"""train.steps not a multiple of train.steps_per_dispatch: the loop runs every step."""
import json

import numpy as np
import pytest

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import train as train_lib

DENOISER = "configs/denoiser_fashion_mnist.py:smoke"


MOCK_EXAMPLES = 64
pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _config(**overrides):
  return config_lib.load(DENOISER, {k.replace("__", "."): v for k, v in overrides.items()})


def _records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
@pytest.mark.slow  # three trainings (~70 s on 2 cores); .ci/run runs it
def test_steps_not_a_multiple_of_steps_per_dispatch_runs_to_the_end_and_on_resume(tmp_path):
  common = dict(train__log_every=2, train__ckpt_every=2, train__num_samples=4)
  one = train_lib.train_and_evaluate(
      _config(train__steps=7, train__steps_per_dispatch=1, **common), tmp_path / "one")
  assert int(one.step) == 7
  # steps=5 with 2 steps per dispatch: 2 + 2 + a last dispatch of 1, then the
  # end-of-run checkpoint, loss curve and samples.
  work = tmp_path / "two"
  two = train_lib.train_and_evaluate(
      _config(train__steps=5, train__steps_per_dispatch=2, **common), work)
  assert int(two.step) == 5
  assert [r["step"] for r in _records(work)] == [2, 4, 5]
  assert (work / "samples" / "step_5.png").exists()
  assert (work / "figures" / "loss_curve.png").exists()
  ckpt = checkpoint_lib.Checkpointer(work)
  assert ckpt.latest_step() == 5
  ckpt.close()
  # Resumed at the odd step 5 up to 7: a dispatch of 1 realigns to 6, so the
  # log at 6 (a multiple of 2) still happens, then the last dispatch of 1.
  again = train_lib.train_and_evaluate(
      _config(train__steps=7, train__steps_per_dispatch=2, **common), work)
  assert int(again.step) == 7
  assert [r["step"] for r in _records(work)] == [2, 4, 5, 6, 7]
  assert (work / "samples" / "step_7.png").exists()
  # Each logged loss is the same batch through the same parameters as one
  # step per dispatch (up to the scan's round-off): no step skipped or repeated.
  # Steps 2, 4 and 7 average the same steps in both runs.
  loss = lambda w: {r["step"]: r["loss"] for r in _records(w)}
  ref, got = loss(tmp_path / "one"), loss(work)
  np.testing.assert_allclose([got[s] for s in (2, 4, 7)], [ref[s] for s in (2, 4, 7)],
                             rtol=1e-4)
