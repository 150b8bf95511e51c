"""Command line: `python -m launch --config configs/X.py[:variant] --workdir DIR [--mode M]`.

Modes: train (default; resumes automatically), distill (train a few-step
student of a trained DDPM workdir, config.distill), sample, evaluate, figures,
bench, serve. Any config key can be overridden: `--config.train.steps=100`.
Multi-host (TPU VM pods, GPU clusters): add `--multihost` on every host (or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`).

The terminal shows the progress bar, one-line events, warnings and errors;
every log line (Orbax's INFO included) goes to `WORKDIR/log.txt`.
`--verbosity=0` prints them all on the terminal too (`1`: and DEBUG; `-1`:
warnings and errors only). See `launch/logging_setup.py`.

Installed, the same CLI is the `ddpm-ebm` command (`ddpm-ebm --config ...`).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with :variant.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
_MODE = flags.DEFINE_string("mode", "train", "train | distill | sample | evaluate | figures | bench | serve")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() with autodetection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "Devices to split the CPU into when running on CPU (0 = 2 when the "
    "machine has at least 2 cores: measured faster than 1 for the train step).")
_XLA_CPU_DEFAULTS = flags.DEFINE_bool(
    "xla_cpu_defaults", True, "Add the project's XLA:CPU options (launch/xla_cpu.py) to "
    "XLA_FLAGS where XLA_FLAGS does not set them; --noxla_cpu_defaults: XLA's own defaults.")

# mode -> "module:function(config, workdir)"
MODES = {
    "train": "launch.train:train_and_evaluate",
    "distill": "launch.train:distill_and_evaluate",
    "sample": "launch.sample:sample_to_workdir",
    "evaluate": "launch.eval.evaluate:evaluate_workdir",
    "serve": "launch.serve.app:serve",
    "figures": "launch.figure_mode:figures_workdir",
    "bench": "launch.bench:bench_workdir",
}


def _setup_jax() -> None:
  if _XLA_CPU_DEFAULTS.value:
    from launch import xla_cpu
    xla_cpu.apply()            # before JAX creates its CPU client
  import jax
  cpu_devices = _CPU_DEVICES.value or (2 if (os.cpu_count() or 1) >= 2 else 1)
  jax.config.update("jax_num_cpu_devices", cpu_devices)
  if _COORDINATOR.value or _MULTIHOST.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _COORDINATOR.value:
      jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value,
                                 process_id=_PROCESS_ID.value)
    else:
      jax.distributed.initialize()
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)


def _explain_bad_override(argv: list[str]) -> str | None:
  """Names the `--config.KEY` that the config does not have, if that is the problem."""
  from launch import config as config_lib
  spec = None
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
  if spec is None:
    return None
  try:
    config = config_lib.load(spec)
  except FileNotFoundError as e:
    return str(e)
  except Exception as e:  # the config file itself is broken
    return one_line(f"cannot load config {spec}: {type(e).__name__}: {e}")
  for arg in argv:
    if arg.startswith("--config.") and "=" in arg:
      key = arg[len("--config."):].split("=", 1)[0]
      try:
        config_lib.check_key(config, key)
      except config_lib.UnknownConfigKeyError as e:
        return str(e)
  return None


_ARGV: list[str] = []  # the command line parse_flags saw (for error messages)


def one_line(text: str) -> str:
  """The text with its lines joined: an error is one line on the terminal."""
  return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error naming an unknown config key."""
  _ARGV[:] = argv
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    reason = _explain_bad_override(argv) or one_line(e)
    print(f"error: {reason}", file=sys.stderr)
    sys.exit(2)


def _load_config():
  """The parsed --config, or None after printing one line naming what is wrong.

  config_flags defers a config file's load error (a missing file, an
  exception inside it) to the first `.value`, where it would otherwise end the
  run with a 40-line traceback.
  """
  import ml_collections
  try:
    config = _CONFIG.value
    if isinstance(config, ml_collections.ConfigDict):
      return config
    error = "the config file did not load"  # config_flags' placeholder for a failed load
  except Exception as e:  # any failure inside the user's config file
    error = str(e)
  reason = _explain_bad_override(_ARGV or sys.argv) or one_line(f"cannot load config: {error}")
  print(f"error: {reason}", file=sys.stderr)
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from launch import config as config_lib
  from launch import logging_setup
  from launch.config_errors import ConfigError
  verbosity = flags.FLAGS["verbosity"]
  logging_setup.configure_terminal(verbosity.value if verbosity.present else None)
  if _MODE.value not in MODES:
    print(f"error: --mode={_MODE.value!r} is unknown (allowed: {', '.join(MODES)})",
          file=sys.stderr)
    return 2
  if not _CONFIG.present:
    print("error: --config is required, e.g. --config configs/ddpm_fashion_mnist.py",
          file=sys.stderr)
    return 2
  config = _load_config()
  if config is None:
    return 2
  if _WORKDIR.value is None and not (_MODE.value == "serve" and "models" in config):
    print("error: --workdir is required", file=sys.stderr)
    return 2
  # Before `validate`: building a task may run a JAX operation (e.g. an annealed
  # Langevin schedule), and the CPU device count must be set before the first.
  _setup_jax()
  task = None
  try:
    if not (_MODE.value == "serve" and "models" in config):  # a serve config: launch.serve checks it
      task = config_lib.validate(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _log_to_workdir(_WORKDIR.value, create=_MODE.value in ("train", "distill"))
  module_name, fn_name = MODES[_MODE.value].split(":")
  fn = getattr(importlib.import_module(module_name), fn_name)
  # The modes that take it get the task `validate` built, so it is built once.
  kwargs = {"task": task} if "task" in inspect.signature(fn).parameters else {}
  try:
    fn(config, _WORKDIR.value, **kwargs)
  except Exception as e:  # a clear one-line reason for the errors users cause
    from launch.checkpoint import CheckpointError
    from launch.data import DatasetNotFoundError
    from launch.eval.feature_check import WeakFeatureNetworkError
    from launch.train import TrainingDiverged
    if isinstance(e, (CheckpointError, DatasetNotFoundError, TrainingDiverged, ConfigError,
                      FileNotFoundError, WeakFeatureNetworkError)):
      logging.error("%s", e, extra=logging_setup.FILE_ONLY)  # the file's copy
      print(f"error: {one_line(e)}", file=sys.stderr)
      return 1
    raise
  return 0


def _log_to_workdir(workdir: str | None, *, create: bool) -> None:
  """The full log in WORKDIR/log.txt: training creates the workdir; other
  modes write only into a workdir that a run has made (never a mistyped one)."""
  import jax
  from launch import logging_setup
  if not workdir or "://" in workdir:
    return
  if create:
    os.makedirs(workdir, exist_ok=True)
  elif not (os.path.isfile(os.path.join(workdir, "config.json"))
            or os.path.isdir(os.path.join(workdir, "checkpoints"))):
    return
  logging_setup.log_to_file(workdir, process_index=jax.process_index())


def run(argv: list[str] | None = None) -> None:
  """The `ddpm-ebm` console script and `python -m launch`: parses flags, runs main, exits."""
  flags.mark_flag_as_required("config")
  app.run(lambda argv: sys.exit(main(argv)), argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
