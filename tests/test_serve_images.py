"""The image endpoints of the server: /inpaint, /denoise, /energy and /examples (EBMs).

The models are the smoke EBM and JEM of tests/helpers.py (workdirs with a
checkpoint of their initial state; 28x28x1, 8 Langevin steps), served by a
batcher of this module with no warm-up (each test compiles only the programs it uses,
at 1-3 Langevin steps). Every upload the server must refuse (not a PNG,
truncated, a decompression bomb, too many bytes, the wrong size, bit depth
or channels, a mask outside the image or empty) gets a 4xx whose `field`
and `detail` name the problem; none is a 5xx and none names a file.
"""
from __future__ import annotations

import asyncio
import base64
import io
import pathlib
import re
import shutil
import struct
import subprocess
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import images as image_lib
from launch.serve import app as serve
from launch.serve import schema as serve_schema
from launch.serve import uploads
from helpers import serve_config

H, W = 28, 28
MAX_UPLOAD = 16384


@pytest.fixture(scope="module")
def images_batcher(smoke_workdir):
  """This module's own batcher: no warm-up, a small upload bound."""
  config = serve_config({"ebm": smoke_workdir("ebm"), "jem": smoke_workdir("jem")},
                        max_upload_bytes=MAX_UPLOAD)
  config.warmup = "none"
  b = serve.build(config).start()
  assert b.wait_ready(60), b.error
  yield b
  b.stop()


@pytest.fixture(scope="module")
def client(images_batcher):
  return TestClient(serve.create_app(images_batcher, manage=False), raise_server_exceptions=False)


def png_of(image: Image.Image, **save) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG", **save)
  return buf.getvalue()


def png(array: np.ndarray, mode: str | None = None, **save) -> bytes:
  image = Image.fromarray(array)
  return png_of(image.convert(mode) if mode else image, **save)


def decode(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


def b64decode(s: str) -> np.ndarray:
  return decode(base64.b64decode(s))


def picture(seed: int = 0) -> np.ndarray:
  """A 28x28 uint8 test picture: a bright blob on dark, with some texture."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:H, :W]
  blob = 200.0 * np.exp(-((yy - 14) ** 2 + (xx - 13) ** 2) / 60.0)
  return np.clip(blob + rng.integers(0, 40, (H, W)), 0, 255).astype(np.uint8)


def post(client, path: str, image: bytes | None, mask: bytes | None = None, **fields):
  files = {}
  if image is not None:
    files["image"] = ("x.png", image, "image/png")
  if mask is not None:
    files["mask"] = ("m.png", mask, "image/png")
  data = {k: str(v) for k, v in fields.items()}
  return client.post(path, files=files or None, data=data)


# ---------------------------------------------------------------------------
# What the endpoints return.


def test_models_lists_the_image_operations_and_upload_limits(client, images_batcher):
  body = client.get("/models").json()
  ebm, jem = body["models"]
  assert (ebm["name"], ebm["conditional"], jem["name"], jem["num_classes"]) == (
      "ebm", False, "jem", 10)
  assert jem["classes"][0] == "T-shirt/top"
  assert ebm["image_ops"] == ["inpaint", "denoise", "energy"]
  options = ebm["image_options"]
  restoration = images_batcher.models["ebm"].task.restoration  # eval.inpaint_steps, denoise_steps
  assert (options["inpaint"]["steps_default"], options["denoise"]["steps_default"]) == (
      restoration.inpaint_steps, restoration.denoise_steps) == (3, 2)
  assert set(options["inpaint"]["steps_choices"]) == {
      v for v in serve_schema.STEP_CHOICES if v <= 1024}
  assert options["sigma_default"] == restoration.denoise_sigma
  assert body["limits"]["max_upload_bytes"] == MAX_UPLOAD
  spec = client.get("/openapi.json").json()
  assert {"/inpaint", "/denoise", "/energy", "/examples"} <= set(spec["paths"])
  form = spec["paths"]["/inpaint"]["post"]["requestBody"]["content"]
  assert "multipart/form-data" in form


def test_inpaint_keeps_known_pixels_exactly_and_same_seed_same_bytes(client):
  x = picture()
  box = {"top": 6, "left": 9, "height": 10, "width": 12}
  r = post(client, "/inpaint", png(x), **box, steps=2, seed=5, num_images=2, format="json")
  assert r.status_code == 200, r.text
  body = r.json()
  assert (body["op"], body["steps"], body["seed"], body["num_images"]) == ("inpaint", 2, 5, 2)
  known = np.ones((H, W), bool)
  known[6:16, 9:21] = False
  images = [b64decode(s) for s in body["images"]]
  inputs = [b64decode(s) for s in body["inputs"]]
  for out, start in zip(images, inputs):
    assert out.shape == (H, W) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], x[known])     # kept exactly
    np.testing.assert_array_equal(start[known], x[known])   # the chain's start: noise in the box
    assert not np.array_equal(out[~known], x[~known])
  assert not np.array_equal(images[0], images[1])  # image i drawn with (seed, i)
  again = post(client, "/inpaint", png(x), **box, steps=2, seed=5, num_images=2, format="json")
  assert again.json()["images"] == body["images"] and again.json()["grid"] == body["grid"]
  # format png, one image: the image itself (no grid), the same as image 0 above.
  one = post(client, "/inpaint", png(x), **box, steps=2, seed=5)
  assert one.status_code == 200 and one.headers["content-type"] == "image/png"
  assert one.headers["x-op"] == "inpaint" and one.headers["x-seed"] == "5"
  assert one.content == base64.b64decode(body["images"][0])
  # The same box as a mask PNG (white = fill) gives the same bytes.
  mask = np.where(known, 0, 255).astype(np.uint8)
  masked = post(client, "/inpaint", png(x), mask=png(mask), steps=2, seed=5)
  assert masked.status_code == 200, masked.text
  assert masked.content == one.content
  bilevel = post(client, "/inpaint", png(x), mask=png(~known, mode="1"), steps=2, seed=5)
  assert bilevel.status_code == 200 and bilevel.content == one.content


def test_denoise_adds_the_asked_noise_and_is_reproducible(client):
  x = picture(1)
  r = post(client, "/denoise", png(x), sigma=0.3, steps=2, seed=3, format="json")
  assert r.status_code == 200, r.text
  body = r.json()
  assert (body["op"], body["sigma"], body["steps"]) == ("denoise", 0.3, 2)
  noisy, out = b64decode(body["inputs"][0]), b64decode(body["images"][0])
  residual = noisy.astype(np.float64) / 127.5 - x.astype(np.float64) / 127.5
  assert 0.2 < residual.std() < 0.4  # σ = 0.3 in [-1, 1] units, a little less where clipped
  assert not np.array_equal(out, noisy)
  assert post(client, "/denoise", png(x), sigma=0.3, steps=2, seed=3,
              format="json").json()["images"] == body["images"]
  clean = post(client, "/denoise", png(x), steps=2, seed=3, format="json").json()
  np.testing.assert_array_equal(b64decode(clean["inputs"][0]), x)  # σ 0: the upload itself
  assert clean["sigma"] == 0.0


def test_energy_equals_the_tasks_energy_of_the_decoded_image(client, images_batcher):
  model = images_batcher.models["ebm"]
  for seed in (0, 1):
    data = png(picture(seed))
    r = post(client, "/energy", data)
    assert r.status_code == 200, r.text
    body = r.json()
    x = image_lib.from_uint8(decode(data))[None, :, :, None]
    expected = float(model.task.energy(model.params, x)[0])
    np.testing.assert_allclose(body["energy"], expected, rtol=1e-5, atol=1e-6)
    assert body["ood_score"] == body["energy"]
    assert body["class_energies"] is None and body["predicted_class"] is None


def test_examples_are_the_datasets_test_images(client, images_batcher):
  from launch import data as data_lib  # pylint: disable=import-outside-toplevel
  model = images_batcher.models["ebm"]
  try:
    images, labels = data_lib.load_arrays(model.data_config, "test")
  except data_lib.DatasetNotFoundError:
    r = client.get("/examples", params={"model": "ebm"})
    assert r.status_code == 404 and r.json()["field"] == "model"
    return
  r = client.get("/examples", params={"model": "ebm"})
  assert r.status_code == 200, r.text
  body = r.json()
  n = min(images_batcher.limits.max_examples, len(images))
  assert len(body["images"]) == n and body["labels"] == labels[:n].tolist()
  np.testing.assert_array_equal(np.stack([b64decode(s) for s in body["images"]]),
                                images[:n, :, :, 0])
  assert body["classes"][0] == "T-shirt/top"


def test_random_floats_images_and_masks_compile_no_new_program(client, images_batcher):
  """Step size, σ, the image and the mask are program inputs: random values compile nothing
  once each (operation, steps, bucket) program exists."""
  import jax  # pylint: disable=import-outside-toplevel
  model = images_batcher.models["ebm"]
  rng = np.random.default_rng(0)
  compiles = []

  def on_event(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  def request(i):
    x = rng.integers(0, 256, (H, W), dtype=np.uint8)
    step_size = float(rng.choice([1e-300, rng.uniform(1e-6, 100.0)]))
    n = int(rng.integers(1, 5))
    if i % 3 == 0:
      top, left = int(rng.integers(0, H)), int(rng.integers(0, W))
      return ("/inpaint", png(x), {"top": top, "left": left, "height": int(rng.integers(1, H - top + 1)),
                                   "width": int(rng.integers(1, W - left + 1)), "steps": 1,
                                   "step_size": step_size, "num_images": n, "seed": i})
    if i % 3 == 1:
      return ("/denoise", png(x), {"sigma": float(rng.uniform(0.0, 2.0)), "steps": 1,
                                   "step_size": step_size, "num_images": n, "seed": i})
    return ("/energy", png(x), {})
  for i in range(3):  # every program once
    path, data, fields = request(i)
    assert post(client, path, data, **fields).status_code == 200
  before = model.compiles
  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    for i in range(3, 21):
      path, data, fields = request(i)
      r = post(client, path, data, **fields)
      assert r.status_code == 200, r.text
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert model.compiles == before and compiles == []


def test_warmup_all_compiles_the_image_programs_in_the_smallest_bucket(images_batcher, monkeypatch):
  model = images_batcher.models["jem"]
  compiled = []

  def program(static, bucket, pin=False):
    compiled.append((static, bucket))
    return lambda *args: np.zeros((bucket, *model.output_shape(static)), np.float32)
  monkeypatch.setattr(model, "program", program)
  assert model.warm("all", (4, 16)) == len(compiled) == 5
  steps = model.sampling.op_steps
  assert compiled == [(("langevin", 8, True), 4), (("langevin", 8, True), 16), (("energy",), 4),
                      (("inpaint", steps["inpaint"], False), 4),
                      (("denoise", steps["denoise"], False), 4)]


def test_steps_outside_the_choices_are_refused_without_compiling(client, images_batcher):
  before = images_batcher.models["ebm"].compiles
  choices = images_batcher.limits.step_choices
  for steps in (11, 13, 999):
    assert steps not in choices
    r = post(client, "/denoise", png(picture()), steps=steps)
    assert r.status_code == 422 and r.json()["field"] == "steps", r.text
  assert images_batcher.models["ebm"].compiles == before


def test_class_conditional_ebm_generates_by_label(client):
  """The API's label for a class-conditional (JEM) EBM: one class, or the classes in turn."""
  body = {"model": "jem", "num_images": 4, "seed": 2, "steps": 2, "format": "json"}
  three = client.post("/generate", json={**body, "label": 3})
  assert three.status_code == 200, three.text
  assert three.json()["labels"] == [3, 3, 3, 3]
  assert client.post("/generate", json={**body, "label": 3}).json()["images"] == (
      three.json()["images"])
  turn = client.post("/generate", json=body).json()  # config.sample.label = -1
  assert turn["labels"] == [0, 1, 2, 3]
  assert turn["images"][3] == three.json()["images"][3]  # image 3: class 3 either way
  assert turn["images"][0] != three.json()["images"][0]
  for bad in (10, -1):
    r = client.post("/generate", json={**body, "label": bad})
    assert r.status_code == 422 and r.json()["field"] == "label", r.text
  r = client.post("/generate", json={"model": "ebm", "label": 0})
  assert r.status_code == 422 and "unconditional" in r.json()["detail"]


def test_class_conditional_energy_per_class_and_marginal(client, images_batcher):
  model = images_batcher.models["jem"]
  data = png(picture(2))
  r = post(client, "/energy", data, model="jem")
  assert r.status_code == 200, r.text
  body = r.json()
  x = image_lib.from_uint8(decode(data))[None, :, :, None]
  class_energies = -np.asarray(model.task.class_logits(model.params, x), np.float64)[0]
  np.testing.assert_allclose(body["class_energies"], class_energies, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(body["energy"], float(model.task.energy(model.params, x)[0]),
                             rtol=1e-5, atol=1e-6)
  # E(x) = -logsumexp_y -E(x, y), in float64 from the returned class energies.
  e = np.asarray(body["class_energies"], np.float64)
  np.testing.assert_allclose(body["energy"], -np.log(np.sum(np.exp(-e))), rtol=1e-5, atol=1e-5)
  p = np.exp(-e - np.max(-e))
  np.testing.assert_allclose(body["class_probabilities"], p / p.sum(), rtol=1e-6, atol=1e-9)
  assert body["predicted_class"] == int(np.argmin(e)) and len(body["classes"]) == 10


def test_class_conditional_inpaint_and_denoise_under_a_label(client):
  x = picture(3)
  box = {"top": 0, "left": 0, "height": 14, "width": 28}
  labelled = post(client, "/inpaint", png(x), model="jem", label=7, steps=2, seed=1, **box,
                  format="json")
  assert labelled.status_code == 200, labelled.text
  assert labelled.json()["labels"] == [7]
  out = b64decode(labelled.json()["images"][0])
  np.testing.assert_array_equal(out[14:], x[14:])
  r = post(client, "/denoise", png(x), model="jem", label=10)
  assert r.status_code == 422 and r.json()["field"] == "label", r.text


# ---------------------------------------------------------------------------
# Uploads the server refuses: a 4xx naming the problem, never a 5xx or a path.


def _chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb(width: int = 100_000, height: int = 100_000) -> bytes:
  """A tiny PNG that declares width x height pixels (a decompression bomb's header)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  idat = zlib.compress(b"\0" * 4096, 9)
  return (uploads.PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
          + _chunk(b"IEND", b""))


GOOD = png(picture())
BOX = {"top": 4, "left": 4, "height": 8, "width": 8}
CORRUPT_CRC = GOOD[:29] + bytes([GOOD[29] ^ 0xFF]) + GOOD[30:]  # a byte of the IHDR CRC
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100)
APNG = png_of(Image.fromarray(picture()), save_all=True,
              append_images=[Image.fromarray(picture(1))])  # two frames

# (path, image, mask, fields, status, field, words in the detail)
REFUSED = [
    ("/energy", b"", None, {}, 422, "image", "empty"),
    ("/energy", b"hello, this is not an image", None, {}, 422, "image", "not a PNG"),
    ("/energy", JPEG, None, {}, 422, "image", "JPEG"),
    ("/energy", GOOD[:20], None, {}, 422, "image", "truncated"),
    ("/energy", GOOD[:len(GOOD) // 2], None, {}, 422, "image", "truncated"),
    ("/energy", GOOD[:-12], None, {}, 422, "image", "truncated"),  # no IEND
    ("/energy", CORRUPT_CRC, None, {}, 422, "image", "CRC"),
    ("/energy", GOOD[:60] + GOOD[-12:], None, {}, 422, "image", "cannot be decoded"),  # cut IDAT
    ("/energy", GOOD + b"trailing", None, {}, 422, "image", "IEND"),
    ("/energy", APNG, None, {}, 422, "image", "animated"),
    ("/energy", bomb(), None, {}, 413, "image", "100000x100000"),
    ("/energy", bomb(1000, 1000), None, {}, 422, "image", "expected 28x28"),
    ("/energy", png(np.zeros((32, 32), np.uint8)), None, {}, 422, "image", "expected 28x28"),
    ("/energy", png(np.zeros((28, 27), np.uint8)), None, {}, 422, "image", "27x28"),
    ("/energy", png(np.zeros((H, W, 3), np.uint8)), None, {}, 422, "image", "1 channel"),
    ("/energy", png(np.zeros((H, W, 4), np.uint8)), None, {}, 422, "image", "RGBA"),
    ("/energy", png(np.zeros((H, W), np.uint16)), None, {}, 422, "image", "16-bit"),
    ("/energy", png_of(Image.fromarray(np.zeros((H, W), np.uint8)).convert("P")), None, {}, 422,
     "image", "palette"),
    ("/energy", png(np.zeros((H, W), bool), mode="1"), None, {}, 422, "image", "1-bit"),
    ("/energy", None, None, {}, 422, "image", "required"),
    ("/energy", GOOD, None, {"steps": 3}, 422, "steps", "unknown field"),
    ("/inpaint", GOOD, None, {}, 422, "mask", "box"),
    ("/inpaint", GOOD, None, {"top": 4, "left": 4}, 422, "height", "missing"),
    ("/inpaint", GOOD, None, {**BOX, "top": 27}, 422, "height", "exceeds the image height 28"),
    ("/inpaint", GOOD, None, {**BOX, "left": 25}, 422, "width", "exceeds the image width 28"),
    ("/inpaint", GOOD, None, {**BOX, "top": 28, "height": 1}, 422, "top", "outside the image"),
    ("/inpaint", GOOD, None, {**BOX, "height": 0}, 422, "height", "greater than or equal to 1"),
    ("/inpaint", GOOD, None, {**BOX, "width": -3}, 422, "width", "greater than or equal to 1"),
    ("/inpaint", GOOD, None, {**BOX, "top": 10_000}, 422, "top", "less than or equal to"),
    ("/inpaint", GOOD, png(np.zeros((H, W), np.uint8)), {}, 422, "mask", "empty"),
    ("/inpaint", GOOD, png(np.full((H, W), 127, np.uint8)), {}, 422, "mask", "empty"),
    ("/inpaint", GOOD, png(np.full((32, 32), 255, np.uint8)), {}, 422, "mask", "expected 28x28"),
    ("/inpaint", GOOD, png(np.full((H, W, 3), 255, np.uint8)), {}, 422, "mask", "grayscale"),
    ("/inpaint", GOOD, b"GIF89a" + bytes(50), {}, 422, "mask", "GIF"),
    ("/inpaint", GOOD, bomb(), {}, 413, "mask", "pixels"),
    ("/inpaint", GOOD, png(np.full((H, W), 255, np.uint8)), BOX, 422, "mask", "not both"),
    ("/inpaint", png(np.zeros((32, 32), np.uint8)), None, BOX, 422, "image", "expected 28x28"),
    ("/inpaint", GOOD, None, {**BOX, "steps": 999}, 422, "steps", "chain lengths"),
    ("/inpaint", GOOD, None, {**BOX, "step_size": 0}, 422, "step_size", "greater than 0"),
    ("/inpaint", GOOD, None, {**BOX, "step_size": "nan"}, 422, "step_size", "finite"),
    ("/inpaint", GOOD, None, {**BOX, "label": 0}, 422, "label", "unconditional"),
    ("/inpaint", GOOD, None, {**BOX, "num_images": 17}, 422, "num_images", "less than"),
    ("/inpaint", GOOD, None, {**BOX, "model": "../../runs/x"}, 422, "model", "ebm"),
    ("/inpaint", GOOD, None, {**BOX, "workdir": "/tmp"}, 422, "workdir", "unknown field"),
    ("/denoise", GOOD, None, {"sigma": 2.5}, 422, "sigma", "less than or equal to 2"),
    ("/denoise", GOOD, None, {"sigma": -0.1}, 422, "sigma", "greater than or equal to 0"),
    ("/denoise", GOOD, None, {"sigma": "inf"}, 422, "sigma", "finite"),
    ("/denoise", GOOD, None, {"top": 3}, 422, "top", "unknown field"),
    ("/denoise", GOOD, None, {"format": "gif"}, 422, "format", "png"),
    ("/denoise", png(np.zeros((H, W, 3), np.uint8)), None, {}, 422, "image", "expected 8-bit"),
]


@pytest.mark.parametrize("path,image,mask,fields,status,field,words", REFUSED,
                         ids=[f"{c[0][1:]}-{c[5]}-{i}" for i, c in enumerate(REFUSED)])
def test_refused_uploads_get_a_4xx_naming_the_problem(client, images_batcher, path, image, mask,
                                                      fields, status, field, words):
  before = images_batcher.models["ebm"].compiles
  r = post(client, path, image, mask, **fields)
  assert r.status_code == status, r.text
  error = r.json()
  assert error["field"] == field, error
  assert error["detail"].startswith(f"{field}: "), error["detail"]
  assert words.lower() in error["detail"].lower(), error["detail"]
  assert not re.search(r"(/tmp|/work|/home|/usr|\.py\b|\.png\b)", error["detail"]), error
  assert images_batcher.models["ebm"].compiles == before  # refused before any program


def test_uploads_over_the_byte_limit_are_413_while_streaming(client, images_batcher):
  big = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
  padded = png(big, pnginfo=_text_chunk(b"x" * (MAX_UPLOAD + 100)))
  r = post(client, "/energy", padded)  # declared content-length over the limit
  assert r.status_code == 413 and r.json()["field"] == "body", r.text
  assert f"{MAX_UPLOAD} bytes (limits.max_upload_bytes)" in r.json()["detail"]
  # The same body streamed without a content-length: refused while it arrives.
  request = httpx.Request("POST", "http://test/energy", files={"image": ("x.png", padded)})
  content_type, body = request.headers["content-type"], request.read()

  async def chunks():
    for i in range(0, len(body), 1000):
      yield body[i:i + 1000]

  async def stream():
    app = serve.create_app(images_batcher, manage=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
      return await c.post("/energy", content=chunks(), headers={"content-type": content_type})
  r = asyncio.run(stream())
  assert "content-length" not in r.request.headers
  assert r.status_code == 413 and r.json()["field"] == "body", r.text
  # /generate keeps its own, smaller limit (limits.max_body_bytes).
  r = client.post("/generate", json={"model": "ebm", "pad": "x" * 5000})
  assert r.status_code == 413 and "limits.max_body_bytes" in r.json()["detail"]


def _text_chunk(text: bytes):
  from PIL import PngImagePlugin  # pylint: disable=import-outside-toplevel
  info = PngImagePlugin.PngInfo()
  info.add_text("pad", text.decode("ascii"))
  return info


def test_a_text_chunk_bomb_is_refused(client):
  """A zTXt chunk that inflates far beyond PIL's text limit: a 422 naming the image."""
  from PIL import PngImagePlugin  # pylint: disable=import-outside-toplevel
  raw = png(picture())
  ztxt = _chunk(b"zTXt", b"pad\0\0" + zlib.compress(b"x" * (PngImagePlugin.MAX_TEXT_CHUNK * 4), 9))
  assert len(ztxt) < MAX_UPLOAD
  r = post(client, "/energy", raw[:33] + ztxt + raw[33:])  # after the IHDR chunk
  assert r.status_code == 422 and r.json()["field"] == "image", r.text
  assert "too large" in r.json()["detail"]


def test_malformed_multipart_and_json_bodies_are_4xx(client):
  r = client.post("/energy", content=b"--x\r\nnonsense", headers={
      "content-type": "multipart/form-data; boundary=x"})
  assert 400 <= r.status_code < 500, r.text
  r = client.post("/inpaint", json={"image": base64.b64encode(GOOD).decode(), **BOX})
  assert r.status_code == 422 and r.json()["field"] == "image", r.text


def test_the_pages_png_encoder_round_trips_through_the_upload_decoder(tmp_path):
  """static/images.js encodes a drawn image as a PNG itself (no library): its bytes, run in
  node, decode to the same pixels here, gray and RGB, in one deflate block and in several."""
  node = shutil.which("node") or shutil.which("nodejs")
  if node is None:
    pytest.skip("no node binary (the browser test checks the encoder end to end)")
  script = tmp_path / "encode.js"
  script.write_text("""
const fs = require("fs");
const src = fs.readFileSync(process.argv[2], "utf8");
const start = src.indexOf("  const CRC_TABLE"), end = src.indexOf("  // -- the canvas");
const encodePng = new Function(src.slice(start, end) + "\\nreturn encodePng;")();
for (const [h, w, c] of [[28, 28, 1], [32, 32, 3], [300, 300, 1]]) {
  const pixels = new Uint8Array(h * w * c).map((_, i) => (i * 7 + (i >> 8)) % 256);
  fs.writeFileSync(`${process.argv[3]}/${h}_${w}_${c}.png`, encodePng(pixels, w, h, c));
}
""")
  static = pathlib.Path(serve.__file__).parent / "static" / "images.js"
  subprocess.run([node, str(script), str(static), str(tmp_path)], check=True, timeout=60)
  for h, w, c in ((28, 28, 1), (32, 32, 3), (300, 300, 1)):
    data = (tmp_path / f"{h}_{w}_{c}.png").read_bytes()
    x = uploads.decode_image(data, "image", (h, w, c), 1 << 20)
    i = np.arange(h * w * c)
    np.testing.assert_array_equal(x.reshape(-1), (i * 7 + (i >> 8)) % 256)
