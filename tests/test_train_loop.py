"""The training loop: sharding, checkpoints, resume, kill -9, SIGTERM, divergence, multi-host."""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import data as data_lib
from launch import sharding
from launch import train as train_lib
from launch import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFIER = f"{ROOT}/configs/classifier_fashion_mnist.py:smoke"
MOCK_EXAMPLES = 64


pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _config(**overrides):
  return config_lib.load(CLASSIFIER, {k.replace("__", "."): v for k, v in overrides.items()})


def _params(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def _assert_trees_equal(a, b, rtol=0.0, atol=0.0):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() >= 2
  config = _config()
  run = workdir_lib.prepare(config)
  state = workdir_lib.init_state(run)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (8, *run.task.image_shape)).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32)}
  key = run.keys["train"]
  single = jax.jit(run.task.train_step)(jax.device_put(state, jax.devices()[0]), batch, key)
  fn = train_lib.make_train_fn(run.task, run.state_shardings, run.batch_sharding, 1)
  stacked = sharding.global_batch({k: v[None] for k, v in batch.items()},
                                  train_lib._stack_sharding(run.batch_sharding))
  assert len(stacked["image"].sharding.device_set) == jax.device_count()
  sharded = fn(state, stacked, key)
  _assert_trees_equal(_params(single[0]), _params(sharded[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(single[1]["loss"], sharded[1]["loss"][0], rtol=1e-5)


def test_steps_per_dispatch_scan_equals_one_step_at_a_time(tmp_path):
  a = train_lib.train_and_evaluate(_config(train__steps=4), tmp_path / "a")
  b = train_lib.train_and_evaluate(
      _config(train__steps=4, train__steps_per_dispatch=2), tmp_path / "b")
  # Fusion differs inside the scan, so gradients differ by round-off; Adam's
  # g / sqrt(v) turns round-off in near-zero gradients into steps of size lr
  # (here < 1e-4), hence the absolute tolerance on the parameters.
  _assert_trees_equal(_params(a), _params(b), rtol=1e-4, atol=1e-4)
  loss = lambda w: [json.loads(l)["loss"] for l in (w / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose(loss(tmp_path / "a"), loss(tmp_path / "b"), rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
  config = _config()
  run = workdir_lib.prepare(config)
  state = workdir_lib.init_state(run)
  state = state.replace(step=jnp.asarray(7, jnp.int32), lr_scale=jnp.asarray(0.25))
  ckpt = checkpoint_lib.Checkpointer(tmp_path, async_save=False)
  ckpt.save(7, state, config_lib.to_json(config), restarts=2)
  ckpt.close()
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  restored, meta = workdir_lib.restore_or_init(run, ckpt)
  assert meta == {"restarts": 2}
  _assert_trees_equal(jax.device_get(state), jax.device_get(restored))
  saved_config = ckpt.restore_config()
  assert saved_config["task"] == "classifier"
  ckpt.close()


def test_relative_workdir_saves_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  first = train_lib.train_and_evaluate(_config(train__steps=2, train__ckpt_every=1), "runs/rel")
  assert (tmp_path / "runs" / "rel" / "checkpoints" / "2").is_dir()
  again = train_lib.train_and_evaluate(_config(train__steps=3), "runs/rel")
  assert int(first.step) == 2 and int(again.step) == 3


def test_resume_equals_uninterrupted_run(tmp_path):
  full = train_lib.train_and_evaluate(_config(train__steps=6), tmp_path / "full")
  first = train_lib.train_and_evaluate(_config(train__steps=4), tmp_path / "resumed")
  assert int(first.step) == 4
  resumed = train_lib.train_and_evaluate(_config(train__steps=6), tmp_path / "resumed")
  assert int(resumed.step) == 6
  _assert_trees_equal(_params(full), _params(resumed))
  _assert_trees_equal(jax.device_get(full.opt_state), jax.device_get(resumed.opt_state))
  # The workdir contract.
  work = tmp_path / "resumed"
  assert (work / "config.json").exists() and (work / "metrics.jsonl").exists()
  assert (work / "figures" / "loss_curve.png").exists()
  assert any((work / "tb").iterdir())
  steps = [json.loads(l)["step"] for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 6


def test_time_budget_stops_early_and_saves(tmp_path):
  # A budget shorter than the first step (compile included) stops after it.
  state = train_lib.train_and_evaluate(
      _config(train__steps=1000, train__time_budget_s=1e-6), tmp_path)
  assert 0 < int(state.step) < 1000
  ckpt = checkpoint_lib.Checkpointer(tmp_path, async_save=False)
  try:
    assert ckpt.latest_step() == int(state.step)
  finally:
    ckpt.close()
  # Resuming with no budget goes on from the saved step.
  again = train_lib.train_and_evaluate(_config(train__steps=int(state.step) + 2), tmp_path)
  assert int(again.step) == int(state.step) + 2


def test_time_budget_rejects_negative():
  with pytest.raises(config_lib.ConfigError, match="train.time_budget_s"):
    config_lib.validate(_config(train__time_budget_s=-1.0))


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good(tmp_path):
  config = _config(train__steps=6, optim__lr=1e30, optim__grad_clip=0.0, optim__warmup_steps=0)
  with pytest.raises(train_lib.TrainingDiverged, match=r"diverged at step \d+: (loss|grad_norm)"):
    train_lib.train_and_evaluate(config, tmp_path)
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  run = workdir_lib.prepare(config)
  target = checkpoint_lib.abstract_with_shardings(run.abstract_state, run.state_shardings)
  for step in ckpt.all_steps():  # every kept checkpoint is finite
    state, _ = ckpt.restore(target, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  ckpt.close()


def test_guard_restores_lowers_lr_and_then_gives_up(tmp_path):
  # A bound no loss can meet: every check diverges, the guard restarts from the
  # last good checkpoint with a lower learning rate, then stops with a message.
  config = _config(train__steps=6, guard__enabled=True, guard__bound=1e-6,
                   guard__max_restarts=2, guard__lr_factor=0.5)
  with pytest.raises(train_lib.TrainingDiverged, match=r"guard bound 1e-06, 2 restart"):
    train_lib.train_and_evaluate(config, tmp_path)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  restarts = [r for r in records if "guard_restart" in r]
  assert [r["lr_scale"] for r in restarts] == [0.5, 0.25]


def test_guard_recovers_from_a_blow_up(tmp_path):
  # lr=1e10 blows the loss up after the first update; the guard restores the
  # initial state, scales the lr by 1e-12 (to an effective 0.01), reseeds, and
  # training then runs to the end.
  config = _config(train__steps=6, optim__lr=1e10, optim__grad_clip=0.0,
                   optim__warmup_steps=0, optim__weight_decay=0.0, guard__enabled=True,
                   guard__bound=1e3, guard__lr_factor=1e-12, guard__max_restarts=2)
  state = train_lib.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 6
  np.testing.assert_allclose(float(state.lr_scale), 1e-12, rtol=1e-6)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert sum("guard_restart" in r for r in records) == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_corrupt_checkpoint_gives_clear_error_and_keeps_files(tmp_path):
  config = _config(train__steps=2)
  train_lib.train_and_evaluate(config, tmp_path)
  step_dir = tmp_path / "checkpoints" / "2" / "state"
  victims = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  for p in victims:
    p.write_bytes(b"\0garbage" * 4)
  before = sorted((p.name, p.read_bytes()) for p in victims)
  with pytest.raises(checkpoint_lib.CheckpointError, match="cannot be restored"):
    train_lib.train_and_evaluate(_config(train__steps=4), tmp_path)
  assert sorted((p.name, p.read_bytes()) for p in victims) == before


def test_padded_data_flows_to_the_task(tmp_path):
  config = _config(train__steps=2, data__pad_to_32=True)
  assert workdir_lib.prepare(config).task.image_shape == (32, 32, 1)
  state = train_lib.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 2


# ----------------------------------------------------------------------------
# Subprocess tests: the real CLI, killed and signalled.
# ----------------------------------------------------------------------------

class _Proc(subprocess.Popen):
  """A CLI process whose output goes to a file (a pipe nobody reads would block it)."""

  def __init__(self, args, log_path, **kwargs):
    self.log_path = log_path
    self._log = open(log_path, "w")
    super().__init__(args, stdout=self._log, stderr=subprocess.STDOUT, **kwargs)

  def output(self, timeout=600) -> str:
    self.wait(timeout=timeout)
    self._log.close()
    return pathlib.Path(self.log_path).read_text()


def _launch(workdir, *flags, devices=2, env=None):
  workdir = pathlib.Path(workdir)
  workdir.parent.mkdir(parents=True, exist_ok=True)
  log = workdir.parent / f"{workdir.name}.{len(list(workdir.parent.glob(workdir.name + '.*')))}.log"
  env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
  return _Proc(
      [sys.executable, str(ROOT / "tests" / "launch_with_mock_data.py"), str(MOCK_EXAMPLES),
       "--config", CLASSIFIER, "--workdir", str(workdir), f"--cpu_devices={devices}", *flags],
      log, cwd=ROOT, env=env)


def _state_from_workdir(workdir, steps):
  config = _config(train__steps=steps)
  run = workdir_lib.prepare(config)
  ckpt = checkpoint_lib.Checkpointer(workdir)
  assert ckpt.latest_step() == steps
  state, _ = workdir_lib.restore_or_init(run, ckpt)
  ckpt.close()
  return jax.device_get(state)


def _params_from_workdir(workdir, steps):
  return _params(_state_from_workdir(workdir, steps))
@pytest.mark.slow  # subprocesses and several trainings: ~45 s each on 2 cores; .ci/run runs it
def test_kill_minus_9_in_the_middle_of_a_save_then_resume_equals_uninterrupted(tmp_path):
  steps = 6
  flags = [f"--config.train.steps={steps}", "--config.train.ckpt_every=2",
           "--config.train.log_every=1", "--config.train.num_samples=0"]
  ref = _launch(tmp_path / "ref", *flags)
  out = ref.output()
  assert ref.returncode == 0, out
  # The save of step 4 blocks with its arrays written to Orbax's temporary
  # directory but not committed; the process is killed right there.
  work, marker = tmp_path / "killed", tmp_path / "blocked_in_save"
  proc = _launch(work, *flags, env={"BLOCK_SAVE_AT_STEP": "4", "BLOCK_SAVE_MARKER": str(marker)})
  deadline = time.time() + 300
  while not marker.exists():
    assert proc.poll() is None, f"process ended before the save of step 4:\n{proc.output()}"
    assert time.time() < deadline, "the save of step 4 never reached the hook"
    time.sleep(0.1)
  proc.kill()
  proc.wait()
  checkpoints = work / "checkpoints"
  # Only step 2 is complete; step 4 is left half-written for the resume to meet.
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2"]
  assert any(p.name.startswith("4.") for p in checkpoints.iterdir()), "no partial save left"
  resumed = _launch(work, *flags)
  out = resumed.output()
  assert resumed.returncode == 0, out
  assert re.search(r"Resumed from .* at step 2\.", out), out  # not from scratch
  _assert_trees_equal(_state_from_workdir(tmp_path / "ref", steps),
                      _state_from_workdir(work, steps))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  work = tmp_path / "w"
  proc = _launch(work, "--config.train.steps=100000", "--config.train.ckpt_every=1000",
                 "--config.train.log_every=1")
  deadline = time.time() + 240
  while not (work / "metrics.jsonl").exists() and time.time() < deadline:
    assert proc.poll() is None, proc.output()
    time.sleep(0.2)
  time.sleep(1.0)
  proc.send_signal(signal.SIGTERM)
  out = proc.output(timeout=120)
  assert proc.returncode == 0, out
  assert "Stopped by signal" in out
  ckpt = checkpoint_lib.Checkpointer(work)
  assert ckpt.latest_step() and ckpt.latest_step() > 0
  ckpt.close()
@pytest.mark.slow  # subprocesses and several trainings: ~45 s each on 2 cores; .ci/run runs it
def test_eight_fake_devices(tmp_path):
  proc = _launch(tmp_path / "w", "--config.train.steps=2", devices=8)
  out = proc.output()
  assert proc.returncode == 0, out
  assert (tmp_path / "w" / "checkpoints" / "2").exists()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
@pytest.mark.slow  # subprocesses and several trainings: ~45 s each on 2 cores; .ci/run runs it
def test_two_process_multihost_equals_single_process(tmp_path):
  steps = 4
  flags = [f"--config.train.steps={steps}", "--config.train.ckpt_every=2"]
  single = _launch(tmp_path / "single", *flags)
  out = single.output()
  assert single.returncode == 0, out
  port = _free_port()
  records = [tmp_path / f"batches_{i}.npz" for i in range(2)]
  procs = [_launch(tmp_path / "multi", *flags, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", devices=1,
                   env={"RECORD_BATCHES": str(records[i])}) for i in range(2)]
  outs = [p.output() for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
  _assert_trees_equal(_params_from_workdir(tmp_path / "single", steps),
                      _params_from_workdir(tmp_path / "multi", steps), rtol=1e-5, atol=1e-6)
  # Equal parameters would also come from two independent single-process runs:
  # check that the two processes formed one job and that each read its half
  # (rows [i*B/2, (i+1)*B/2)) of every global batch, which together are the
  # single-process batch.
  config = _config(train__steps=steps)
  whole = data_lib.make_train_batches(config.data, global_batch_size=config.train.batch_size,
                                      seed=config.seed)
  half = config.train.batch_size // 2
  for i, path in enumerate(records):
    got = np.load(path)
    assert int(got["jax_process_count"]) == 2 and int(got["process_count"]) == 2
    assert int(got["process_index"]) == i
    assert list(got["steps"]) == list(range(steps))
    for s in range(steps):
      np.testing.assert_array_equal(got["images"][s], whole[s]["image"][i * half:(i + 1) * half])
      np.testing.assert_array_equal(got["labels"][s], whole[s]["label"][i * half:(i + 1) * half])
