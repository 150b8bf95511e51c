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
(launch/serve/models.py says how, and what it costs).

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
batching and `launch.serve.models` for programs and determinism.
"""
# No `from __future__ import annotations` here: FastAPI and pydantic read the
# annotations of the request model and the endpoint built inside `create_app`.
import asyncio
import base64
import contextlib
import io
import math
import pathlib
import secrets
import sys
import time
from typing import Any, Literal, Mapping, Optional

import fastapi
import ml_collections
import numpy as np
import pydantic
from absl import logging
from fastapi import responses as fastapi_responses
from fastapi.exceptions import RequestValidationError
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from launch import figures
from launch.config_errors import ConfigError
from launch.serve.connections import BodyLimit, InFlightLimit, guarded_protocol, raise_fd_limit
from launch.serve import uploads
from launch.serve.models import (MAX_SEED, MAX_SIGMA, WARMUP, ImageOptions, Limits, Options,
                                 RequestError, ServedModel, load_model, sampler_names)
from launch.serve.uploads import UploadError
from launch.serve.queue import Batcher, NotReady, QueueFull, Result, Timeout

_STATIC = pathlib.Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"app.js": "text/javascript; charset=utf-8",
                 "images.js": "text/javascript; charset=utf-8",
                 "docs.js": "text/javascript; charset=utf-8",
                 "style.css": "text/css; charset=utf-8"}


# ---------------------------------------------------------------------------
# Schemas (documented in the OpenAPI spec).


class ErrorResponse(pydantic.BaseModel):
  """Every error: `detail` is one line that starts with the field at fault."""
  detail: str
  field: Optional[str] = None
  errors: list[dict[str, Any]] = []


class SamplerDescription(pydantic.BaseModel):
  name: str
  steps_min: int
  steps_max: int
  steps_default: int
  options: dict[str, Any] = {}
  steps_choices: list[int] = []


class ModelDescription(pydantic.BaseModel):
  name: str
  task: str
  dataset: str
  image_shape: list[int]
  conditional: bool
  num_classes: int
  classes: list[str]
  guidance: bool
  guidance_default: Optional[float] = None
  default_sampler: str
  samplers: list[SamplerDescription]
  checkpoint_step: int
  use_ema: bool
  image_ops: list[str] = []
  image_options: dict[str, Any] = {}


class LimitsDescription(pydantic.BaseModel):
  """What one request may ask for, and the connection bounds (configs/serve.py)."""
  max_images: int
  buckets: list[int]
  chunk: int
  max_seed: int
  max_guidance: float
  max_step_size: float
  max_langevin_steps: int
  queue_size: int
  timeout_s: float
  max_body_bytes: int
  max_connections: int
  max_requests: int
  header_timeout_s: float
  keep_alive_s: float
  request_timeout_s: float
  min_body_rate: float
  body_rate_grace_s: float
  max_upload_bytes: int
  max_image_pixels: int
  max_examples: int


class ModelsResponse(pydantic.BaseModel):
  models: list[ModelDescription]
  limits: LimitsDescription


class ModelHealth(pydantic.BaseModel):
  name: str
  programs: int
  compiles: int


class HealthResponse(pydantic.BaseModel):
  status: Literal["starting", "warming_up", "ready", "failed", "stopped"]
  ready: bool
  error: Optional[str] = None
  models: list[ModelHealth]
  waiting: int
  queue_size: int
  stats: dict[str, int]


class GenerateResponse(pydantic.BaseModel):
  """`format: "json"`: the images as base64 PNGs (uint8, one channel = gray)."""
  model: str
  task: str
  seed: int
  num_images: int
  image_shape: list[int]
  sampler: str
  steps: int
  eta: Optional[float] = None
  guidance: Optional[float] = None
  step_size: Optional[float] = None
  labels: Optional[list[int]] = None
  checkpoint_step: int
  batch_images: int
  elapsed_ms: float
  images: list[str]
  grid: str


class ImageResponse(pydantic.BaseModel):
  """`format: "json"` of /inpaint and /denoise: results, and the chains' starts (inputs)."""
  model: str
  op: Literal["inpaint", "denoise"]
  seed: int
  num_images: int
  image_shape: list[int]
  steps: int
  step_size: float
  sigma: Optional[float] = None
  labels: Optional[list[int]] = None
  checkpoint_step: int
  batch_images: int
  elapsed_ms: float
  images: list[str]
  inputs: list[str]
  grid: str


class EnergyResponse(pydantic.BaseModel):
  """/energy: E(x) (the OOD score: higher = less like the training data); per class too."""
  model: str
  energy: float
  ood_score: float
  class_energies: Optional[list[float]] = None
  class_probabilities: Optional[list[float]] = None
  predicted_class: Optional[int] = None
  classes: list[str] = []
  checkpoint_step: int
  elapsed_ms: float


class ExamplesResponse(pydantic.BaseModel):
  """Test images of a model's dataset (base64 PNGs of the model's image shape)."""
  model: str
  dataset: str
  image_shape: list[int]
  labels: list[int]
  classes: list[str]
  images: list[str]


def _request_model(models: Mapping[str, ServedModel], limits: Limits) -> type[pydantic.BaseModel]:
  """The /generate body, with the loaded model names and the limits in its schema."""
  names = tuple(models)
  samplers = tuple(dict.fromkeys(s.name for m in models.values() for s in m.samplers())) or (
      sampler_names())
  max_steps = max(s.steps_max for m in models.values() for s in m.samplers())
  max_classes = max(m.num_classes for m in models.values())
  max_guidance = max([limits.max_guidance] + [m.sampling.max_guidance for m in models.values()])
  max_step_size = max([limits.max_step_size] + [m.sampling.max_step_size
                                                for m in models.values()])
  field = pydantic.Field

  class GenerateRequest(pydantic.BaseModel):
    """What to generate. Options left out (or null) take the model's defaults (GET /models)."""
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: Literal[names] = field(  # type: ignore[valid-type]
        names[0], description="A model name from GET /models.")
    num_images: int = field(min(16, limits.max_images), ge=1, le=limits.max_images)
    seed: Optional[int] = field(
        None, ge=0, le=MAX_SEED,
        description="Same seed and options, same images. Left out: a random seed, returned.")
    sampler: Optional[Literal[samplers]] = field(  # type: ignore[valid-type]
        None, description="DDPM: ancestral | deterministic | ddim; EBM: langevin.")
    steps: Optional[int] = field(
        None, ge=1, le=max_steps,
        description="DDIM steps (1..T), Langevin steps; ancestral/deterministic take all T.")
    eta: Optional[float] = field(None, ge=0.0, le=1.0, description="DDIM only.")
    label: Optional[int] = field(
        None, ge=0, le=max(max_classes - 1, 0),
        description="Class-conditional models only; left out: the classes in turn.")
    guidance: Optional[float] = field(
        None, ge=0.0, le=max_guidance,
        description="Classifier-free guidance scale (conditional models with a null label).")
    step_size: Optional[float] = field(None, gt=0.0, le=max_step_size,
                                       description="Langevin step size (EBM only).")
    format: Literal["png", "json"] = field(
        "png", description="png: one grid image; json: base64 PNGs of every image.")

  return GenerateRequest


# ---------------------------------------------------------------------------
# Images.


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, C] (C = 1 or 3) -> PNG bytes."""
  x = image[..., 0] if image.shape[-1] == 1 else image
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(x)).save(buf, format="PNG")
  return buf.getvalue()


def grid_png(images_uint8: np.ndarray) -> bytes:
  """The images as one PNG grid, ceil(sqrt(N)) per row."""
  nrow = int(math.ceil(math.sqrt(len(images_uint8))))
  return png_bytes(figures.image_grid(images_uint8, nrow=nrow))


# ---------------------------------------------------------------------------
# Errors.


def _error(status: int, field: str | None, detail: str, errors: list | None = None,
           headers: Mapping[str, str] | None = None) -> fastapi_responses.JSONResponse:
  body = ErrorResponse(detail=detail, field=field, errors=errors or [])
  return fastapi_responses.JSONResponse(body.model_dump(), status_code=status,
                                        headers=dict(headers or {}))


def _field_of(loc) -> str:
  parts = [str(p) for p in loc if p != "body"]
  # Pydantic puts the Literal/union member in the location; the field is the first part.
  return parts[0] if parts else "body"


def _validation_response(exc: RequestValidationError) -> fastapi_responses.JSONResponse:
  errors = exc.errors()
  if any(e.get("type") == "json_invalid" for e in errors):
    e = next(e for e in errors if e.get("type") == "json_invalid")
    reason = (e.get("ctx") or {}).get("error", "JSON decode error")
    return _error(400, "body", f"body: malformed JSON ({reason}, at position "
                               f"{e['loc'][-1] if len(e['loc']) > 1 else '?'})")
  described = []
  for e in errors:
    field = _field_of(e.get("loc", ()))
    described.append({"field": field, "message": str(e.get("msg", "")), "type": e.get("type")})
  first = described[0] if described else {"field": "body", "message": "invalid request"}
  message = first["message"]
  if first["field"] == "body" and errors and errors[0].get("type") in ("missing", "dict_type",
                                                                      "model_attributes_type"):
    message = "the body must be a JSON object (Content-Type: application/json)"
  return _error(422, first["field"], f"{first['field']}: {message}", described)


# ---------------------------------------------------------------------------
# The app.


def _limits_description(batcher: Batcher, request_model) -> LimitsDescription:
  limits = batcher.limits
  schema = request_model.model_json_schema()["properties"]

  def bound(name, key="maximum"):
    spec = schema[name]
    for option in spec.get("anyOf", [spec]):
      if key in option:
        return option[key]
    return 0
  return LimitsDescription(
      max_images=limits.max_images, buckets=list(limits.buckets), max_seed=MAX_SEED,
      max_guidance=bound("guidance"), max_step_size=bound("step_size"),
      max_langevin_steps=limits.max_langevin_steps, queue_size=limits.queue_size,
      timeout_s=limits.timeout_s, max_body_bytes=limits.max_body_bytes, chunk=limits.chunk,
      max_connections=limits.max_connections, max_requests=limits.max_requests,
      header_timeout_s=limits.header_timeout_s, keep_alive_s=limits.keep_alive_s,
      request_timeout_s=limits.request_timeout_s, min_body_rate=limits.min_body_rate,
      body_rate_grace_s=limits.body_rate_grace_s, max_upload_bytes=limits.max_upload_bytes,
      max_image_pixels=limits.max_image_pixels, max_examples=limits.max_examples)


_ERRORS = {
    400: "Malformed JSON or multipart body.",
    404: "No test images of the model's dataset on this server.",
    408: ("The request was not received within `limits.request_timeout_s` of its first byte, "
          "or its body came slower than `limits.min_body_rate` bytes/s (after "
          "`limits.body_rate_grace_s`); the connection is closed."),
    413: ("Body too large (`limits.max_body_bytes`, uploads `limits.max_upload_bytes`), or an "
          "image declaring more than `limits.max_image_pixels` pixels."),
    422: ("A field the schema or the model refuses, or an upload that is not a PNG of the "
          "model's size and channels; `field` names it."),
    500: "The device call failed (logged); the server goes on.",
    429: "Queue full; retry after Retry-After seconds.",
    503: ("Warming up, stopping, the time limit passed, or `limits.max_requests` requests in "
          "progress; retry after Retry-After seconds."),
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}


def _error_responses(codes) -> dict:
  out = {}
  for code in codes:
    out[code] = {"model": ErrorResponse, "description": _ERRORS[code]}
    if code in (429, 503):
      out[code]["headers"] = _RETRY_AFTER
  return out


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
  request_model = _request_model(models, batcher.limits)
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
  async def on_validation_error(request, exc):
    del request
    return _validation_response(exc)

  @app.exception_handler(StarletteHTTPException)
  async def on_http_error(request, exc):
    del request
    detail = str(exc.detail)
    if exc.status_code == 400 and not detail.startswith("body:"):
      detail = f"body: cannot be parsed ({detail})"  # e.g. JSON nested too deeply
    field = detail.split(":", 1)[0] if ":" in detail else None
    return _error(exc.status_code, field, detail, headers=exc.headers)

  @app.exception_handler(Exception)
  async def on_error(request, exc):
    del request
    logging.exception("serve: unhandled error", exc_info=exc)
    return _error(500, None, f"internal error: {type(exc).__name__}")

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
      return _error(404, "path", f"path: no static file {name!r}")
    return fastapi.Response(static[name], media_type=_STATIC_FILES[name])

  @app.get("/health", response_model=HealthResponse,
           responses={503: {"model": HealthResponse, "headers": _RETRY_AFTER,
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
                           limits=_limits_description(batcher, request_model))

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
                 **_error_responses((400, 408, 413, 422, 429, 500, 503))})
  async def generate(body: request_model):  # type: ignore[valid-type]
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
      return _error(422, e.field, str(e))
    result = await _run(batcher, model, plan, seed, body.num_images)
    if not isinstance(result, Result):
      return result
    return await _encode(model, plan.info, seed, result, body.format, started)

  image_models = {name: m for name, m in models.items() if m.image_ops}
  if image_models:
    _image_endpoints(app, batcher, image_models)
  limits = batcher.limits
  # The body is read in full before a request takes one of the `max_requests` slots:
  # clients still sending theirs (slowly) cannot hold the slots others compute in.
  return BodyLimit(InFlightLimit(app, limits.max_requests, _busy), _error,
                   max_bytes=limits.max_body_bytes, upload_bytes=limits.max_upload_bytes,
                   upload_paths=_UPLOADS, request_timeout_s=limits.request_timeout_s,
                   min_body_rate=limits.min_body_rate,
                   body_rate_grace_s=limits.body_rate_grace_s)


async def _run(batcher: Batcher, model: ServedModel, plan, seed: int,
               num: int) -> Result | fastapi.Response:
  """Queues a plan and awaits its result; an error response if it does not get one."""
  try:
    job = batcher.submit(model, plan, seed, num)
    return await batcher.wait(job)
  except QueueFull as e:
    return _error(429, None, f"queue: {e}", headers={"Retry-After": str(e.retry_after)})
  except (NotReady, Timeout) as e:
    return _error(503, None, f"server: {e}", headers={"Retry-After": str(e.retry_after)})
  except Exception as e:  # pylint: disable=broad-except
    # The device call failed; the worker logged it and goes on with the next batch.
    if "RESOURCE_EXHAUSTED" in str(e):
      return _error(503, None, "server: out of device memory; retry with fewer images",
                    headers={"Retry-After": "5"})
    return _error(500, None, f"server: sampling failed ({type(e).__name__})")


# ---------------------------------------------------------------------------
# /inpaint, /denoise, /energy and /examples (energy-based models).

_UPLOADS = ("/inpaint", "/denoise", "/energy")
_BOX = ("top", "left", "height", "width")


def _image_endpoints(app: fastapi.FastAPI, batcher: Batcher,
                     models: Mapping[str, ServedModel]) -> None:
  """Adds the image endpoints over `models` (those with `image_ops`) to `app`."""
  limits = batcher.limits
  names = tuple(models)
  max_steps = max(s.steps_max for m in models.values() for s in m.samplers())
  max_classes = max(m.num_classes for m in models.values())
  max_step_size = max([limits.max_step_size] + [m.sampling.max_step_size
                                                for m in models.values()])
  max_side = max(max(m.image_shape[:2]) for m in models.values())
  Form, File = fastapi.Form, fastapi.File  # pylint: disable=invalid-name
  ModelName = Literal[names]  # type: ignore[valid-type]

  def form_fields(*extra: str) -> set[str]:
    return {"model", "image", "num_images", "seed", "steps", "step_size", "label", "format",
            *extra}

  async def upload_of(request: fastapi.Request, known: set[str], image: fastapi.UploadFile,
                      model: ServedModel) -> np.ndarray:
    """The uploaded image as uint8 [H, W, C] (UploadError naming what is wrong)."""
    form = await request.form()  # parsed (and cached) by FastAPI already
    for key in form.keys():
      if key not in known:  # a typo would otherwise be ignored silently
        raise UploadError(422, key[:64], f"unknown field (allowed: {', '.join(sorted(known))})")
    data = await image.read()
    return uploads.decode_image(data, "image", model.image_shape, limits.max_image_pixels)

  async def restore(op: str, model: ServedModel, options: ImageOptions, fmt: str,
                    started: float) -> fastapi.Response:
    try:
      plan = model.plan_image(options)
    except RequestError as e:
      return _error(422, e.field, str(e))
    result = await _run(batcher, model, plan, options.seed, options.num_images)
    if not isinstance(result, Result):
      return result
    return await _encode_restored(model, op, plan.info, options.seed, result, fmt, started)

  png = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
               "description": ("The restored image (a grid when num_images > 1; format png) or "
                               "JSON (format json).")}}
  errors = _error_responses((400, 408, 413, 422, 429, 500, 503))

  @app.post("/inpaint", response_model=ImageResponse, responses={**png, **errors})
  async def inpaint(
      request: fastapi.Request,
      image: fastapi.UploadFile = File(
          description="A PNG of the model's size and channels (8-bit gray or RGB)."),
      model: ModelName = Form(names[0], description="An energy-based model from GET /models."),
      mask: Optional[fastapi.UploadFile] = File(
          None, description="A grayscale PNG of the image's size: white (>= 128) = fill. "
                            "Or give a box (top, left, height, width)."),
      top: Optional[int] = Form(None, ge=0, le=max_side, description="Box to fill: first row."),
      left: Optional[int] = Form(None, ge=0, le=max_side, description="Box: first column."),
      height: Optional[int] = Form(None, ge=1, le=max_side, description="Box: rows."),
      width: Optional[int] = Form(None, ge=1, le=max_side, description="Box: columns."),
      num_images: int = Form(1, ge=1, le=limits.max_images,
                             description="Inpaintings of the one image (image i: seed, i)."),
      seed: Optional[int] = Form(None, ge=0, le=MAX_SEED,
                                 description="Same seed and inputs, same bytes."),
      steps: Optional[int] = Form(None, ge=1, le=max_steps,
                                  description="Langevin steps (GET /models: steps_choices)."),
      step_size: Optional[float] = Form(None, gt=0.0, le=max_step_size, allow_inf_nan=False,
                                        description="Langevin step size."),
      label: Optional[int] = Form(None, ge=0, le=max(max_classes - 1, 0),
                                  description="Class-conditional EBMs: inpaint under E(x, y)."),
      format: Literal["png", "json"] = Form("png"),  # pylint: disable=redefined-builtin
  ):
    """Fills a box (or the white pixels of a mask) by Langevin dynamics; known pixels kept."""
    started = time.monotonic()
    served = models[model]
    try:
      x = await upload_of(request, form_fields("mask", *_BOX), image, served)
      box = {"top": top, "left": left, "height": height, "width": width}
      given = [k for k, v in box.items() if v is not None]
      if mask is not None and given:
        raise UploadError(422, "mask", "give a mask image or a box (top, left, height, width), "
                                       "not both")
      if mask is not None:
        known = uploads.decode_mask(await mask.read(), "mask", served.image_shape[:2],
                                    limits.max_image_pixels)
      elif len(given) == 4:
        known = uploads.box_known(served.image_shape[:2], top, left, height, width)
      elif given:
        missing = [k for k in _BOX if box[k] is None]
        raise UploadError(422, missing[0], f"missing: a box needs top, left, height and width "
                                           f"(missing {', '.join(missing)})")
      else:
        raise UploadError(422, "mask", "what to fill: give a box (top, left, height, width) or "
                                       "a mask PNG (white = fill)")
    except UploadError as e:
      return _error(e.status, e.field, str(e))
    seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    options = ImageOptions(op="inpaint", image=x, num_images=num_images, seed=seed, steps=steps,
                           step_size=step_size, label=label, known=known)
    return await restore("inpaint", served, options, format, started)

  @app.post("/denoise", response_model=ImageResponse, responses={**png, **errors})
  async def denoise(
      request: fastapi.Request,
      image: fastapi.UploadFile = File(
          description="A PNG of the model's size and channels (8-bit gray or RGB)."),
      model: ModelName = Form(names[0], description="An energy-based model from GET /models."),
      sigma: Optional[float] = Form(
          None, ge=0.0, le=MAX_SIGMA, allow_inf_nan=False,
          description="Gaussian noise σ added first (pixels in [-1, 1]); 0 or left out: the "
                      "image is already noisy."),
      num_images: int = Form(1, ge=1, le=limits.max_images,
                             description="Denoisings of the one image (image i: seed, i)."),
      seed: Optional[int] = Form(None, ge=0, le=MAX_SEED,
                                 description="Same seed and inputs, same bytes."),
      steps: Optional[int] = Form(None, ge=1, le=max_steps,
                                  description="Langevin steps (GET /models: steps_choices)."),
      step_size: Optional[float] = Form(None, gt=0.0, le=max_step_size, allow_inf_nan=False,
                                        description="Langevin step size."),
      label: Optional[int] = Form(None, ge=0, le=max(max_classes - 1, 0),
                                  description="Class-conditional EBMs: denoise under E(x, y)."),
      format: Literal["png", "json"] = Form("png"),  # pylint: disable=redefined-builtin
  ):
    """A few noise-free Langevin steps down the energy from the (noised) image."""
    started = time.monotonic()
    served = models[model]
    try:
      x = await upload_of(request, form_fields("sigma"), image, served)
    except UploadError as e:
      return _error(e.status, e.field, str(e))
    seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    options = ImageOptions(op="denoise", image=x, num_images=num_images, seed=seed, steps=steps,
                           step_size=step_size, label=label, sigma=sigma)
    return await restore("denoise", served, options, format, started)

  @app.post("/energy", response_model=EnergyResponse, responses=_error_responses(
      (400, 408, 413, 422, 429, 500, 503)))
  async def energy(
      request: fastapi.Request,
      image: fastapi.UploadFile = File(
          description="A PNG of the model's size and channels (8-bit gray or RGB)."),
      model: ModelName = Form(names[0], description="An energy-based model from GET /models."),
  ):
    """E(x), the OOD score (higher = less like the training data); per class for a
    class-conditional EBM (E(x, y), p(y | x) and the predicted class)."""
    started = time.monotonic()
    served = models[model]
    try:
      x = await upload_of(request, {"model", "image"}, image, served)
      plan = served.plan_image(ImageOptions(op="energy", image=x))
    except UploadError as e:
      return _error(e.status, e.field, str(e))
    except RequestError as e:
      return _error(422, e.field, str(e))
    result = await _run(batcher, served, plan, 0, 1)
    if not isinstance(result, Result):
      return result
    values = np.asarray(result.images[0], np.float64)
    body = EnergyResponse(model=served.name, energy=float(values[0]), ood_score=float(values[0]),
                          classes=list(served.classes), checkpoint_step=served.step,
                          elapsed_ms=round((time.monotonic() - started) * 1000.0, 1))
    if served.num_classes:
      class_energies = values[1:]
      logits = -class_energies - np.max(-class_energies)
      p = np.exp(logits) / np.sum(np.exp(logits))
      body.class_energies = [float(v) for v in class_energies]
      body.class_probabilities = [float(v) for v in p]
      body.predicted_class = int(np.argmin(class_energies))
    return fastapi_responses.JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

  @app.get("/examples", response_model=ExamplesResponse,
           responses=_error_responses((404, 422)))
  def examples(model: ModelName = fastapi.Query(  # runs in a worker thread: it may read files
      names[0], description="An energy-based model from GET /models.")):
    """Up to `limits.max_examples` test images of the model's dataset, if it is on the server."""
    served = models[model]
    found = served.examples()
    if found is None:
      return _error(404, "model", f"model: no test images of {served.dataset} on this server "
                                  "(upload or draw an image instead)")
    images, labels = found
    return ExamplesResponse(model=served.name, dataset=served.dataset,
                            image_shape=list(served.image_shape), labels=labels.tolist(),
                            classes=list(figures.CLASS_NAMES.get(served.dataset, ())),
                            images=[base64.b64encode(png_bytes(x)).decode("ascii")
                                    for x in images])


async def _encode_restored(model: ServedModel, op: str, info: Mapping[str, Any], seed: int,
                           result: Result, fmt: str, started: float) -> fastapi.Response:
  """The response of an /inpaint or /denoise job: results [n, 2, H, W, C] (start, end)."""
  import anyio  # pylint: disable=import-outside-toplevel

  def encode():
    u8 = figures.to_uint8(result.images)
    starts, ends = u8[:, 0], u8[:, 1]
    grid = grid_png(ends)
    picture = png_bytes(ends[0]) if len(ends) == 1 else grid
    if fmt != "json":
      return picture, grid, None, None
    return picture, grid, [png_bytes(x) for x in ends], [png_bytes(x) for x in starts]

  picture, grid, images, inputs = await anyio.to_thread.run_sync(encode)
  elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
  n = len(result.images)
  if fmt == "json":
    def b64(data: bytes) -> str:
      return base64.b64encode(data).decode("ascii")
    body = ImageResponse(
        model=model.name, op=op, seed=seed, num_images=n, image_shape=list(model.image_shape),
        steps=info["steps"], step_size=info["step_size"], sigma=info.get("sigma"),
        labels=info.get("labels"), checkpoint_step=model.step, batch_images=result.batch_images,
        elapsed_ms=elapsed_ms, images=[b64(p) for p in images], inputs=[b64(p) for p in inputs],
        grid=b64(grid))
    return fastapi_responses.JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
  headers = {"X-Model": model.name, "X-Op": op, "X-Seed": str(seed), "X-Steps": str(info["steps"]),
             "X-Num-Images": str(n), "X-Batch-Images": str(result.batch_images),
             "X-Elapsed-Ms": str(elapsed_ms), "Cache-Control": "no-store"}
  return fastapi.Response(picture, media_type="image/png", headers=headers)


async def _busy(scope, receive, send):
  """The 503 of a request beyond `limits.max_requests` in progress."""
  response = _error(503, None, "server: too many requests in progress; retry later",
                    headers={"Retry-After": "1"})
  return await response(scope, receive, send)


async def _encode(model: ServedModel, info: Mapping[str, Any], seed: int, result: Result,
                  fmt: str, started: float) -> fastapi.Response:
  """The response of a finished job; PNG encoding runs off the event loop."""
  import anyio  # pylint: disable=import-outside-toplevel

  def encode():
    u8 = figures.to_uint8(result.images)
    grid = grid_png(u8)
    return u8, grid, ([png_bytes(x) for x in u8] if fmt == "json" else None)

  u8, grid, pngs = await anyio.to_thread.run_sync(encode)
  elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
  if fmt == "json":
    body = GenerateResponse(
        model=model.name, task=model.task_name, seed=seed, num_images=len(u8),
        image_shape=list(model.image_shape), sampler=info["sampler"], steps=info["steps"],
        eta=info.get("eta"), guidance=info.get("guidance"), step_size=info.get("step_size"),
        labels=info.get("labels"), checkpoint_step=model.step, batch_images=result.batch_images,
        elapsed_ms=elapsed_ms, images=[base64.b64encode(p).decode("ascii") for p in pngs],
        grid=base64.b64encode(grid).decode("ascii"))
    return fastapi_responses.JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
  headers = {"X-Model": model.name, "X-Seed": str(seed), "X-Sampler": info["sampler"],
             "X-Steps": str(info["steps"]), "X-Num-Images": str(len(u8)),
             "X-Batch-Images": str(result.batch_images), "X-Elapsed-Ms": str(elapsed_ms),
             "Cache-Control": "no-store"}
  return fastapi.Response(grid, media_type="image/png", headers=headers)


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
  protocol = guarded_protocol(limits.header_timeout_s, max_connections)
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

