"""Test workdirs made without training (shared by the evaluate, figures and JEM tests)."""
import pathlib

from launch import config as config_lib
from launch import convert
from launch import workdir as workdir_lib
from launch import writers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def untrained(tmp_path_factory, spec, metrics, **overrides):
  """A workdir as the loop leaves it, holding the initial state: no train-step compile.

  Args:
    tmp_path_factory: pytest's factory (the workdir is a fresh directory).
    spec: "config_file.py[:variant]" under configs/.
    metrics: {name: value} written at step 1, and value / 2 at step 2.
    **overrides: config overrides.

  Returns:
    (config, workdir).
  """
  workdir = tmp_path_factory.mktemp(spec.split(".")[0])
  config = config_lib.load(f"{ROOT}/configs/{spec}", overrides)
  convert.write_workdir(config, workdir_lib.init_state(workdir_lib.prepare(config)), workdir)
  writer = writers.MetricWriter(workdir)
  for step in (1, 2):
    writer.write(step, {name: value / step for name, value in metrics.items()})
  writer.close()
  return config, workdir
