"""A load test of a running server (`python -m launch.serve`).

    python -m launch.serve.load --url http://127.0.0.1:8000 --model ddpm_fashion_mnist \\
        --requests 200 --concurrency 20 --num_images 16 --sampler ddim --steps 50 [--pid PID]

`--concurrency` clients send `--requests` POST /generate requests in all (a
client sends its next request when its previous one is answered; 429/503 are
answered, not retried) and every answer is checked: 200 a PNG grid of the
asked number of images, 4xx/5xx a JSON error with a detail (and Retry-After
for 429/503). Prints the status counts, latency percentiles of the 200s,
throughput, and, with `--pid` (the server's process id on this machine), its
resident memory (VmRSS from /proc) before, at most and after the load.

`run_load` is the same as a function (tests/test_serve_load.py calls it).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import io
import json
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def rss_mib(pid: int) -> float:
  """Resident memory of a process in MiB (VmRSS of /proc/PID/status)."""
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  raise ValueError(f"no VmRSS for process {pid}")


@dataclasses.dataclass
class LoadReport:
  """What a load run saw. Latencies are of the 200 answers, in seconds."""
  requests: int
  concurrency: int
  statuses: dict[int, int]
  invalid: list[str]
  latencies_s: list[float]
  wall_s: float
  images: int
  rss_mib: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def server_errors(self) -> int:
    return sum(n for code, n in self.statuses.items() if code >= 500)

  def percentile(self, q: float) -> float:
    return float(np.percentile(self.latencies_s, q)) if self.latencies_s else float("nan")

  @property
  def throughput_rps(self) -> float:
    return self.statuses.get(200, 0) / self.wall_s if self.wall_s else 0.0

  @property
  def images_per_s(self) -> float:
    return self.images / self.wall_s if self.wall_s else 0.0

  def summary(self) -> dict[str, Any]:
    out = {"requests": self.requests, "concurrency": self.concurrency,
           "statuses": dict(sorted(self.statuses.items())), "invalid": len(self.invalid),
           "p50_s": round(self.percentile(50), 3), "p95_s": round(self.percentile(95), 3),
           "max_s": round(max(self.latencies_s), 3) if self.latencies_s else None,
           "wall_s": round(self.wall_s, 2), "throughput_rps": round(self.throughput_rps, 3),
           "images_per_s": round(self.images_per_s, 2)}
    out.update({f"rss_{k}_mib": round(v, 1) for k, v in self.rss_mib.items()})
    return out

  def __str__(self) -> str:
    s = self.summary()
    lines = [f"{s['requests']} requests, {s['concurrency']} concurrent clients, "
             f"{s['wall_s']} s: statuses {s['statuses']}, {s['invalid']} invalid answers",
             f"latency of 200s: p50 {s['p50_s']} s, p95 {s['p95_s']} s, max {s['max_s']} s",
             f"throughput: {s['throughput_rps']} requests/s, {s['images_per_s']} images/s"]
    if self.rss_mib:
      lines.append("server RSS (MiB): " + ", ".join(f"{k} {v:.1f}"
                                                    for k, v in self.rss_mib.items()))
    return "\n".join(lines)


def check_answer(status: int, headers: Mapping[str, str], content: bytes,
                 num_images: int | None) -> str | None:
  """Why an answer to POST /generate is invalid, or None when it is valid."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if status == 200:
    kind = headers.get("content-type", "")
    if kind.startswith("image/png"):
      try:
        Image.open(io.BytesIO(content)).load()
      except Exception as e:  # pylint: disable=broad-except
        return f"200 with an unreadable PNG ({e})"
      if num_images is not None and headers.get("x-num-images") != str(num_images):
        return f"200 with {headers.get('x-num-images')} images, asked {num_images}"
      return None
    if kind.startswith("application/json"):
      body = json.loads(content)
      if num_images is not None and len(body.get("images", ())) != num_images:
        return f"200 with {len(body.get('images', ()))} images, asked {num_images}"
      return None
    return f"200 with content-type {kind!r}"
  try:
    detail = json.loads(content)["detail"]
  except Exception:  # pylint: disable=broad-except
    return f"{status} without a JSON detail: {content[:100]!r}"
  if status in (429, 503) and not headers.get("retry-after", "").isdigit():
    return f"{status} without Retry-After ({detail})"
  return None


async def _load(url: str, bodies: Callable[[int], dict], requests: int, concurrency: int,
                timeout_s: float, pid: int | None, rss_every_s: float) -> LoadReport:
  import httpx  # pylint: disable=import-outside-toplevel
  statuses: collections.Counter = collections.Counter()
  invalid: list[str] = []
  latencies: list[float] = []
  images = 0
  next_index = 0
  rss: dict[str, float] = {}
  done = asyncio.Event()

  async def watch_rss():
    while not done.is_set():
      rss["max"] = max(rss.get("max", 0.0), rss_mib(pid))
      try:
        await asyncio.wait_for(done.wait(), rss_every_s)
      except asyncio.TimeoutError:
        pass

  async def client(c):
    nonlocal next_index, images
    while next_index < requests:
      i, next_index = next_index, next_index + 1
      body = bodies(i)
      start = time.perf_counter()
      try:
        r = await c.post(f"{url}/generate", json=body)
      except httpx.HTTPError as e:
        statuses[-1] += 1
        invalid.append(f"request {i}: {type(e).__name__}: {e}")
        continue
      elapsed = time.perf_counter() - start
      statuses[r.status_code] += 1
      why = check_answer(r.status_code, r.headers, r.content, body.get("num_images"))
      if why:
        invalid.append(f"request {i}: {why}")
      elif r.status_code == 200:
        latencies.append(elapsed)
        images += int(r.headers.get("x-num-images", 0) or body.get("num_images", 0))

  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as c:
    if pid is not None:
      rss["before"] = rss_mib(pid)
      watcher = asyncio.create_task(watch_rss())
    start = time.perf_counter()
    await asyncio.gather(*(client(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    done.set()
    if pid is not None:
      await watcher
      rss["after"] = rss_mib(pid)
  return LoadReport(requests=requests, concurrency=concurrency, statuses=dict(statuses),
                    invalid=invalid, latencies_s=latencies, wall_s=wall, images=images,
                    rss_mib=rss)


def run_load(url: str, body: dict | Sequence[dict] | Callable[[int], dict], *,
             requests: int = 200, concurrency: int = 20, timeout_s: float = 600.0,
             pid: int | None = None, rss_every_s: float = 0.25) -> LoadReport:
  """Sends `requests` POST /generate from `concurrency` clients; checks every answer.

  Args:
    url: the server, e.g. "http://127.0.0.1:8000".
    body: the request body; a sequence (request i sends body[i % len]) or a
      function of i. Bodies without a seed get seed i, so requests differ.
    requests: how many requests in all.
    concurrency: clients sending at the same time.
    timeout_s: client-side timeout per request.
    pid: the server's process id, to sample its RSS.
    rss_every_s: RSS sampling period.

  Returns:
    The LoadReport.
  """
  if callable(body):
    make = body
  else:
    seq = [body] if isinstance(body, dict) else list(body)
    make = lambda i: {"seed": i, **seq[i % len(seq)]}  # noqa: E731
  return asyncio.run(_load(url.rstrip("/"), make, requests, concurrency, timeout_s, pid,
                           rss_every_s))


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--url", default="http://127.0.0.1:8000")
  p.add_argument("--model", default=None, help="default: the server's first model")
  p.add_argument("--requests", type=int, default=200)
  p.add_argument("--concurrency", type=int, default=20)
  p.add_argument("--num_images", type=int, default=16)
  p.add_argument("--sampler", default="ddim")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--timeout", type=float, default=600.0)
  p.add_argument("--pid", type=int, default=None, help="server process id, for its RSS")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  args = p.parse_args(argv)
  body = {"num_images": args.num_images, "sampler": args.sampler, "steps": args.steps}
  if args.model:
    body["model"] = args.model
  report = run_load(args.url, body, requests=args.requests, concurrency=args.concurrency,
                    timeout_s=args.timeout, pid=args.pid)
  print(json.dumps(report.summary()) if args.json else report)
  for line in report.invalid[:10]:
    print("invalid:", line)
  return 1 if report.invalid or report.server_errors else 0


if __name__ == "__main__":
  raise SystemExit(main())
