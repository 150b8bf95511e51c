"""Post-hoc EMA in the loop (launch/posthoc_ema.py): the power EMAs ride along
without changing training, their snapshots follow the run and a resume
exactly, and every mode that loads the workdir can sample with a
reconstruction of any width. The math is tested in test_posthoc_ema.py."""
import jax
import numpy as np
import pytest

from core import posthoc_ema as math
from launch import config as config_lib
from launch import posthoc_ema
from launch import sample as sample_lib
from launch import train as train_lib
from launch import workdir as workdir_lib
from launch.checkpoint import CheckpointError
from launch.config_errors import ConfigError

MOCK_EXAMPLES = 64
pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py

SPEC = "configs/ddpm_mnist.py:smoke"
STDS = (0.05, 0.10)


def _config(steps, **overrides):
  base = {"train.steps": steps, "train.ckpt_every": 2, "train.log_every": 1,
          "train.num_samples": 0, "optim.power_ema_stds": STDS, "train.ema_snapshot_every": 2}
  return config_lib.load(SPEC, {**base, **overrides})


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_equal(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(full, resumed, plain): 6 steps with snapshots every 2; the same run stopped at 4
  and resumed (over a stale snapshot at 6); and 6 steps without power EMAs."""
  root = tmp_path_factory.mktemp("posthoc")
  full = train_lib.train_and_evaluate(_config(6), root / "full")
  train_lib.train_and_evaluate(_config(4), root / "resumed")
  stale = posthoc_ema.Snapshots(root / "resumed")
  stale.save(6, [jax.tree.map(lambda x: x * 0 + 7, e) for e in full.extras["power_ema"]], STDS)
  stale.close()
  resumed = train_lib.train_and_evaluate(_config(6), root / "resumed")
  plain = train_lib.train_and_evaluate(
      _config(6, **{"optim.power_ema_stds": (), "train.ema_snapshot_every": 0}), root / "plain")
  return root, full, resumed, plain


def _snapshots(workdir, upto=10**9):
  store = posthoc_ema.Snapshots(workdir, create=False)
  try:
    return store.steps(), store.load(upto)
  finally:
    store.close()


def test_the_power_emas_do_not_change_training(runs):
  _, full, _, plain = runs
  assert set(full.extras) == {"power_ema"} and plain.extras == {}
  for part in ("params", "ema_params", "opt_state", "step"):
    _assert_equal(getattr(full, part), getattr(plain, part))
  # they moved: the two widths differ from each other and from the classic EMA
  a, b = (_leaves(e) for e in full.extras["power_ema"])
  assert any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_snapshots_are_the_states_averages_and_survive_a_resume(runs):
  root, full, resumed, _ = runs
  steps, (stds, snaps) = _snapshots(root / "full")
  assert steps == [2, 4, 6] and stds == STDS
  _assert_equal(snaps[-1][1], list(full.extras["power_ema"]))
  _assert_equal(resumed, full)
  r_steps, (_, r_snaps) = _snapshots(root / "resumed")
  assert r_steps == steps
  for (s, trees), (rs, rtrees) in zip(snaps, r_snaps):   # the stale one at 6 was replaced
    assert s == rs
    _assert_equal(trees, rtrees)


def test_a_mode_samples_with_the_reconstruction_of_the_width_asked(runs):
  root, full, _, _ = runs
  config = _config(6, **{"sample.ema_sigma_rel": 0.08})
  _, state = workdir_lib.load_trained(root / "full", config, device=jax.local_devices()[0])
  _, (_, snaps) = _snapshots(root / "full")
  gammas = [math.sigma_rel_to_gamma(s) for s in STDS]
  want, coefs = math.reconstruct(snaps, gammas, 0.08, target_step=6)
  assert coefs.shape == (6,)
  for got, w in zip(_leaves(state.ema_params), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
  # the other parts are the checkpoint's
  _assert_equal(state.params, full.params)
  # a width that is a snapshot's own gives that snapshot (to rounding)
  config = _config(6, **{"sample.ema_sigma_rel": 0.10})
  _, state = workdir_lib.load_trained(root / "full", config, device=jax.local_devices()[0])
  for got, w in zip(_leaves(state.ema_params), _leaves(full.extras["power_ema"][1])):
    np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-6)
  stem = sample_lib.sample_to_workdir(
      _config(6, **{"sample.ema_sigma_rel": 0.08, "sample.num": 4}), str(root / "full"))
  assert "ema-0.08" in str(stem)


def test_a_width_asked_of_a_workdir_without_snapshots_names_the_keys(runs):
  root, *_ = runs
  config = _config(6, **{"sample.ema_sigma_rel": 0.08, "optim.power_ema_stds": (),
                         "train.ema_snapshot_every": 0})
  with pytest.raises(CheckpointError, match="no EMA snapshot.*optim.power_ema_stds"):
    workdir_lib.load_trained(root / "plain", config)


@pytest.mark.parametrize("overrides, key", [
    ({"optim.power_ema_stds": (0.05, 0.3)}, "optim.power_ema_stds"),
    ({"optim.power_ema_stds": (0.0,)}, "optim.power_ema_stds"),
    ({"optim.power_ema_stds": (0.1, 0.1)}, "optim.power_ema_stds"),
    ({"train.ema_snapshot_every": 0}, "train.ema_snapshot_every"),
    ({"optim.power_ema_stds": ()}, "train.ema_snapshot_every"),
    ({"train.steps_per_dispatch": 4, "train.log_every": 4}, "train.ema_snapshot_every"),
    ({"sample.ema_sigma_rel": 0.5}, "sample.ema_sigma_rel"),
    ({"sample.ema_sigma_rel": 0.1, "sample.use_ema": False}, "sample.ema_sigma_rel"),
], ids=["too_wide", "zero", "repeated", "no_snapshots", "nothing_to_snapshot", "dispatch",
        "sigma_too_wide", "raw_weights"])
def test_bad_post_hoc_keys_are_refused_by_name(overrides, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    config_lib.validate(_config(6, **overrides))


@pytest.mark.parametrize("spec", ["configs/ebm_fashion_mnist.py:smoke",
                                  "configs/distill_fashion_mnist.py:smoke"])
def test_tasks_without_a_power_ema_refuse_it(spec):
  with pytest.raises(ConfigError, match=r"optim\.power_ema_stds.*power-function EMA"):
    config_lib.validate(config_lib.load(spec, {"optim.power_ema_stds": STDS,
                                               "train.ema_snapshot_every": 2}))


def test_starting_a_finished_run_again_keeps_its_snapshots(runs, tmp_path):
  import shutil
  root, full, _, _ = runs
  shutil.copytree(root / "full", tmp_path / "again")
  before, (_, snaps) = _snapshots(tmp_path / "again")
  state = train_lib.train_and_evaluate(_config(6), tmp_path / "again")
  after, (_, again) = _snapshots(tmp_path / "again")
  assert before == after == [2, 4, 6]
  _assert_equal(state, full)
  for (_, a), (_, b) in zip(snaps, again):
    _assert_equal(a, b)
