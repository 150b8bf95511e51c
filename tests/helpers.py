"""What several test modules share: the smoke configs, workdirs made without
training, and a `python -m launch.serve` subprocess on loopback.

The session-scoped fixtures built from these (one trained smoke classifier,
one initial-state workdir per smoke config, one warmed-up batcher) are in
tests/conftest.py; a module that needs a workdir of its own (one it writes
into) makes it with `write_workdir` or `untrained`.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import ml_collections
import pytest

from configs import serve as serve_configs

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import convert
from launch import tasks
from launch import workdir as workdir_lib
from launch import writers
from launch.config_errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SMOKE = {
    "ddpm": f"{ROOT}/configs/ddpm_fashion_mnist.py:smoke",           # unconditional, T = 20
    "cond": f"{ROOT}/configs/ddpm_mnist_conditional.py:smoke",       # 10 classes, guidance 2
    "ebm": f"{ROOT}/configs/ebm_fashion_mnist.py:smoke",             # 28x28, 8 Langevin steps
    "jem": f"{ROOT}/configs/ebm_fashion_mnist.py:conditional_smoke",  # E(x, y) = -f(x)[y]
    "dn": f"{ROOT}/configs/denoiser_fashion_mnist.py:smoke",         # one network call
}
MOCK_EXAMPLES = 40   # the mock split the shared smoke classifier is trained and scored on
BUCKETS = (4, 16)    # the in-process serving tests' batch buckets


def write_workdir(spec: str, workdir: pathlib.Path, overrides: dict | None = None
                  ) -> pathlib.Path:
  """A workdir with a checkpoint of `spec`'s initial state, as the loop writes it."""
  config = config_lib.load(spec, overrides or {})
  state = workdir_lib.init_state(workdir_lib.prepare(config))
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(1, state, config_lib.to_json(config), force=True)
  finally:
    ckpt.close()
  (workdir / "config.json").write_text(config_lib.to_json(config))
  return workdir


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


def serve_config(workdirs: dict[str, pathlib.Path], **limits) -> ml_collections.ConfigDict:
  """configs/serve.py's config serving each workdir under its SMOKE name (buckets BUCKETS,
  timeout 300 s, `limits.KEY = VALUE` for every keyword, every program warmed up)."""
  config = serve_configs.get_config()
  config.models = ml_collections.ConfigDict()
  for name, workdir in workdirs.items():
    config.models[name] = serve_configs.model(SMOKE[name], str(workdir))
  config.limits.buckets = BUCKETS
  config.limits.timeout_s = 300.0
  for key, value in limits.items():
    config.limits[key] = value
  config.warmup = "default"
  return config


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def serve_config_file(path: pathlib.Path, port: int, models: dict[str, pathlib.Path],
                      **limits) -> pathlib.Path:
  """Writes a `python -m launch.serve --config` file: configs/serve.py's defaults, `port`,
  each workdir of `models` served under its name (with the workdir's own config.json) and
  `limits.KEY = VALUE` for every keyword; the warm-up compiles every program first."""
  lines = ["import ml_collections", "from configs import serve", "",
           "def get_config(arg=None):", "  c = serve.get_config()", f"  c.port = {port}",
           '  c.log_level = "warning"', "  c.models = ml_collections.ConfigDict()"]
  lines += [f"  c.models[{name!r}] = serve.model('', {str(workdir)!r})"
            for name, workdir in models.items()]
  lines += [f"  c.limits.{key} = {value!r}" for key, value in limits.items()]
  lines += ['  c.warmup = "default"', "  return c", ""]
  path.write_text("\n".join(lines))
  return path


@contextlib.contextmanager
def running_server(args: list[str] | pathlib.Path, port: int, log_path: pathlib.Path,
                   ready_s: float = 300.0, stop_s: float = 60.0):
  """(url, process) of a server subprocess, once GET /health on `port` answers 200.

  `args` are those of `python -m ARGS`, or a config file for `python -m launch.serve
  --config FILE`. The server is stopped with SIGTERM on exit (killed after `stop_s`); its
  exit status is `process.returncode` afterwards.
  """
  if isinstance(args, pathlib.Path):
    args = ["launch.serve", "--config", str(args)]
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
         "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                     str(ROOT / ".jax_cache"))}
  log = open(log_path, "w")
  proc = subprocess.Popen([sys.executable, "-m", *args],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  start = time.monotonic()
  try:
    while True:
      assert proc.poll() is None, log_path.read_text()[-3000:]
      try:
        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
          break
      except httpx.HTTPError:
        pass
      assert time.monotonic() - start < ready_s, f"server not ready after {ready_s} s"
      time.sleep(0.5)
    print(f"\nserver ready after {time.monotonic() - start:.1f} s (load, compile, warm-up)")
    yield url, proc
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(stop_s)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


def config_error_of(config, key: str, value):
  """The ConfigError `launch.tasks.build` raises for `config` with `key` ("section.name")
  set to `value` (pytest fails the test if it raises none)."""
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError) as e:
    tasks.build(config)
  return e.value


def send_then_read_answer(s: socket.socket, parts) -> bytes:
  """Sends `parts` (bytes each) on the blocking socket `s`, stopping if the server closes it,
  then reads everything the server answered until it closes (EOF or reset)."""
  try:
    for part in parts:
      s.sendall(part)
  except OSError:   # closed by the server while sending: its answer is still read below
    pass
  answer = b""
  try:
    while data := s.recv(65536):
      answer += data
  except ConnectionResetError:
    pass
  return answer
