"""A real `python -m launch.serve` process on 127.0.0.1 under load (slow; prints figures).

    pytest -q -s -m slow tests/test_serve_load.py

The model is the full Fashion-MNIST DDPM config (unet_small, T = 1000) with a
checkpoint of its initial state (sampling costs the same as a trained one),
its default sampler set to DDIM-50 in the workdir's config.json, so the
warm-up compiles DDIM-50 for every bucket. SERVE_LOAD_REQUESTS and
SERVE_LOAD_MEASURE set the request counts of the two tests (default 200, 40).
The same measurement against any running server: `python -m launch.serve.load`.
"""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch.serve import load as serve_load
from launch import workdir as workdir_lib

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parent.parent
REQUESTS = int(os.environ.get("SERVE_LOAD_REQUESTS", "200"))
MEASURE = int(os.environ.get("SERVE_LOAD_MEASURE", "40"))
ARTIFACTS = ROOT / "test-artifacts"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_workdir(workdir: pathlib.Path) -> None:
  config = config_lib.load(f"{ROOT}/configs/ddpm_fashion_mnist.py",
                           {"sample.sampler": "ddim", "sample.steps": 50})
  run = workdir_lib.prepare(config)
  state = workdir_lib.init_state(run)
  ckpt = checkpoint_lib.Checkpointer(workdir, async_save=False)
  try:
    ckpt.save(1, state, config_lib.to_json(config), force=True)
  finally:
    ckpt.close()
  (workdir / "config.json").write_text(config_lib.to_json(config))


_CONFIG = '''
import ml_collections
from configs import serve


def get_config(arg=None):
  c = serve.get_config()
  c.port = {port}
  c.log_level = "warning"
  c.models = ml_collections.ConfigDict()
  c.models.fmnist = serve.model("", {workdir!r})  # "": the workdir's config.json
  c.limits.timeout_s = 600.0
  c.warmup = "default"
  return c
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """(url, process) of a warmed-up server; at the end SIGTERM must stop it cleanly."""
  root = tmp_path_factory.mktemp("serve_load")
  workdir = root / "ddpm_fashion_mnist"
  _write_workdir(workdir)
  port = _free_port()
  config_file = root / "serve_load_config.py"
  config_file.write_text(_CONFIG.format(port=port, workdir=str(workdir)))
  ARTIFACTS.mkdir(exist_ok=True)
  log = open(ARTIFACTS / "serve_load_server.log", "w")
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache"),
         "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  proc = subprocess.Popen([sys.executable, "-m", "launch.serve", "--config", str(config_file)],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  start = time.monotonic()
  try:
    while True:
      assert proc.poll() is None, f"server exited with {proc.returncode}; see {log.name}"
      try:
        if httpx.get(f"{url}/health", timeout=5).status_code == 200:
          break
      except httpx.HTTPError:
        pass
      assert time.monotonic() - start < 900, "server not ready after 900 s"
      time.sleep(1)
    print(f"\nserver ready after {time.monotonic() - start:.1f} s (load, compile, warm-up)")
    yield url, proc
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      code = proc.wait(120)
    except subprocess.TimeoutExpired:
      proc.kill()
      code = None
    log.close()
  # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM.
  assert code in (0, -signal.SIGTERM), f"server killed (exit {code}); see {log.name}"
  assert "serve: stopped" in (ARTIFACTS / "serve_load_server.log").read_text(), (
      "no graceful shutdown")


def test_bounded_load_no_server_errors_valid_answers_bounded_memory(server):
  url, proc = server
  bodies = [{"num_images": n} for n in (1, 2, 3, 4)] * 4 + [
      {"num_images": 2, "label": 1},      # 422: the model is unconditional
      {"num_images": 2, "steps": 5000},   # 422: steps out of range
  ]
  warm = serve_load.run_load(url, bodies[:4], requests=8, concurrency=2, pid=proc.pid)
  assert not warm.invalid and warm.server_errors == 0, warm.invalid
  report = serve_load.run_load(url, bodies, requests=REQUESTS, concurrency=20, pid=proc.pid)
  print(f"\nbounded load (DDIM-50, 1-4 images, some invalid requests):\n{report}")
  assert report.server_errors == 0, report.statuses
  assert not report.invalid, report.invalid[:5]
  assert set(report.statuses) <= {200, 422, 429}
  refused = sum(1 for i in range(REQUESTS) if i % len(bodies) >= 16)
  assert report.statuses.get(422, 0) == refused
  assert report.statuses.get(200, 0) + report.statuses.get(429, 0) == REQUESTS - refused
  rss = report.rss_mib
  # Bounded: the queue holds at most limits.queue_size requests; no growth with requests.
  assert rss["after"] - warm.rss_mib["after"] < 256, rss
  assert rss["max"] < warm.rss_mib["after"] + 1024, rss
  assert httpx.get(f"{url}/health").json()["ready"]


def test_latency_and_throughput_of_16_image_ddim50(server):
  url, proc = server
  body = {"num_images": 16, "sampler": "ddim", "steps": 50}
  alone = serve_load.run_load(url, body, requests=5, concurrency=1, pid=proc.pid)
  loaded = serve_load.run_load(url, body, requests=MEASURE, concurrency=20, pid=proc.pid)
  lines = [f"16-image DDIM-50, one client:\n{alone}",
           f"16-image DDIM-50, 20 concurrent clients:\n{loaded}"]
  print("\n" + "\n".join(lines))
  (ARTIFACTS / "serve_load_figures.txt").write_text("\n".join(lines) + "\n")
  for report in (alone, loaded):
    assert report.server_errors == 0 and not report.invalid, (report.statuses, report.invalid)
    assert report.statuses.get(200, 0) == report.requests
