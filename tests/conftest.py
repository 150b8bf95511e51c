"""Test setup: two fake CPU devices (so sharding is exercised) and a
persistent compilation cache (so repeated runs of the suite compile less)."""
from __future__ import annotations

import os
import pathlib

import jax

from launch import xla_cpu

xla_cpu.apply()   # the launcher's XLA:CPU options, set before JAX starts its CPU client

_CACHE = pathlib.Path(os.environ.get(
    "JAX_TEST_CACHE", pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The session's shared workdirs (tests/helpers.py makes them). Each is built
# the first time a test asks for it and read, never written, by every module
# that uses it: a test that writes into a workdir makes its own.
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import helpers  # noqa: E402
from launch import config as config_lib  # noqa: E402
from launch import train as train_lib  # noqa: E402
from launch.serve import app as serve  # noqa: E402


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory):
  """smoke_workdir(name) -> the workdir of helpers.SMOKE[name] holding its initial state
  (one per session and name: a checkpoint, not a trained model)."""
  made: dict[str, object] = {}
  root = tmp_path_factory.mktemp("smoke_workdirs")

  def get(name: str):
    if name not in made:
      made[name] = helpers.write_workdir(helpers.SMOKE[name], root / name)
    return made[name]
  return get


@pytest.fixture(scope="session")
def smoke_classifier(tmp_path_factory):
  """(config, workdir, state): configs/classifier_fashion_mnist.py:smoke trained once per
  session on `tfds.testing.mock_data(num_examples=helpers.MOCK_EXAMPLES)`, the feature
  network of the evaluate, figure and JEM tests (which run on the same mock data)."""
  workdir = tmp_path_factory.mktemp("smoke_classifier")
  config = config_lib.load(f"{helpers.ROOT}/configs/classifier_fashion_mnist.py:smoke")
  with tfds.testing.mock_data(num_examples=helpers.MOCK_EXAMPLES):
    state = train_lib.train_and_evaluate(config, workdir)
  return config, workdir, state


@pytest.fixture(scope="session")
def batcher(smoke_workdir):
  """The session's warmed-up `Batcher` over the ddpm, cond and ebm smoke workdirs (serving
  tests build their apps over it with `manage=False`); stopped at the end."""
  b = serve.build(helpers.serve_config({name: smoke_workdir(name)
                                        for name in ("ddpm", "cond", "ebm")}))
  b.start()
  assert b.wait_ready(900), b.error
  yield b
  b.stop()


@pytest.fixture(scope="module")
def mock_data(request):
  """`tfds.testing.mock_data` for a whole module, of the module's MOCK_EXAMPLES examples
  (helpers.MOCK_EXAMPLES if it names none); a module turns it on with
  `pytestmark = pytest.mark.usefixtures("mock_data")`."""
  with tfds.testing.mock_data(
      num_examples=getattr(request.module, "MOCK_EXAMPLES", helpers.MOCK_EXAMPLES)):
    yield
