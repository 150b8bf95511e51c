"""Uploaded PNG images and masks: checked from their header before anything is decoded.

The image endpoints (/inpaint, /denoise, /energy) take a PNG of exactly the
model's image size. Every refusal is an `UploadError` (answered with its
4xx status; `field` names the upload, the message says what was expected)
and never names a file: the bytes arrive in the request body and are read
from memory.

Order of the checks, cheapest and safest first:
  1. the body size (`limits.max_upload_bytes`, enforced while the body
     streams in, in `launch.serve.app.BodyLimit`: 413);
  2. the 8-byte PNG signature, then the IHDR chunk, parsed here by hand
     (length, CRC, width, height, bit depth, colour type): a decompression
     bomb (a tiny file declaring 100000 x 100000 pixels) is refused from its
     header (413, over `limits.max_image_pixels`), as are a wrong size, bit
     depth or channel count (422), before PIL inflates a byte;
  3. the file must end with its IEND chunk, then PIL decodes it
     (`Image.open` + `load`): a truncated or damaged file fails here (422),
     as does a text chunk inflating beyond PIL's `PngImagePlugin.MAX_TEXT_CHUNK`
     or an animated PNG;
  4. the decoded mode and size once more (PIL's view of the same header).
"""
from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: every PNG ends with it
# PNG colour type -> (channels, PIL mode at 8 bits, name).
_COLOUR_TYPES = {0: (1, "L", "grayscale"), 2: (3, "RGB", "RGB"), 3: (None, "P", "palette"),
                 4: (2, "LA", "grayscale + alpha"), 6: (4, "RGBA", "RGBA")}
_EXPECTED = {1: "8-bit grayscale (PNG colour type 0, PIL mode L)",
             3: "8-bit RGB (PNG colour type 2, PIL mode RGB)"}


class UploadError(ValueError):
  """An upload the server refuses: `status` (413 or 422), `field`, a one-line message."""

  def __init__(self, status: int, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.status = status
    self.field = field
    self.message = message


def _reason(e: BaseException) -> str:
  """A short, path-free reason of a decoder error (PIL reads from memory here, but be sure)."""
  text = re.sub(r"(/|\\)\S*", "…", str(e)).strip() or type(e).__name__
  return text[:120]


def read_header(data: bytes, field: str, max_pixels: int) -> tuple[int, int, int, int, bool]:
  """(height, width, bit depth, colour type, interlaced) from the signature and IHDR chunk.

  Raises:
    UploadError: empty or non-PNG bytes, a missing or damaged IHDR chunk
      (422), or more than `max_pixels` declared pixels (413).
  """
  if not data:
    raise UploadError(422, field, "the file is empty; send a PNG image")
  if not data.startswith(PNG_SIGNATURE):
    kind = "JPEG" if data[:3] == b"\xff\xd8\xff" else "GIF" if data[:4] == b"GIF8" else (
        "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:64]) else "binary data")
    raise UploadError(422, field, f"not a PNG file (no PNG signature; it looks like {kind})")
  header = data[8:8 + 8 + 13 + 4]
  if len(header) < 25:
    raise UploadError(422, field, "the PNG file is truncated (it ends inside its IHDR header)")
  length, kind = struct.unpack(">I4s", header[:8])
  if kind != b"IHDR" or length != 13:
    raise UploadError(422, field, "damaged PNG: the first chunk is not a 13-byte IHDR header")
  body, crc = header[8:21], struct.unpack(">I", header[21:25])[0]
  if zlib.crc32(b"IHDR" + body) != crc:
    raise UploadError(422, field, "damaged PNG: the IHDR header fails its CRC check")
  width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
  if width < 1 or height < 1:
    raise UploadError(422, field, f"the PNG declares {width}x{height} pixels (width x height)")
  if width * height > max_pixels:
    raise UploadError(413, field, f"the PNG declares {width}x{height} = {width * height} pixels "
                                  f"(width x height), over the limit of {max_pixels} "
                                  "(limits.max_image_pixels): refused before decoding")
  return height, width, depth, colour, bool(interlace)


def _decode(data: bytes, field: str, mode: str, max_pixels: int) -> np.ndarray:
  """PIL's decode of a PNG whose header was checked; uint8 [H, W] or [H, W, C]."""
  if not data.endswith(PNG_END):
    raise UploadError(422, field, "the PNG is truncated: it does not end with its IEND chunk "
                                  "(cut short, or data after its end)")
  try:
    # PIL's own bomb check (Image.MAX_IMAGE_PIXELS) cannot trigger after read_header's.
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
      if getattr(im, "n_frames", 1) > 1:
        raise UploadError(422, field, f"an animated PNG ({im.n_frames} frames); send one image")
      if im.mode != mode:
        raise UploadError(422, field, f"PIL reads mode {im.mode}, expected {mode}")
      im.load()
      array = np.asarray(im, dtype=np.uint8)
  except UploadError:
    raise
  except Image.DecompressionBombError as e:
    raise UploadError(413, field, f"the PNG is a decompression bomb ({_reason(e)})") from None
  except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
          TypeError, MemoryError) as e:
    # PIL: "image file is truncated", "broken PNG file", CRC and text-chunk errors.
    raise UploadError(422, field, f"the PNG cannot be decoded: truncated or damaged "
                                  f"({_reason(e)})") from None
  if array.size > max_pixels * 4:
    raise UploadError(413, field, "the decoded image exceeds limits.max_image_pixels")
  return array


def _size_error(field: str, height: int, width: int, expected: tuple[int, int],
                what: str) -> UploadError:
  return UploadError(422, field, f"the PNG is {width}x{height} pixels (width x height), expected "
                                 f"{expected[1]}x{expected[0]} ({what})")


def decode_image(data: bytes, field: str, image_shape: tuple[int, int, int],
                 max_pixels: int) -> np.ndarray:
  """An uploaded image of exactly `image_shape` (H, W, C; C = 1 or 3) as uint8 [H, W, C].

  Raises:
    UploadError: naming `field` and what was expected (see the module docstring).
  """
  h, w, c = image_shape
  height, width, depth, colour, _ = read_header(data, field, max_pixels)
  expected = _EXPECTED[c]
  channels, mode, name = _COLOUR_TYPES.get(colour, (None, "?", f"colour type {colour}"))
  if channels != c or depth != 8:
    got = f"{depth}-bit {name}" + (
        f" ({channels} channel{'s' if channels > 1 else ''})" if channels else "")
    raise UploadError(422, field, f"the PNG is {got}, expected {expected}: the model's images "
                                  f"have {c} channel{'s' if c > 1 else ''}")
  if (height, width) != (h, w):
    raise _size_error(field, height, width, (h, w), "the model's image size")
  array = _decode(data, field, mode, max_pixels)
  if array.shape[:2] != (h, w):
    raise _size_error(field, array.shape[0], array.shape[1], (h, w), "the model's image size")
  return array.reshape(h, w, c)


def decode_mask(data: bytes, field: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
  """An uploaded inpainting mask: a grayscale PNG of the image's size; white = fill.

  Pixels >= 128 are the ones to inpaint (unknown), the others are kept.

  Returns:
    bool [H, W, 1], True = known (kept exactly), as `ebm.ood.inpaint` takes it.

  Raises:
    UploadError: not a 1- or 8-bit grayscale PNG of the image's size, nothing
      to inpaint, or a file refused as in `decode_image`.
  """
  h, w = size
  height, width, depth, colour, _ = read_header(data, field, max_pixels)
  if colour != 0 or depth not in (1, 8):
    channels, _, name = _COLOUR_TYPES.get(colour, (None, "?", f"colour type {colour}"))
    del channels
    raise UploadError(422, field, f"the mask is a {depth}-bit {name} PNG, expected a 1- or 8-bit "
                                  "grayscale PNG (PNG colour type 0; white = the pixels to fill)")
  if (height, width) != (h, w):
    raise _size_error(field, height, width, (h, w), "the image's size")
  array = _decode(data, field, "1" if depth == 1 else "L", max_pixels)
  unknown = array.astype(np.uint8) >= (1 if depth == 1 else 128)
  if not unknown.any():
    raise UploadError(422, field, "the mask is empty: no pixel to inpaint (white pixels, >= 128, "
                                  "are filled; black ones are kept)")
  return ~unknown.reshape(h, w, 1)


def box_known(size: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
  """The known-pixel mask bool [H, W, 1] of a box to fill (as `ebm.ood.box_mask`).

  Raises:
    UploadError: naming the box field that puts the box outside the image or
      makes it empty.
  """
  h, w = size
  for name, value, lo in (("top", top, 0), ("left", left, 0), ("height", height, 1),
                          ("width", width, 1)):
    if value < lo:
      raise UploadError(422, name, f"must be >= {lo}, got {value} (the box to fill is "
                                   "top, left, height, width in pixels)")
  if top >= h:
    raise UploadError(422, "top", f"{top} is outside the image (rows 0..{h - 1})")
  if left >= w:
    raise UploadError(422, "left", f"{left} is outside the image (columns 0..{w - 1})")
  if top + height > h:
    raise UploadError(422, "height", f"top + height = {top + height} exceeds the image height {h}")
  if left + width > w:
    raise UploadError(422, "width", f"left + width = {left + width} exceeds the image width {w}")
  known = np.ones((h, w, 1), bool)
  known[top:top + height, left:left + width] = False
  return known

