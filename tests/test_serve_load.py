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
import signal

import httpx
import pytest

from launch.serve import load as serve_load
from helpers import ROOT, free_port, running_server, serve_config_file, write_workdir

pytestmark = [pytest.mark.slow, pytest.mark.quiet]  # latency and memory figures: alone on the cores

REQUESTS = int(os.environ.get("SERVE_LOAD_REQUESTS", "200"))
MEASURE = int(os.environ.get("SERVE_LOAD_MEASURE", "40"))
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """(url, process) of a warmed-up server; at the end SIGTERM must stop it cleanly."""
  root = tmp_path_factory.mktemp("serve_load")
  workdir = write_workdir(f"{ROOT}/configs/ddpm_fashion_mnist.py", root / "ddpm_fashion_mnist",
                          {"sample.sampler": "ddim", "sample.steps": 50})
  port = free_port()
  config_file = serve_config_file(root / "serve_load_config.py", port, {"fmnist": workdir},
                                  timeout_s=600.0)
  ARTIFACTS.mkdir(exist_ok=True)
  log = ARTIFACTS / "serve_load_server.log"
  with running_server(config_file, port, log, ready_s=900, stop_s=120) as (url, proc):
    yield url, proc
  # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM.
  assert proc.returncode in (0, -signal.SIGTERM), (
      f"server killed (exit {proc.returncode}); see {log}")
  assert "serve: stopped" in log.read_text(), "no graceful shutdown"


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
