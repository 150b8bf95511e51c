"""Idle and slow clients cannot block the server (launch/serve/connections.py).

A real `python -m launch.serve` subprocess on 127.0.0.1 serving the smoke
denoiser (one network call per image: cheap to warm up), with short
connection bounds. One client opens 1,000 idle sockets and 50 that send half
a header, a byte at a time: /health and /generate must still answer other
requests at once, and every one of those sockets must be closed by the
server within `limits.header_timeout_s` (plus scheduling slack). Then more
sockets than `limits.max_connections`: the oldest idle ones are closed to
make room, and the server still answers.
"""
from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from launch.serve import app as serve
from launch.serve import connections
from helpers import SMOKE, free_port, running_server, send_then_read_answer, serve_config_file

HEADER_TIMEOUT_S = 6.0
MAX_CONNECTIONS = 1100
IDLE, SLOW = 1000, 50


@pytest.fixture(scope="module")
def server(smoke_workdir, tmp_path_factory):
  """(url, port) of a warmed-up `python -m launch.serve` (stopped with SIGTERM at the end)."""
  root = tmp_path_factory.mktemp("serve_connections")
  port = free_port()
  config_file = serve_config_file(root / "config.py", port, {"dn": smoke_workdir("dn")},
                                  buckets=(4,), header_timeout_s=HEADER_TIMEOUT_S,
                                  keep_alive_s=1.0, max_connections=MAX_CONNECTIONS)
  with running_server(config_file, port, root / "server.log") as (url, _):
    yield url, port


def _open(port: int, n: int) -> list[socket.socket]:
  out = []
  for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    out.append(s)
  return out


def _closed_by_server(s: socket.socket) -> bool:
  """True once the server closed `s` (EOF or reset); never blocks."""
  try:  # non-blocking: b"" at EOF, BlockingIOError while open and silent
    return s.recv(1024, socket.MSG_PEEK) == b""
  except (ConnectionResetError, BrokenPipeError):
    return True
  except BlockingIOError:
    return False


def _timed(fn):
  t0 = time.monotonic()
  r = fn()
  return r, time.monotonic() - t0


def test_idle_and_slow_header_connections_do_not_block_and_are_closed(server):
  url, port = server
  client = httpx.Client(base_url=url, timeout=10)
  t0 = time.monotonic()
  idle = _open(port, IDLE)
  slow = _open(port, SLOW)
  for s in slow:
    s.send(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
  opened_s = time.monotonic() - t0

  health, health_s = _timed(lambda: client.get("/health"))
  generate, generate_s = _timed(lambda: client.post(
      "/generate", json={"num_images": 2, "seed": 1, "format": "json"}))
  still_open = sum(not _closed_by_server(s) for s in idle + slow)
  held_s = time.monotonic() - t0
  print(f"\n{IDLE} idle + {SLOW} slow-header sockets opened in {opened_s:.2f} s; with them "
        f"open: /health {health.status_code} in {health_s * 1000:.0f} ms, /generate "
        f"{generate.status_code} in {generate_s * 1000:.0f} ms; {still_open} still open "
        f"{held_s:.1f} s after opening")
  assert health.status_code == 200 and health.json()["ready"], health.text
  assert generate.status_code == 200 and len(generate.json()["images"]) == 2, generate.text
  assert health_s < 2.0 and generate_s < 5.0
  assert held_s < HEADER_TIMEOUT_S and still_open == IDLE + SLOW  # they were held, not refused

  # Every one of them is closed by the server at the header deadline, the
  # slow ones although they keep sending a byte a second.
  pending = set(idle + slow)
  closed_at = []
  while pending and time.monotonic() - t0 < HEADER_TIMEOUT_S + 10:
    for s in slow:
      if s in pending:
        try:
          s.send(b"i")
        except OSError:
          pass
    for s in list(pending):
      if _closed_by_server(s):
        pending.discard(s)
        closed_at.append(time.monotonic() - t0)
    time.sleep(0.2)
  for s in idle + slow:
    s.close()
  assert not pending, f"{len(pending)} connections still open {HEADER_TIMEOUT_S + 10} s later"
  print(f"all {IDLE + SLOW} closed by the server between {min(closed_at):.1f} s and "
        f"{max(closed_at):.1f} s (header_timeout_s = {HEADER_TIMEOUT_S})")
  assert min(closed_at) >= HEADER_TIMEOUT_S - 0.5
  assert client.get("/health").status_code == 200


def test_beyond_max_connections_the_oldest_idle_ones_are_closed(server):
  url, port = server
  t0 = time.monotonic()
  sockets = _open(port, MAX_CONNECTIONS + 200)
  health, health_s = _timed(lambda: httpx.get(f"{url}/health", timeout=10))
  time.sleep(0.5)
  closed = [i for i, s in enumerate(sockets) if _closed_by_server(s)]
  print(f"\n{len(sockets)} idle sockets (max_connections {MAX_CONNECTIONS}): {len(closed)} "
        f"closed within {time.monotonic() - t0:.1f} s, /health {health.status_code} in "
        f"{health_s * 1000:.0f} ms")
  for s in sockets:
    s.close()
  assert health.status_code == 200
  assert len(closed) >= 200  # the server made room for the newer connections
  assert max(closed) < len(sockets) - 100  # by closing the oldest


@pytest.mark.parametrize("size, chunk", [(20_000, 30_000), (20_000, 1000), (300_000, 65536)],
                         ids=["20k_one_read", "20k_in_1k_reads", "300k"])
def test_headers_over_max_header_bytes_are_refused_and_closed(server, size, chunk):
  """Headers that do not end within `limits.max_header_bytes` (16 KiB) are answered 431
  (the JSON error naming `headers`) and the connection closed at once, whether they come
  in one read or many; the server answers the next client."""
  url, port = server
  request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
  with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    t0 = time.monotonic()

    def parts():
      for i in range(0, len(request), chunk):
        yield request[i:i + chunk]
        time.sleep(0.01)
    answer = send_then_read_answer(s, parts())
    closed_s = time.monotonic() - t0
  assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
  assert b'"field": "headers"' in answer and b"connection: close" in answer
  assert closed_s < 5.0
  assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_headers_within_max_header_bytes_are_served(server):
  url, _ = server
  r = httpx.get(f"{url}/health", headers={"X-Big": "a" * 15_000}, timeout=10)
  assert r.status_code == 200


def test_requests_beyond_max_requests_get_the_json_503_with_retry_after():
  release = asyncio.Event()

  async def slow_app(scope, receive, send):
    await release.wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

  limited = connections.InFlightLimit(slow_app, 2, serve._busy)  # pylint: disable=protected-access

  async def scenario():
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
      first = [asyncio.create_task(c.get("/health")) for _ in range(2)]
      while limited.in_flight < 2:
        await asyncio.sleep(0.01)
      third = await c.get("/health")
      release.set()
      return third, await asyncio.gather(*first)
  third, first = asyncio.run(scenario())
  assert [r.status_code for r in first] == [200, 200]
  assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1
  assert third.headers["content-type"] == "application/json"
  assert third.json()["detail"].startswith("server: too many requests in progress")


def test_launch_mode_serve_takes_the_server_settings(smoke_workdir, tmp_path):
  """`python -m launch --mode serve` takes --config.serve.* as launch.serve takes --config.*."""
  port = free_port()
  args = ["launch", "--mode", "serve", "--config",
          SMOKE["dn"], "--workdir", str(smoke_workdir("dn")),
          f"--config.serve.port={port}", "--config.serve.warmup=none",
          "--config.serve.limits.buckets=(8,)", "--config.serve.log_level=warning"]
  with running_server(args, port, tmp_path / "mode_serve.log") as (url, _):
    limits = httpx.get(f"{url}/models").json()["limits"]
    r = httpx.post(f"{url}/generate", json={"num_images": 2, "seed": 0}, timeout=120)
  assert limits["buckets"] == [8] and limits["max_images"] == 8
  assert r.status_code == 200 and r.headers["x-num-images"] == "2"
