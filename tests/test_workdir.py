"""The workdir layer: loading without side effects, damaged checkpoints, restore targets."""
import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import train as train_lib
from launch import workdir as workdir_lib
from launch.eval import evaluate

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFIER = f"{ROOT}/configs/classifier_fashion_mnist.py:smoke"
DDPM = f"{ROOT}/configs/ddpm_fashion_mnist.py:smoke"
MOCK_EXAMPLES = 64


pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _config(**overrides):
  return config_lib.load(CLASSIFIER, {k.replace("__", "."): v for k, v in overrides.items()})


def _snapshot(directory: pathlib.Path) -> dict[str, str]:
  """Relative path -> sha256 of every file (and "dir" for every folder) under `directory`.

  The run's log (log.txt, which records the error) is the one file a failed run may add.
  """
  out = {}
  for p in sorted(directory.rglob("*")):
    rel = str(p.relative_to(directory))
    if rel == "log.txt":
      continue
    out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
  return out


def _cli(workdir, *flags, config=CLASSIFIER):
  """Runs the CLI under mock data; returns (return code, stdout + stderr lines)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  proc = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "launch_with_mock_data.py"), str(MOCK_EXAMPLES),
       "--config", config, "--workdir", str(workdir), "--cpu_devices=2", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def _not_info(lines):
  """The lines that are not absl INFO/WARNING log records (I1201 ..., W1201 ...)."""
  return [l for l in lines if l.strip() and not (l[:1] in "IW" and l[1:5].isdigit())]


def test_load_trained_on_empty_or_missing_workdir_creates_nothing(tmp_path):
  config = _config()
  empty = tmp_path / "empty"
  empty.mkdir()
  for workdir in (empty, tmp_path / "typo"):
    with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint to load") as e:
      workdir_lib.load_trained(workdir, config)
    assert "\n" not in str(e.value)
    with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint to load"):
      evaluate.evaluate_workdir(config, str(workdir))
  assert list(empty.iterdir()) == []
  assert not (tmp_path / "typo").exists()


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_cli_sample_on_a_mistyped_workdir_is_one_line_and_creates_nothing(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for workdir, mode, config in ((tmp_path / "typo", "sample", DDPM), (empty, "sample", DDPM),
                                (tmp_path / "typo", "evaluate", CLASSIFIER)):
    rc, lines = _cli(workdir, "--mode", mode, config=config)
    errors = _not_info(lines)
    assert rc == 1 and len(errors) == 1, "\n".join(lines)
    assert errors[0].startswith("error: no checkpoint to load: workdir "), errors
  # A task that generates nothing is refused before any workdir is read.
  rc, lines = _cli(tmp_path / "typo", "--mode", "sample")
  assert rc == 1 and _not_info(lines) == [
      "error: config.task='classifier' is invalid: --mode sample needs a task that generates "
      "images"], lines
  assert not (tmp_path / "typo").exists() and list(empty.iterdir()) == []


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_damaged_checkpoint_is_one_line_changes_nothing_and_resumes_from_the_flag(tmp_path):
  train_lib.train_and_evaluate(_config(train__steps=4, train__ckpt_every=2), tmp_path)
  victims = [p for p in (tmp_path / "checkpoints" / "4" / "state").rglob("*")
             if p.is_file() and p.stat().st_size > 0]
  assert victims
  for p in victims:
    p.write_bytes(b"\0garbage" * 4)
  before = _snapshot(tmp_path)

  rc, lines = _cli(tmp_path, "--config.train.steps=6", "--config.train.ckpt_every=2")
  assert rc == 1
  errors = _not_info(lines)
  assert len(errors) == 1, "\n".join(lines)
  line = errors[0]
  assert line.startswith("error: checkpoint ") and "/checkpoints/4 cannot be restored" in line
  assert "newest intact checkpoint is step 2" in line
  assert "--config.train.restore_step=2" in line
  for noise in ("Traceback", "Event loop is closed", "TensorStore", "tensorstore"):
    assert not any(noise in l for l in lines), noise
  assert _snapshot(tmp_path) == before   # config.json included: not rewritten

  # The same from the library (sample / evaluate / serve go through load_trained).
  with pytest.raises(checkpoint_lib.CheckpointError, match="restore_step=2"):
    workdir_lib.load_trained(tmp_path, _config())
  assert _snapshot(tmp_path) == before

  # The flag the line names resumes from step 2 (deleting the damaged step 4)
  # and trains on to the end, equal to a run that was never damaged.
  resumed = train_lib.train_and_evaluate(
      _config(train__steps=6, train__ckpt_every=2, train__restore_step=2), tmp_path)
  full = train_lib.train_and_evaluate(_config(train__steps=6, train__ckpt_every=2),
                                      tmp_path / "full")
  assert int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(full.params)),
                  jax.tree.leaves(jax.device_get(resumed.params))):
    np.testing.assert_array_equal(a, b)
  ckpt = checkpoint_lib.Checkpointer(tmp_path)
  try:
    assert ckpt.all_steps() == [2, 4, 6]
  finally:
    ckpt.close()


def test_load_trained_restores_onto_one_device_and_fills_new_config_keys(tmp_path):
  train_lib.train_and_evaluate(_config(train__steps=2), tmp_path)
  # A workdir from before a key existed: drop it from config.json.
  config_json = (tmp_path / "config.json").read_text()
  assert '"restore_step"' in config_json
  import json
  d = json.loads(config_json)
  del d["train"]["restore_step"]
  (tmp_path / "config.json").write_text(json.dumps(d))
  config = workdir_lib.load_config(tmp_path)
  assert config.train.restore_step == -1 and config.train.steps == 2
  device = jax.local_devices()[-1]
  run, state = workdir_lib.load_trained(tmp_path, device=device)
  assert int(state.step) == 2
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.device_set == {device}
  replicated = workdir_lib.load_trained(tmp_path)[1]
  assert len(jax.tree.leaves(replicated)[0].sharding.device_set) == jax.device_count()
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(
      jax.device_get(replicated))):
    np.testing.assert_array_equal(a, b)
  assert run.task.sample_params(state) is state.ema_params
