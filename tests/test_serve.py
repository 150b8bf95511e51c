"""The HTTP server (launch/serve.py): every endpoint, every error class, the queue.

The models are the smoke configs (unconditional DDPM, class-conditional DDPM
with a null label, EBM), each a workdir with a checkpoint of its initial
state written by the training loop's `Checkpointer` (the server needs a
checkpoint, not a trained model; skipping the train-step compiles keeps the
suite fast). One `Batcher` (queue + worker, warmed up once: the `batcher` fixture of
tests/conftest.py) is shared by the whole session and by
tests/test_serve_browser.py; each test builds its app over it with
`manage=False`.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import pathlib
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from configs import serve as serve_configs
from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch.serve import app as serve
from launch.serve import models as serve_models
from launch.serve import schema as serve_schema
from launch.serve import queue as serve_queue
from launch.config_errors import ConfigError

from helpers import BUCKETS, ROOT, SMOKE, serve_config

SERVED = ("ddpm", "cond", "ebm")   # the shared batcher's models (tests/conftest.py)
T = 20
ODE_LIKE = ("dpmpp_2m", "dpmpp_2m_sde", "heun")   # the DPM-Solver / Heun samplers: steps < T


@pytest.fixture(scope="session")
def workdirs(smoke_workdir):
  return {name: smoke_workdir(name) for name in SERVED}


@pytest.fixture
def app(batcher):
  return serve.create_app(batcher, manage=False)


@pytest.fixture
def client(app):
  return TestClient(app, raise_server_exceptions=False)


def _png(content: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(content)))


def _json_images(body: dict) -> list[np.ndarray]:
  return [_png(base64.b64decode(s)) for s in body["images"]]


def _post_many(app, bodies, *, hold_until_waiting: int = 0, batcher=None):
  """Posts `bodies` concurrently; with hold_until_waiting, holds the worker until that many wait."""
  async def scenario():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 timeout=600) as c:
      if not hold_until_waiting:
        return await asyncio.gather(*(c.post("/generate", json=b) for b in bodies))
      with batcher.hold():
        tasks = [asyncio.create_task(c.post("/generate", json=b)) for b in bodies]
        for _ in range(2000):
          if batcher.waiting >= hold_until_waiting:
            break
          await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
      return await asyncio.gather(*tasks)
  return asyncio.run(scenario())


# ---------------------------------------------------------------------------
# /health, /models, the page, the OpenAPI document.


def test_health_reports_ready_models_and_queue(client):
  r = client.get("/health")
  assert r.status_code == 200
  body = r.json()
  assert body["status"] == "ready" and body["ready"] is True
  assert {m["name"] for m in body["models"]} == set(SERVED)
  assert all(m["programs"] >= len(BUCKETS) for m in body["models"])  # warm-up compiled
  assert body["queue_size"] == 32 and body["waiting"] == 0


def test_not_ready_answers_503_with_retry_after(batcher):
  cold = serve_queue.Batcher(batcher.models, batcher.limits, warmup="none")  # never started
  c = TestClient(serve.create_app(cold, manage=False))
  r = c.get("/health")
  assert r.status_code == 503 and r.json()["ready"] is False
  assert int(r.headers["retry-after"]) > 0
  r = c.post("/generate", json={"model": "ddpm", "num_images": 1})
  assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
  assert "not ready" in r.json()["detail"]
  assert c.get("/models").status_code == 200


def test_models_describes_tasks_shapes_classes_samplers_and_limits(client):
  body = client.get("/models").json()
  models = {m["name"]: m for m in body["models"]}
  assert set(models) == set(SERVED)
  ddpm, cond, ebm = models["ddpm"], models["cond"], models["ebm"]
  assert (ddpm["task"], ddpm["dataset"], ddpm["image_shape"]) == ("ddpm", "fashion_mnist",
                                                                  [28, 28, 1])
  assert not ddpm["conditional"] and ddpm["classes"] == [] and not ddpm["guidance"]
  assert {s["name"]: (s["steps_min"], s["steps_max"]) for s in ddpm["samplers"]} == {
      "ancestral": (T, T), "deterministic": (T, T), "ddim": (1, T),
      "dpmpp_2m": (1, T - 1), "dpmpp_2m_sde": (1, T - 1), "heun": (1, T - 1)}
  ddim = next(s for s in ddpm["samplers"] if s["name"] == "ddim")
  assert ddim["steps_choices"] == sorted(
      {v for v in serve_schema.STEP_CHOICES if v <= T} | {ddim["steps_default"]})
  assert cond["conditional"] and cond["guidance"] and cond["num_classes"] == 10
  assert cond["classes"] == [str(i) for i in range(10)]  # MNIST
  assert (ebm["task"], ebm["image_shape"], ebm["default_sampler"]) == ("ebm", [28, 28, 1],
                                                                       "langevin")
  (langevin,) = ebm["samplers"]
  assert langevin["steps_default"] == 8 and langevin["options"]["step_size"]["default"] == 10.0
  assert body["limits"]["max_images"] == 16 and body["limits"]["buckets"] == [4, 16]
  assert body["limits"]["max_body_bytes"] == 4096


def test_page_and_its_static_files(client):
  r = client.get("/")
  assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
  assert 'id="generate"' in r.text and "/static/app.js" in r.text
  assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
  assert client.get("/static/style.css").status_code == 200
  assert client.get("/static/index.html").status_code == 404
  assert client.get("/static/..%2Fserve.py").status_code == 404


def test_api_docs_are_served_from_the_package_without_external_hosts(client):
  for path in ("/docs", "/redoc"):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert "/static/docs.js" in refs and "/static/style.css" in refs
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert "://" not in r.text  # no CDN (FastAPI's pages load cdn.jsdelivr.net)
  script = client.get("/static/docs.js")
  assert script.status_code == 200 and "://" not in script.text
  assert 'fetch("/openapi.json")' in script.text
  assert '<a href="/docs">' in client.get("/").text  # the page's "API docs" link


def test_openapi_documents_endpoints_and_a_request_without_paths(client):
  spec = client.get("/openapi.json").json()
  assert {"/health", "/models", "/generate"} <= set(spec["paths"])
  generate = spec["paths"]["/generate"]["post"]
  assert {"200", "400", "413", "422", "429", "503"} <= set(generate["responses"])
  assert "image/png" in generate["responses"]["200"]["content"]
  assert "Retry-After" in generate["responses"]["429"]["headers"]
  ref = generate["requestBody"]["content"]["application/json"]["schema"]["$ref"]
  request = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
  # Nothing in a request names a file, a workdir or a checkpoint.
  assert set(request["properties"]) == {"model", "num_images", "seed", "sampler", "steps", "eta",
                                        "label", "guidance", "step_size", "format"}
  assert request["properties"]["model"]["enum"] == sorted(SERVED)
  assert request["properties"]["num_images"]["maximum"] == 16
  assert request["additionalProperties"] is False


# ---------------------------------------------------------------------------
# /generate.


def test_generate_png_grid(client):
  r = client.post("/generate", json={"model": "ddpm", "num_images": 4, "seed": 3})
  assert r.status_code == 200 and r.headers["content-type"] == "image/png"
  grid = _png(r.content)
  assert grid.shape == (2 * 30 + 2, 2 * 30 + 2) and grid.dtype == np.uint8  # 2x2 28x28 tiles, gray
  assert r.headers["x-seed"] == "3" and r.headers["x-model"] == "ddpm"
  assert (r.headers["x-sampler"], r.headers["x-steps"], r.headers["x-num-images"]) == (
      "ancestral", str(T), "4")


def test_generate_json_with_base64_pngs(client):
  r = client.post("/generate", json={"model": "ebm", "num_images": 3, "seed": 1,
                                     "format": "json"})
  assert r.status_code == 200, r.text
  body = r.json()
  assert (body["model"], body["task"], body["seed"], body["num_images"]) == ("ebm", "ebm", 1, 3)
  assert (body["sampler"], body["steps"], body["step_size"]) == ("langevin", 8, 10.0)
  images = _json_images(body)
  assert len(images) == 3 and all(x.shape == (28, 28) for x in images)
  assert _png(base64.b64decode(body["grid"])).shape == (2 * 30 + 2, 2 * 30 + 2)


def test_no_seed_picks_one_and_returns_it(client):
  r = client.post("/generate", json={"model": "ddpm", "num_images": 1, "format": "json"})
  seed = r.json()["seed"]
  again = client.post("/generate", json={"model": "ddpm", "num_images": 1, "seed": seed,
                                         "format": "json"})
  assert again.json()["images"] == r.json()["images"]


def test_same_seed_same_images_whatever_the_bucket(client):
  def images(num, seed):
    r = client.post("/generate", json={"model": "ddpm", "num_images": num, "seed": seed,
                                       "format": "json"})
    assert r.status_code == 200, r.text
    return _json_images(r.json())
  two, five = images(2, 5), images(5, 5)  # bucket 4 and bucket 16
  for a, b in zip(two, five):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(two, images(2, 6)))
  assert not np.array_equal(two[0], two[1])  # images of one request differ


def test_conditional_labels_and_guidance(client):
  r = client.post("/generate", json={"model": "cond", "num_images": 4, "label": 3, "seed": 0,
                                     "format": "json"})
  body = r.json()
  assert r.status_code == 200, r.text
  assert body["labels"] == [3, 3, 3, 3] and body["guidance"] == 2.0  # the config's default
  body = client.post("/generate", json={"model": "cond", "num_images": 4, "guidance": 3.5,
                                        "format": "json"}).json()
  assert body["labels"] == [0, 1, 2, 3] and body["guidance"] == 3.5  # classes in turn


def test_ddim_and_langevin_options_are_used_and_reproducible(client):
  ddim = {"model": "ddpm", "num_images": 2, "seed": 9, "sampler": "ddim", "steps": 5,
          "eta": 0.5, "format": "json"}
  first = client.post("/generate", json=ddim)
  assert first.status_code == 200, first.text
  assert (first.json()["sampler"], first.json()["steps"], first.json()["eta"]) == ("ddim", 5, 0.5)
  assert client.post("/generate", json=ddim).json()["images"] == first.json()["images"]
  langevin = {"model": "ebm", "num_images": 2, "seed": 9, "steps": 3, "step_size": 2.5,
              "format": "json"}
  body = client.post("/generate", json=langevin).json()
  assert (body["steps"], body["step_size"]) == (3, 2.5)
  default = client.post("/generate", json={**langevin, "steps": None, "step_size": None}).json()
  assert default["images"] != body["images"]


def test_concurrent_same_settings_requests_share_one_device_call(app, batcher, client):
  bodies = [{"model": "ddpm", "num_images": 3, "seed": s, "format": "json"} for s in (1, 2, 3)]
  bodies.append({"model": "ebm", "num_images": 2, "seed": 1, "format": "json"})
  before = batcher.stats["batches"]
  responses = _post_many(app, bodies, hold_until_waiting=4, batcher=batcher)
  assert [r.status_code for r in responses] == [200] * 4
  assert [r.json()["batch_images"] for r in responses] == [9, 9, 9, 2]
  assert batcher.stats["batches"] - before == 2
  for body, r in zip(bodies[:3], responses):  # batched images == images made alone
    alone = client.post("/generate", json=body).json()
    assert alone["batch_images"] == 3 and alone["images"] == r.json()["images"]


def test_full_queue_answers_429_with_retry_after(app, batcher, monkeypatch):
  monkeypatch.setattr(batcher, "limits", dataclasses.replace(batcher.limits, queue_size=2))
  bodies = [{"model": "ddpm", "num_images": 1, "seed": s} for s in range(3)]
  responses = _post_many(app, bodies, hold_until_waiting=2, batcher=batcher)
  codes = sorted(r.status_code for r in responses)
  assert codes == [200, 200, 429]
  rejected = next(r for r in responses if r.status_code == 429)
  assert int(rejected.headers["retry-after"]) >= 1
  assert rejected.json()["detail"].startswith("queue: the queue is full")


def test_time_limit_answers_503_with_retry_after(app, batcher, client, monkeypatch):
  monkeypatch.setattr(batcher, "limits", dataclasses.replace(batcher.limits, timeout_s=0.3))
  with batcher.hold():
    r = client.post("/generate", json={"model": "ddpm", "num_images": 1})
  assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
  assert "within the server's limit of 0.3 s" in r.json()["detail"]
  monkeypatch.undo()
  assert client.post("/generate", json={"model": "ddpm", "num_images": 1}).status_code == 200


def test_a_failing_device_call_is_a_500_and_the_server_goes_on(batcher, client, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("device on fire")
  monkeypatch.setattr(batcher.models["ebm"], "run", boom)
  r = client.post("/generate", json={"model": "ebm", "num_images": 1})
  assert r.status_code == 500 and "sampling failed" in r.json()["detail"]
  monkeypatch.undo()
  assert client.post("/generate", json={"model": "ebm", "num_images": 1}).status_code == 200
  assert client.get("/health").json()["ready"]


def test_random_floats_compile_no_new_program(app, batcher, monkeypatch):
  """Continuous options (eta, guidance, step_size) are program inputs: 1,000 requests with
  random valid floats compile nothing once each (model, sampler, steps, bucket) is compiled."""
  import jax  # pylint: disable=import-outside-toplevel
  backend_compiles = []

  def on_event(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      backend_compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(on_event)
  for model in batcher.models.values():  # the program lookup of a real call, then zeros
    monkeypatch.setattr(model, "run", lambda static, bucket, seeds, index, extras, m=model: (
        m.program(static, bucket), np.zeros((bucket, *m.image_shape), np.float32))[1])
  limits = batcher.limits
  rng = np.random.default_rng(0)
  warm = {m.name: m.compiles for m in batcher.models.values()}
  defaults = _post_many(app, [{"model": name, "num_images": n} for name in batcher.models
                              for n in (1, limits.max_images)])  # the warmed-up programs
  assert [r.status_code for r in defaults] == [200] * len(defaults)
  assert {m.name: m.compiles for m in batcher.models.values()} == warm

  def body(i):
    kind = i % 3
    n = int(rng.integers(1, limits.max_images + 1))
    if kind == 0:
      return {"model": "ddpm", "num_images": n, "sampler": "ddim", "steps": 5,
              "eta": float(rng.uniform(0.0, 1.0)), "seed": i}
    if kind == 1:
      return {"model": "cond", "num_images": n, "guidance": float(rng.uniform(1.5, 20.0)),
              "seed": i}
    return {"model": "ebm", "num_images": n,
            "step_size": float(rng.choice([5e-324, 1e-300, rng.uniform(1e-6, 100.0)])),
            "seed": i}
  first = _post_many(app, [{**body(k), "num_images": n} for k in range(3)
                           for n in (1, limits.max_images)])  # every program once
  assert all(r.status_code == 200 for r in first), [r.text for r in first]
  before = {m.name: m.compiles for m in batcher.models.values()}
  backend_compiles.clear()
  responses = []
  for start in range(0, 1000, 25):  # 25 at a time: fewer than the queue holds
    responses += _post_many(app, [body(i) for i in range(start, start + 25)])
  assert sorted({r.status_code for r in responses}) == [200], [
      r.text for r in responses if r.status_code != 200][:3]
  jax.monitoring.unregister_event_duration_listener(on_event)
  assert {m.name: m.compiles for m in batcher.models.values()} == before
  assert backend_compiles == []


def test_integer_steps_cause_a_known_number_of_programs(app, batcher, monkeypatch):
  """Every steps value 1..T of every DDIM / ODE-solver request, and Langevin steps up to
  1024: a step outside limits.step_choices is a 422, so the programs a client can cause
  are at most len(step_choices) + 1 per sampler and bucket."""
  programs = {name: set() for name in batcher.models}  # what each call would compile
  for model in batcher.models.values():
    monkeypatch.setattr(model, "run", lambda static, bucket, seeds, index, extras, m=model: (
        programs[m.name].add((static, bucket)), np.zeros((bucket, *m.image_shape),
                                                          np.float32))[1])
  bodies = [{"model": "ddpm", "num_images": 1, "sampler": sampler, "steps": steps}
            for sampler in ("ddim", "dpmpp_2m", "dpmpp_2m_sde", "heun")
            for steps in range(1, T + 1)]
  bodies += [{"model": "ebm", "num_images": 1, "steps": steps} for steps in range(1, 1025)]
  responses = []
  for start in range(0, len(bodies), 25):
    responses += _post_many(app, bodies[start:start + 25])
  choices = batcher.limits.step_choices
  for b, r in zip(bodies, responses):
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:  # not a choice, or T for an ODE solver (at most T - 1)
      assert r.json()["field"] == "steps", r.text
      assert b["steps"] not in choices or (b.get("sampler") in ODE_LIKE and
                                           b["steps"] == T), r.text
  assert 4 * 10 <= len(programs["ddpm"]) <= 4 * (len(choices) + 1), len(programs["ddpm"])
  assert 10 <= len(programs["ebm"]) <= len(choices) + 1, len(programs["ebm"])


# ---------------------------------------------------------------------------
# Bad input: a 4xx whose message names the field.

BAD_REQUESTS = [
    # unknown model, or a path where a name goes
    ({"model": "nope"}, "model"),
    ({"model": "../../runs/ddpm_fashion_mnist"}, "model"),
    ({"model": 3}, "model"),
    # num_images
    ({"model": "ddpm", "num_images": 0}, "num_images"),
    ({"model": "ddpm", "num_images": 17}, "num_images"),
    ({"model": "ddpm", "num_images": "3"}, "num_images"),
    ({"model": "ddpm", "num_images": 2.5}, "num_images"),
    ({"model": "ddpm", "num_images": True}, "num_images"),
    ({"model": "ddpm", "num_images": None}, "num_images"),
    # seed
    ({"model": "ddpm", "seed": -1}, "seed"),
    ({"model": "ddpm", "seed": 2**32}, "seed"),
    ({"model": "ddpm", "seed": "7"}, "seed"),
    # steps
    ({"model": "ddpm", "steps": 0}, "steps"),
    ({"model": "ddpm", "steps": 5}, "steps"),                       # ancestral takes all T
    ({"model": "ddpm", "sampler": "ddim", "steps": T + 1}, "steps"),
    ({"model": "ebm", "steps": 1025}, "steps"),
    ({"model": "ddpm", "sampler": "ddim", "steps": 11}, "steps"),   # not a step choice
    ({"model": "ddpm", "sampler": "dpmpp_2m", "steps": T}, "steps"),  # ODE solvers: < T
    ({"model": "ebm", "steps": 999}, "steps"),                      # not a step choice
    ({"model": "ebm", "steps": [8]}, "steps"),
    # sampler
    ({"model": "ddpm", "sampler": "langevin"}, "sampler"),
    ({"model": "ebm", "sampler": "ddim"}, "sampler"),
    ({"model": "ddpm", "sampler": "euler"}, "sampler"),
    # label / guidance on models that cannot take them, and out of range
    ({"model": "ddpm", "label": 1}, "label"),
    ({"model": "ebm", "label": 0}, "label"),
    ({"model": "cond", "label": 10}, "label"),
    ({"model": "cond", "label": -1}, "label"),
    ({"model": "ddpm", "guidance": 2.0}, "guidance"),
    ({"model": "cond", "guidance": 1e6}, "guidance"),
    ({"model": "cond", "guidance": -1}, "guidance"),
    # sampler-specific options
    ({"model": "ddpm", "eta": 0.5}, "eta"),
    ({"model": "ddpm", "sampler": "ddim", "eta": 2}, "eta"),
    ({"model": "ddpm", "step_size": 1.0}, "step_size"),
    ({"model": "ebm", "step_size": 0}, "step_size"),
    ({"model": "ebm", "step_size": 1e9}, "step_size"),
    ({"model": "ebm", "eta": 0.1}, "eta"),
    # format and unknown fields (no request can name a file or a checkpoint)
    ({"model": "ddpm", "format": "gif"}, "format"),
    ({"model": "ddpm", "workdir": "/tmp"}, "workdir"),
    ({"model": "ddpm", "checkpoint": "runs/x/checkpoints/1"}, "checkpoint"),
]


@pytest.mark.parametrize("body,field", BAD_REQUESTS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_REQUESTS)])
def test_bad_request_is_422_naming_the_field(client, body, field):
  r = client.post("/generate", json=body)
  assert r.status_code == 422, r.text
  error = r.json()
  assert error["field"] == field
  assert error["detail"].startswith(f"{field}: "), error["detail"]


RAW_BODIES = [
    (b"{", "application/json", 400, "body"),
    (b'{"model": "ddpm",}', "application/json", 400, "body"),
    (b"", "application/json", 422, "body"),
    (b"[1, 2]", "application/json", 422, "body"),
    (b'"ddpm"', "application/json", 422, "body"),
    (b"null", "application/json", 422, "body"),
    (b'{"model": "ddpm"}', "text/plain", 422, "body"),
    (b'{"model": "cond", "guidance": NaN}', "application/json", 422, "guidance"),
    (b'{"model": "cond", "guidance": Infinity}', "application/json", 422, "guidance"),
    (b'{"model": "ddpm", "num_images": 1e400}', "application/json", 422, "num_images"),
    (b"[" * 2000 + b"]" * 2000, "application/json", 400, "body"),
    (b'{"model": "ddpm", "pad": "' + b"x" * 5000 + b'"}', "application/json", 413, "body"),
]


@pytest.mark.parametrize("content,content_type,status,field", RAW_BODIES)
def test_malformed_and_oversized_bodies(client, content, content_type, status, field):
  r = client.post("/generate", content=content, headers={"content-type": content_type})
  assert r.status_code == status, r.text
  assert r.json()["field"] == field and r.json()["detail"].startswith(f"{field}: ")


def test_streamed_oversized_body_without_content_length_is_413(app):
  async def chunks():
    yield b'{"model": "ddpm", "pad": "'
    for _ in range(10):
      yield b"x" * 1000
    yield b'"}'

  async def post():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
      return await c.post("/generate", content=chunks(),
                          headers={"content-type": "application/json"})
  r = asyncio.run(post())
  assert "content-length" not in r.request.headers
  assert r.status_code == 413 and r.json()["field"] == "body"


def test_unknown_paths_and_methods_are_4xx(client):
  assert client.get("/nope").status_code == 404
  assert client.get("/generate").status_code == 405
  assert client.delete("/models").status_code == 405


@pytest.mark.slow
def test_denoiser_is_served_with_its_one_step(smoke_workdir):
  config = serve_config({"dn": smoke_workdir("dn")})
  config.limits.buckets = (4,)
  one = serve.build(config).start()
  try:
    assert one.wait_ready(300), one.error
    c = TestClient(serve.create_app(one, manage=False))
    (model,) = c.get("/models").json()["models"]
    assert model["task"] == "denoiser" and [s["name"] for s in model["samplers"]] == ["one_step"]
    r = c.post("/generate", json={"num_images": 3, "seed": 1, "format": "json"})
    assert r.status_code == 200, r.text
    assert (r.json()["sampler"], r.json()["steps"], len(r.json()["images"])) == ("one_step", 1, 3)
    r = c.post("/generate", json={"steps": 2})
    assert r.status_code == 422 and r.json()["field"] == "steps"
  finally:
    one.stop()


# ---------------------------------------------------------------------------
# Configs and entry points.


def test_serve_configs_are_valid():
  for arg in (None, "all"):
    config = serve_configs.get_config(arg)
    serve._check_serve_config(config)  # pylint: disable=protected-access
    limits = serve_schema.Limits.from_config(config.limits)
    assert limits.max_images == 64 and limits.bucket(5) == 16
  assert set(serve_configs.get_config("all").models) == {
      "ddpm_fashion_mnist", "ebm_fashion_mnist", "ddpm_mnist_conditional"}
  with pytest.raises(ValueError, match="unknown variant"):
    serve_configs.get_config("nope")


@pytest.mark.parametrize("key,value", [("buckets", (4, 2)), ("buckets", ()), ("queue_size", 0),
                                       ("timeout_s", -1.0), ("max_body_bytes", 10)])
def test_bad_limits_name_the_key(key, value):
  config = serve_configs.get_config()
  config.limits[key] = value
  with pytest.raises(ConfigError, match=f"config.limits.{key}="):
    serve_schema.Limits.from_config(config.limits)


def test_bad_serve_configs_name_the_key(tmp_path, workdirs):
  config = serve_config({"ddpm": workdirs["ddpm"]})
  config.warmup = "sometimes"
  with pytest.raises(ConfigError, match="config.warmup="):
    serve.build(config)
  config = serve_config({"ddpm": tmp_path / "empty"})
  with pytest.raises(checkpoint_lib.CheckpointError, match="no checkpoint"):
    serve.build(config)
  config = serve_config({})
  config.models["bad name!"] = serve_configs.model(SMOKE["ddpm"], str(workdirs["ddpm"]))
  with pytest.raises(ConfigError, match="models.bad name!"):
    serve.build(config)
  config = serve_config({})
  config.models.clf = serve_configs.model(f"{ROOT}/configs/classifier_fashion_mnist.py:smoke",
                                          str(tmp_path))
  with pytest.raises(ConfigError, match="models.clf.config"):
    serve.build(config)


def test_empty_config_spec_reads_the_workdirs_config_json(workdirs):
  entry = serve_configs.model("", str(workdirs["ebm"]))
  config = serve_models._experiment_config("ebm", entry, str(workdirs["ebm"]))  # pylint: disable=protected-access
  assert config.task == "ebm" and config.ebm.sample_steps == 8


def test_mode_serve_serves_one_workdir(monkeypatch, workdirs):
  served = []
  monkeypatch.setattr(serve, "run", served.append)
  experiment = config_lib.load(SMOKE["cond"])
  serve.serve(experiment, str(workdirs["cond"]) + "/")
  (config,) = served
  assert list(config.models) == ["cond"]
  assert config.models.cond.config is experiment and config.models.cond.use_ema
  assert (config.host, config.port) == ("127.0.0.1", 8000)
  serve.serve(serve_configs.get_config("all"), None)  # a serve config is served as it is
  assert len(served[1].models) == 3
  with pytest.raises(ConfigError, match="workdir"):
    serve.serve(experiment, None)


def test_cli_fails_with_one_line_when_a_checkpoint_is_missing(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  r = subprocess.run(
      [sys.executable, "-m", "launch.serve", "--config", f"{ROOT}/configs/serve.py",
       f"--config.models.ddpm_fashion_mnist.workdir={tmp_path}/missing",
       f"--config.models.ddpm_fashion_mnist.config={SMOKE['ddpm']}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "error: no checkpoint in" in r.stderr


# ---------------------------------------------------------------------------
# Property-based fuzzing of the OpenAPI schema (schemathesis).

# Only these tests need schemathesis and hypothesis (both in the [test] extra):
# without them the fuzz tests skip, and every other test here still runs.

@pytest.fixture(scope="session")
def fuzz_libs():
  """(schemathesis, hypothesis), or a skip of the fuzz test that asked for them."""
  return pytest.importorskip("schemathesis"), pytest.importorskip("hypothesis")


def fuzz(libs, app, mode: str, max_examples: int) -> None:
  """Hypothesis over every operation of the app's OpenAPI schema; fails on any check.

  Uses schemathesis' strategies with plain `hypothesis.given` (its pytest
  plugin is not needed). `mode` is "positive" (schema-valid requests, which
  the models may still refuse with a 422) or "negative" (schema-invalid ones,
  which must get a 4xx).
  """
  schemathesis, hypothesis = libs
  from schemathesis import checks as st_checks  # pylint: disable=g-import-not-at-top
  from schemathesis.specs.openapi import checks as st_openapi_checks  # pylint: disable=g-import-not-at-top
  fuzz_checks = [st_checks.not_a_server_error, st_openapi_checks.status_code_conformance,
                 st_openapi_checks.content_type_conformance,
                 st_openapi_checks.response_schema_conformance,
                 st_openapi_checks.negative_data_rejection]
  schema = schemathesis.openapi.from_asgi("/openapi.json", app)
  strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

  @hypothesis.settings(max_examples=max_examples, deadline=None, derandomize=True,
                       database=None, suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(case=strategy)
  def check(case):
    case.call_and_validate(checks=fuzz_checks)
  check()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_openapi_no_server_errors(fuzz_libs, batcher, monkeypatch, mode):
  """Fuzzes validation, queue and encoding (the image endpoints' uploads too); device calls
  are instant zeros here."""
  for model in batcher.models.values():
    monkeypatch.setattr(model, "run", lambda static, bucket, seeds, index, extras, m=model:
                        np.zeros((bucket, *m.output_shape(static)), np.float32))
  fuzz(fuzz_libs, serve.create_app(batcher, manage=False), mode, max_examples=150)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_openapi_with_real_sampling(fuzz_libs, batcher, mode):
  """The same with real sampling (a compile for every new steps / step size)."""
  fuzz(fuzz_libs, serve.create_app(batcher, manage=False), mode, max_examples=60)


def test_launch_mode_serve_takes_a_serve_config(tmp_path):
  """`python -m launch --mode serve --config configs/serve.py` reaches the server's own checks."""
  root = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(
      [sys.executable, "-m", "launch", "--mode", "serve", "--config", "configs/serve.py",
       f"--config.models.ddpm_fashion_mnist.workdir={tmp_path / 'missing'}"],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "no checkpoint in" in proc.stderr and "ddpm_fashion_mnist" in proc.stderr
  assert "unknown" not in proc.stderr.lower()
