"""The HTTP API (FastAPI) over trained DDPM and EBM workdirs.

    python -m launch.serve --config configs/serve.py [--config.port=8080 ...]
    python -m launch --mode serve --config configs/X.py --workdir DIR \\
        [--config.serve.port=8080 ...]                                   # one workdir

At start the server loads the newest checkpoint of every model its config
names (EMA parameters by default; a missing or unreadable checkpoint stops it
with a one-line error), starts listening, and compiles and runs once the
warm-up programs in the background; `GET /health` answers 503 until they are
done, then 200.

Endpoints (OpenAPI at /openapi.json; /docs and /redoc render it with the
package's own static/docs.html: no CDN, works offline):
  GET  /          a page to pick model, class, sampler, steps and seed.
  GET  /health    ready or not, the queue and counters.
  GET  /models    every model: task, dataset, image shape, classes, samplers
                  (steps range and options) and the server's limits.
  POST /generate  {"model", "num_images", "seed", "sampler", "steps", "eta",
                  "label", "guidance", "step_size", "format"} -> a PNG grid,
                  or JSON with one base64 PNG per image and the grid.
  Energy-based models (multipart/form-data: `image`, a PNG of the model's
  size and channels, and form fields; launch/serve/uploads.py checks it):
  POST /inpaint   image + a box (top, left, height, width) or a `mask` PNG
                  (white = fill), steps, step_size, label, num_images, seed,
                  format -> the inpainted PNG (known pixels exact), or JSON
                  with the results and the chains' starts.
  POST /denoise   image + sigma (noise added first; 0: already noisy), steps,
                  step_size, label, num_images, seed, format -> as /inpaint.
  POST /energy    image -> JSON: E(x) (the OOD score), and for a
                  class-conditional EBM E(x, y), p(y | x), the predicted class.
  GET  /examples  ?model= -> up to `limits.max_examples` test images (404
                  when the dataset is not on the server).

Same seed, same bytes: an image depends only on (model, options, seed,
index), not on `num_images`, the bucket or the requests batched with it
(launch/serve/programs.py says how, and what it costs).

Connections (launch/serve/connections.py; bounds in `limits`, see
configs/serve.py): a client must send a request's headers within
`header_timeout_s` (10 s) of connecting or of its previous answer, the whole
request within `request_timeout_s` (30 s) of its first byte, and its body at
`min_body_rate` (1024 bytes/s) at least after `body_rate_grace_s` (5 s), else
408 and the connection is closed; a body is read in full before its request
takes one of the compute slots below; idle keep-alive connections
close after `keep_alive_s` (5 s); at most `max_connections` (2048) are open,
a new one beyond closing the oldest idle one; at most `max_requests` (256)
requests are in progress, beyond which the answer is a 503 with Retry-After.
Idle or slow clients therefore cannot stop /health or /generate answering
others (1,000 idle sockets from one client are tested).

Requests never name files: a model is one of the names loaded at start.
Bad input is a 4xx whose JSON body {"detail", "field", "errors"} names the
field: 400 malformed JSON, 413 body over `limits.max_body_bytes` (uploads:
`limits.max_upload_bytes`, counted as the body arrives) or a PNG declaring
more than `limits.max_image_pixels` pixels, 422 a value the schema or the
model refuses (unknown model, too many images, steps out of range, a label
for an unconditional model, wrong types, unknown fields; an upload that is
not a whole PNG of the model's size, bit depth and channels, a box outside
the image, an empty mask). 429 (queue full) and 503 (warming up, stopping, or the request's
time limit passed) carry Retry-After. Sampling runs on the worker thread of
`launch.serve.queue.Batcher`, never on the event loop; see that module for
batching and `launch.serve.programs` for programs and determinism.

The pieces: launch/serve/schema.py (what a request may ask: `Limits`,
`Options`, `Plan`), programs.py (per-task adapters: request -> plan ->
compiled program), models.py (a loaded workdir and its programs), queue.py
(the batcher), api.py (response schemas, errors, encoding), image_routes.py
(the EBM endpoints), connections.py and uploads.py (hostile clients and
files); this module builds the app and runs the server.
"""
# No `from __future__ import annotations` here: FastAPI and pydantic read the
# annotations of the request model and the endpoint built inside `create_app`.
import contextlib
import pathlib
import secrets
import sys
import time

import fastapi
import ml_collections
from absl import logging
from fastapi import responses as fastapi_responses
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from launch.config_errors import ConfigError
from launch.serve import image_routes
from launch.serve.api import (RETRY_AFTER, GenerateResponse, HealthResponse, ModelDescription,
                              ModelHealth, ModelsResponse, encode_images, error_response,
                              error_responses, limits_description, request_model, run_job,
                              validation_response)
from launch.serve.connections import BodyLimit, InFlightLimit, guarded_protocol, raise_fd_limit
from launch.serve.models import load_model
from launch.serve.queue import Batcher, Result
from launch.serve.schema import MAX_SEED, WARMUP, Limits, Options, RequestError

_STATIC = pathlib.Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"app.js": "text/javascript; charset=utf-8",
                 "images.js": "text/javascript; charset=utf-8",
                 "docs.js": "text/javascript; charset=utf-8",
                 "style.css": "text/css; charset=utf-8"}


def create_app(batcher: Batcher, *, manage: bool = True) -> fastapi.FastAPI:
  """The FastAPI app over `batcher`'s models.

  Args:
    batcher: the loaded models, their queue and worker.
    manage: start the batcher's worker (warm-up) at startup and stop it at
      shutdown. Tests that share one batcher between apps pass False.

  Returns:
    The ASGI app, wrapped in the in-flight request limit and the body limits.
  """
  models = batcher.models
  if not models:
    raise ValueError("no models to serve")
  generate_request = request_model(models, batcher.limits)
  static = {name: (_STATIC / name).read_bytes() for name in _STATIC_FILES}
  index_html = (_STATIC / "index.html").read_bytes()
  docs_html = (_STATIC / "docs.html").read_bytes()

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    if manage:
      batcher.start()
    try:
      yield
    finally:
      if manage:
        batcher.stop()

  app = fastapi.FastAPI(
      title="DDPM and EBM samplers",
      version="1.0",
      description=("Samples from trained DDPM diffusion and energy-based models. "
                   "Errors: {detail, field, errors}; 429/503 carry Retry-After."),
      lifespan=lifespan,
      # FastAPI's /docs and /redoc load Swagger UI / ReDoc from a CDN (blank
      # offline); ours is static/docs.html, which renders /openapi.json.
      docs_url=None, redoc_url=None)

  @app.exception_handler(RequestValidationError)
  async def on_validationerror_response(request, exc):
    del request
    return validation_response(exc)

  @app.exception_handler(StarletteHTTPException)
  async def on_httperror_response(request, exc):
    del request
    detail = str(exc.detail)
    if exc.status_code == 400 and not detail.startswith("body:"):
      detail = f"body: cannot be parsed ({detail})"  # e.g. JSON nested too deeply
    field = detail.split(":", 1)[0] if ":" in detail else None
    return error_response(exc.status_code, field, detail, headers=exc.headers)

  @app.exception_handler(Exception)
  async def onerror_response(request, exc):
    del request
    logging.exception("serve: unhandled error", exc_info=exc)
    return error_response(500, None, f"internal error: {type(exc).__name__}")

  @app.get("/", include_in_schema=False)
  async def index():
    return fastapi.Response(index_html, media_type="text/html; charset=utf-8")

  @app.get("/docs", include_in_schema=False)
  @app.get("/redoc", include_in_schema=False)
  async def docs():
    return fastapi.Response(docs_html, media_type="text/html; charset=utf-8")

  @app.get("/static/{name}", include_in_schema=False)
  async def static_file(name: str):
    if name not in static:
      return error_response(404, "path", f"path: no static file {name!r}")
    return fastapi.Response(static[name], media_type=_STATIC_FILES[name])

  @app.get("/health", response_model=HealthResponse,
           responses={503: {"model": HealthResponse, "headers": RETRY_AFTER,
                            "description": "Not ready (warming up, failed or stopped)."}})
  async def health():
    """Ready (200) once every warm-up program is compiled; 503 before."""
    stats = {k: int(v) for k, v in batcher.stats.items()}
    body = HealthResponse(
        status=batcher.status, ready=batcher.ready, error=batcher.error,
        models=[ModelHealth(name=m.name, programs=m.num_programs, compiles=m.compiles)
                for m in models.values()],
        waiting=batcher.waiting, queue_size=batcher.limits.queue_size, stats=stats)
    if batcher.ready:
      return body
    return fastapi_responses.JSONResponse(body.model_dump(), status_code=503,
                                          headers={"Retry-After": "5"})

  catalog = ModelsResponse(models=[ModelDescription(**m.describe()) for m in models.values()],
                           limits=limits_description(batcher, generate_request))

  @app.get("/models", response_model=ModelsResponse)
  async def list_models():
    """The served models, their samplers and options, and the request limits."""
    return catalog

  png_headers = {name: {"description": text, "schema": {"type": kind}} for name, text, kind in (
      ("X-Model", "The model.", "string"), ("X-Seed", "The seed used.", "integer"),
      ("X-Sampler", "The sampler.", "string"), ("X-Steps", "Its steps.", "integer"),
      ("X-Num-Images", "Images in the grid.", "integer"),
      ("X-Batch-Images", "Images in the device call, batched requests included.", "integer"),
      ("X-Elapsed-Ms", "Milliseconds in the server.", "number"))}

  @app.post(
      "/generate", response_model=GenerateResponse,
      responses={200: {"content": {"image/png": {"schema": {"type": "string",
                                                            "format": "binary"}}},
                       "headers": png_headers,
                       "description": "A PNG grid (format png) or JSON (format json)."},
                 **error_responses((400, 408, 413, 422, 429, 500, 503))})
  async def generate(body: generate_request):  # type: ignore[valid-type]
    """Samples `num_images` images; the same seed and options give the same images."""
    started = time.monotonic()
    model = models[body.model]
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    options = Options(num_images=body.num_images, seed=seed, sampler=body.sampler,
                      steps=body.steps, eta=body.eta, label=body.label, guidance=body.guidance,
                      step_size=body.step_size)
    try:
      plan = model.plan(options)
    except RequestError as e:
      return error_response(422, e.field, str(e))
    result = await run_job(batcher, model, plan, seed, body.num_images)
    if not isinstance(result, Result):
      return result
    return await encode_images(model, plan.info, seed, result, body.format, started)

  image_models = {name: m for name, m in models.items() if m.image_ops}
  if image_models:
    image_routes.add_image_endpoints(app, batcher, image_models)
  limits = batcher.limits
  # The body is read in full before a request takes one of the `max_requests` slots:
  # clients still sending theirs (slowly) cannot hold the slots others compute in.
  return BodyLimit(InFlightLimit(app, limits.max_requests, _busy), error_response,
                   max_bytes=limits.max_body_bytes, upload_bytes=limits.max_upload_bytes,
                   upload_paths=image_routes.UPLOADS, request_timeout_s=limits.request_timeout_s,
                   min_body_rate=limits.min_body_rate,
                   body_rate_grace_s=limits.body_rate_grace_s)


async def _busy(scope, receive, send):
  """The 503 of a request beyond `limits.max_requests` in progress."""
  response = error_response(503, None, "server: too many requests in progress; retry later",
                    headers={"Retry-After": "1"})
  return await response(scope, receive, send)


# ---------------------------------------------------------------------------
# Configs and entry points.


def _check_serve_config(config) -> None:
  for key, kind in (("host", str), ("port", int), ("models", ml_collections.ConfigDict),
                    ("limits", ml_collections.ConfigDict), ("warmup", str)):
    if key not in config:
      raise ConfigError(key, None, reason="missing from the serve config (see configs/serve.py)")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, kind):
      raise ConfigError(key, value, reason=f"must be a {kind.__name__}")
  if not 0 <= config.port <= 65535:
    raise ConfigError("port", config.port, allowed="an integer in [0, 65535]")
  if config.warmup not in WARMUP:
    raise ConfigError("warmup", config.warmup, allowed=WARMUP)
  if not config.models:
    raise ConfigError("models", {}, reason="name at least one model")


def build(config) -> Batcher:
  """Loads every model of a serve config (checkpoints restored, nothing compiled).

  Raises:
    ConfigError: naming the bad key of the serve config.
    CheckpointError: a workdir without a readable checkpoint.
  """
  _check_serve_config(config)
  limits = Limits.from_config(config.limits)
  models = {name: load_model(name, entry, limits) for name, entry in config.models.items()}
  return Batcher(models, limits, warmup=config.warmup)


def run(config) -> None:
  """Loads the models of a serve config and serves them until SIGINT/SIGTERM."""
  import uvicorn  # pylint: disable=import-outside-toplevel
  batcher = build(config)
  app = create_app(batcher)
  log_level = config.get("log_level", "info")
  limits = batcher.limits
  # No `limit_concurrency`: uvicorn counts idle connections in it and answers
  # plain-text 503s; the bounds are in launch/serve/connections.py instead.
  max_connections = raise_fd_limit(limits.max_connections)
  protocol = guarded_protocol(limits.header_timeout_s, max_connections, limits.max_header_bytes)
  print(f"serving {', '.join(batcher.models)} on http://{config.host}:{config.port}/ "
        "(GET /health says when the samplers are compiled)", flush=True)
  uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, http=protocol,
              timeout_keep_alive=limits.keep_alive_s,
              h11_max_incomplete_event_size=limits.max_header_bytes)


def serve_config_for_workdir(config, workdir: str) -> ml_collections.ConfigDict:
  """The serve config of one trained workdir: configs/serve.py's defaults, one model.

  `config.serve` (every experiment config has it, from configs/base.py; a
  workdir's config.json written before it existed may not) overrides the
  defaults' host, port, log_level, warmup and limits: `python -m launch
  --mode serve ... --config.serve.port=8080`.
  """
  from configs import serve as serve_defaults  # pylint: disable=import-outside-toplevel
  if not workdir:
    raise ConfigError("workdir", workdir, reason="--mode serve needs --workdir (a trained run)")
  serve_config = serve_defaults.get_config()
  name = pathlib.PurePath(str(workdir).rstrip("/")).name or "model"
  name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in name)[:64] or "model"
  with serve_config.unlocked():
    serve_config.models = ml_collections.ConfigDict()
    serve_config.models[name] = ml_collections.ConfigDict(
        {"config": config, "workdir": str(workdir), "use_ema": bool(config.sample.use_ema)})
    section = config.get("serve")
    if section is not None:
      for key in section.keys():
        if key == "limits":
          for k in section.limits.keys():
            serve_config.limits[k] = section.limits[k]
        else:
          serve_config[key] = section[key]
  return serve_config


def serve(config, workdir: str | None) -> None:
  """`python -m launch --mode serve`: serves the trained `workdir` of `config`.

  A serve config (one with a `models` section, like configs/serve.py) is
  served as it is, and `workdir` is then ignored.
  """
  if "models" in config:
    run(config)
  else:
    run(serve_config_for_workdir(config, workdir))


def _setup_jax() -> None:
  import os  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)


def main(argv, config) -> int:
  from launch.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    print(f"error: unexpected arguments: {argv[1:]}", file=sys.stderr)
    return 2
  _setup_jax()
  try:
    run(config)
  except (ConfigError, CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0

