"""The endpoints of energy-based models: /inpaint, /denoise, /energy and /examples.

Each takes a `multipart/form-data` upload (launch/serve/uploads.py checks
the PNG) and form fields, validated into `ImageOptions`; the model's
adapter (launch/serve/programs.py) turns them into a plan that the batcher
runs like a /generate request. `add_image_endpoints` adds them to the app of
launch/serve/app.py for the models that have image operations.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations.
import base64
import secrets
import time
from typing import Literal, Mapping, Optional

import fastapi
from fastapi import responses as fastapi_responses
import numpy as np

from launch import figures
from launch.serve import uploads
from launch.serve.api import (EnergyResponse, ExamplesResponse, ImageResponse, encode_restored,
                              error_response, error_responses, png_bytes, run_job)
from launch.serve.models import ServedModel
from launch.serve.queue import Batcher, Result
from launch.serve.schema import MAX_SEED, MAX_SIGMA, ImageOptions, RequestError
from launch.serve.uploads import UploadError

UPLOADS = ("/inpaint", "/denoise", "/energy")
_BOX = ("top", "left", "height", "width")


def add_image_endpoints(app: fastapi.FastAPI, batcher: Batcher,
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
      return error_response(422, e.field, str(e))
    result = await run_job(batcher, model, plan, options.seed, options.num_images)
    if not isinstance(result, Result):
      return result
    return await encode_restored(model, op, plan.info, options.seed, result, fmt, started)

  png = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
               "description": ("The restored image (a grid when num_images > 1; format png) or "
                               "JSON (format json).")}}
  errors = error_responses((400, 408, 413, 422, 429, 500, 503))

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
      return error_response(e.status, e.field, str(e))
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
      return error_response(e.status, e.field, str(e))
    seed = seed if seed is not None else secrets.randbelow(MAX_SEED + 1)
    options = ImageOptions(op="denoise", image=x, num_images=num_images, seed=seed, steps=steps,
                           step_size=step_size, label=label, sigma=sigma)
    return await restore("denoise", served, options, format, started)

  @app.post("/energy", response_model=EnergyResponse, responses=error_responses(
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
      return error_response(e.status, e.field, str(e))
    except RequestError as e:
      return error_response(422, e.field, str(e))
    result = await run_job(batcher, served, plan, 0, 1)
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
           responses=error_responses((404, 422)))
  def examples(model: ModelName = fastapi.Query(  # runs in a worker thread: it may read files
      names[0], description="An energy-based model from GET /models.")):
    """Up to `limits.max_examples` test images of the model's dataset, if it is on the server."""
    served = models[model]
    found = served.examples()
    if found is None:
      return error_response(404, "model", f"model: no test images of {served.dataset} on this server "
                                  "(upload or draw an image instead)")
    images, labels = found
    return ExamplesResponse(model=served.name, dataset=served.dataset,
                            image_shape=list(served.image_shape), labels=labels.tolist(),
                            classes=list(figures.CLASS_NAMES.get(served.dataset, ())),
                            images=[base64.b64encode(png_bytes(x)).decode("ascii")
                                    for x in images])
