"""What a user sees on the terminal: one-line errors, quiet logs, the full log in the workdir."""
from __future__ import annotations

import configparser
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from launch import logging_setup

ROOT = pathlib.Path(__file__).resolve().parent.parent
# absl's line prefix, e.g. "I1201 15:37:36.854714 140558 checkpoint_manager.py:557] ..."
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def _env():
  return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "launch", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_missing_config_file_is_one_line(tmp_path):
  out = _cli("--config", "configs/no_such_config.py", "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "error: config file not found: configs/no_such_config.py"], out.stderr
  assert not (tmp_path / "w").exists()


def test_config_file_that_raises_is_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(arg=None):\n  raise ValueError('no variant\\n' + repr(arg))\n")
  out = _cli("--config", f"{bad}:huge", "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: cannot load config"), out.stderr
  assert "ValueError: no variant 'huge'" in lines[0]


def test_runtime_error_is_printed_once(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  out = _cli("--config", "configs/classifier_fashion_mnist.py:smoke", "--workdir", str(work),
             "--mode", "sample")
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr


def test_console_script_entry_point_runs_the_cli(tmp_path):
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  scripts = dict(line.split("=", 1) for line in
                 cfg["options.entry_points"]["console_scripts"].strip().splitlines())
  scripts = {k.strip(): v.strip() for k, v in scripts.items()}
  assert scripts == {"ddpm-ebm": "launch.__main__:run"}
  # What the installed `ddpm-ebm` script does: import the function and call it.
  code = ("import sys; from launch.__main__ import run; "
          "sys.argv[0] = 'ddpm-ebm'; run()")
  out = subprocess.run([sys.executable, "-c", code, "--config", "configs/no_such_config.py",
                        "--workdir", str(tmp_path / "w")], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip() == "error: config file not found: configs/no_such_config.py"


def test_training_terminal_is_quiet_and_the_workdir_has_the_full_log(tmp_path):
  work = tmp_path / "w"
  out = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "launch_with_mock_data.py"), "64",
       "--config", "configs/classifier_fashion_mnist.py:smoke", "--workdir", str(work),
       "--config.train.steps=2"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  terminal = out.stderr.replace("\r", "\n").splitlines()
  assert not [l for l in terminal if ABSL_LINE.match(l)], out.stderr   # no Orbax INFO lines
  assert not [l for l in terminal if "dataset_info.json" in l], out.stderr
  assert any("2/2" in l for l in terminal), out.stderr                 # the progress bar
  log = (work / logging_setup.LOG_FILE).read_text()
  assert "checkpoint_manager.py" in log                                 # Orbax's lines are here
  assert sum(1 for l in log.splitlines() if ABSL_LINE.match(l)) > 20


def _record(level, pathname, msg="m"):
  return logging.LogRecord("absl", level, pathname, 1, msg, None, None)


def test_terminal_filter_levels():
  ours = str(ROOT / "launch" / "train.py")
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  default = logging_setup.TerminalFilter(None)
  assert default.filter(_record(logging.INFO, ours))           # an event
  assert not default.filter(_record(logging.INFO, orbax))      # library chatter
  assert default.filter(_record(logging.WARNING, orbax))
  assert not default.filter(_record(logging.DEBUG, ours))
  verbose = logging_setup.TerminalFilter(0)
  assert verbose.filter(_record(logging.INFO, orbax)) and not verbose.filter(
      _record(logging.DEBUG, orbax))
  assert logging_setup.TerminalFilter(1).filter(_record(logging.DEBUG, orbax))
  quiet = logging_setup.TerminalFilter(-1)
  assert not quiet.filter(_record(logging.INFO, ours)) and quiet.filter(
      _record(logging.WARNING, orbax))
  errors = logging_setup.TerminalFilter(-2)
  assert not errors.filter(_record(logging.WARNING, ours)) and errors.filter(
      _record(logging.ERROR, orbax))
  file_only = _record(logging.ERROR, ours)
  file_only.file_only = True
  assert not default.filter(file_only) and not verbose.filter(file_only)


def test_terminal_format_is_one_line_per_record():
  fmt = logging_setup.TerminalFormatter(None)
  assert fmt.format(_record(logging.INFO, "x", "Resumed at step 3.")) == "Resumed at step 3."
  assert fmt.format(_record(logging.WARNING, "x", "slow")) == "warning: slow"
  assert fmt.format(_record(logging.ERROR, "x", "bad")) == "error: bad"
  assert ABSL_LINE.match(logging_setup.TerminalFormatter(0).format(_record(logging.INFO, "x")))


def test_options_whose_task_build_runs_jax_still_start(tmp_path):
  """Building the task may run a JAX operation (the annealed Langevin schedule, spectral
  norm); the CLI sets the CPU device count before that, so the run starts and ends in
  its own error (no checkpoint), not in JAX's 'jax_num_cpu_devices ... before backends'."""
  work = tmp_path / "w"
  work.mkdir()
  out = _cli("--config", "configs/ebm_fashion_mnist.py:smoke", "--workdir", str(work),
             "--mode", "sample", "--config.model.spectral_norm=true",
             "--config.ebm.anneal=geometric", "--config.ebm.step_size_final_factor=0.1",
             "--config.ebm.noise_final_factor=0.1")
  assert "jax_num_cpu_devices" not in out.stderr, out.stderr[-2000:]
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
