"""Test workdirs made without training (shared by the evaluate, figures and JEM tests)."""
import pathlib

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
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
  run = workdir_lib.prepare(config)
  config_json = config_lib.to_json(config)
  (workdir / "config.json").write_text(config_json)
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  ckpt.save(0, workdir_lib.init_state(run), config_json, force=True)
  ckpt.close()
  writer = writers.MetricWriter(workdir)
  for step in (1, 2):
    writer.write(step, {name: value / step for name, value in metrics.items()})
  writer.close()
  return config, workdir
