"""The HTTP API's schemas and responses (FastAPI / pydantic), shared by the endpoints.

The response models below are what the OpenAPI spec documents; `request_model`
builds the /generate request model over the served models' names and
bounds; `error_response` is the one JSON error body {"detail", "field",
"errors"}; `run_job` queues a plan on the batcher and turns its failures into
429 / 503 / 500; `encode_images` and `encode_restored` turn finished jobs into
PNG or JSON responses (PNG encoding off the event loop).
"""
# No `from __future__ import annotations` here: FastAPI and pydantic read the
# annotations of the response models.
import base64
import io
import math
import time
from typing import Any, Literal, Mapping, Optional

import fastapi
import numpy as np
import pydantic
from fastapi import responses as fastapi_responses
from fastapi.exceptions import RequestValidationError
from PIL import Image

from core import images as image_lib
from launch.serve.models import ServedModel
from launch.serve.programs import sampler_names
from launch.serve.queue import Batcher, NotReady, QueueFull, Result, Timeout
from launch.serve.schema import MAX_SEED, Limits

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


def request_model(models: Mapping[str, ServedModel], limits: Limits) -> type[pydantic.BaseModel]:
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
  return png_bytes(image_lib.image_grid(images_uint8, nrow=nrow))


# ---------------------------------------------------------------------------
# Errors.


def error_response(status: int, field: str | None, detail: str, errors: list | None = None,
           headers: Mapping[str, str] | None = None) -> fastapi_responses.JSONResponse:
  body = ErrorResponse(detail=detail, field=field, errors=errors or [])
  return fastapi_responses.JSONResponse(body.model_dump(), status_code=status,
                                        headers=dict(headers or {}))


def _field_of(loc) -> str:
  parts = [str(p) for p in loc if p != "body"]
  # Pydantic puts the Literal/union member in the location; the field is the first part.
  return parts[0] if parts else "body"


def validation_response(exc: RequestValidationError) -> fastapi_responses.JSONResponse:
  errors = exc.errors()
  if any(e.get("type") == "json_invalid" for e in errors):
    e = next(e for e in errors if e.get("type") == "json_invalid")
    reason = (e.get("ctx") or {}).get("error", "JSON decode error")
    return error_response(400, "body", f"body: malformed JSON ({reason}, at position "
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
  return error_response(422, first["field"], f"{first['field']}: {message}", described)


# ---------------------------------------------------------------------------
# The app.


def limits_description(batcher: Batcher, request_model) -> LimitsDescription:
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


ERRORS = {
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
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}


def error_responses(codes) -> dict:
  out = {}
  for code in codes:
    out[code] = {"model": ErrorResponse, "description": ERRORS[code]}
    if code in (429, 503):
      out[code]["headers"] = RETRY_AFTER
  return out


async def run_job(batcher: Batcher, model: ServedModel, plan, seed: int,
               num: int) -> Result | fastapi.Response:
  """Queues a plan and awaits its result; an error response if it does not get one."""
  try:
    job = batcher.submit(model, plan, seed, num)
    return await batcher.wait(job)
  except QueueFull as e:
    return error_response(429, None, f"queue: {e}", headers={"Retry-After": str(e.retry_after)})
  except (NotReady, Timeout) as e:
    return error_response(503, None, f"server: {e}", headers={"Retry-After": str(e.retry_after)})
  except Exception as e:  # pylint: disable=broad-except
    # The device call failed; the worker logged it and goes on with the next batch.
    if "RESOURCE_EXHAUSTED" in str(e):
      return error_response(503, None, "server: out of device memory; retry with fewer images",
                    headers={"Retry-After": "5"})
    return error_response(500, None, f"server: sampling failed ({type(e).__name__})")


async def encode_restored(model: ServedModel, op: str, info: Mapping[str, Any], seed: int,
                           result: Result, fmt: str, started: float) -> fastapi.Response:
  """The response of an /inpaint or /denoise job: results [n, 2, H, W, C] (start, end)."""
  import anyio  # pylint: disable=import-outside-toplevel

  def encode():
    u8 = image_lib.to_uint8(result.images)
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


async def encode_images(model: ServedModel, info: Mapping[str, Any], seed: int, result: Result,
                  fmt: str, started: float) -> fastapi.Response:
  """The response of a finished job; PNG encoding runs off the event loop."""
  import anyio  # pylint: disable=import-outside-toplevel

  def encode():
    u8 = image_lib.to_uint8(result.images)
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
