"""Metric writers: the progress bar's rate and ETA, images in TensorBoard."""
from __future__ import annotations

import io

import numpy as np
import pytest

from launch import writers


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_progress_eta_excludes_compile_time_and_agrees_with_its_rate():
  clock = _Clock()
  out = io.StringIO()
  bar = writers.Progress(total=100, initial=0, enabled=True, clock=clock, file=out)
  clock.now = 60.0            # the first log step: 60 s of compiling, then 10 steps
  bar.update_to(10, {"loss": 1.0, "steps/s": 0.17})
  assert bar.steps_per_sec() is None and bar.eta_s() is None   # no honest rate yet
  clock.now = 62.0            # 20 more steps in 2 s: 10 steps/s
  bar.update_to(30, {"loss": 0.5, "steps/s": 10.0})
  assert bar.steps_per_sec() == pytest.approx(10.0)
  assert bar.eta_s() == pytest.approx((100 - 30) / 10.0)      # 7 s, not (100-30)/(30/62) = 145 s
  clock.now = 66.0
  bar.update_to(50)
  assert bar.steps_per_sec() == pytest.approx(40 / 6.0)
  assert bar.eta_s() == pytest.approx(50 / bar.steps_per_sec())
  bar._bar.refresh()
  text = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
  assert "steps/s=6.67" in text and "eta=00:07" in text, text
  bar.close()


def test_progress_restarts_its_rate_when_a_divergence_restart_moves_it_back():
  clock = _Clock()
  bar = writers.Progress(total=100, initial=0, enabled=False, clock=clock)
  bar.update_to(40)
  clock.now = 4.0
  bar.update_to(60)
  clock.now = 100.0           # restored step 20 after a slow restore
  bar.update_to(20)
  assert bar.steps_per_sec() is None
  clock.now = 101.0
  bar.update_to(30)
  assert bar.steps_per_sec() == pytest.approx(10.0) and bar.eta_s() == pytest.approx(7.0)


def _tb_images(logdir) -> dict[str, list[tuple[int, object]]]:
  """{tag: [(step, Summary.Image)]} read back from the TFRecord event files."""
  import struct
  from tensorboardX.proto import event_pb2
  found: dict[str, list] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):   # TFRecord: uint64 length, uint32 crc, payload, uint32 crc
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("image"):
          found.setdefault(value.tag, []).append((event.step, value.image))
  return found


def test_sample_grids_are_logged_to_tensorboard(tmp_path):
  from PIL import Image
  grid = np.arange(62 * 62, dtype=np.uint8).reshape(62, 62, 1)
  writer = writers.MetricWriter(tmp_path, enabled=True)
  writer.write(3, {"loss": 1.0})
  writer.write_image(3, "grid", grid)
  writer.close()
  writers.log_image(tmp_path, 5, "samples", grid[..., 0], enabled=True)
  images = _tb_images(tmp_path / "tb")
  assert set(images) == {"grid", "samples"}
  for tag, step in (("grid", 3), ("samples", 5)):
    ((got_step, image),) = images[tag]
    assert got_step == step and (image.width, image.height) == (62, 62)
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("L"))
    np.testing.assert_array_equal(decoded, grid[..., 0])
  with pytest.raises(ValueError, match="uint8"):
    writers.log_image(tmp_path, 6, "x", grid.astype(np.float32), enabled=True)


def test_training_sample_grid_is_upscaled_and_logged_to_tensorboard(tmp_path):
  """train._sample_grid: PNG at a viewable size and the same grid in TensorBoard."""
  import types
  import jax
  import jax.numpy as jnp
  from PIL import Image
  from launch import train as train_lib

  class Task:  # hashable, as the compiled-sampler cache needs
    @staticmethod
    def sample(params, key, num):
      return jnp.linspace(-1.0, 1.0, num * 28 * 28).reshape(num, 28, 28, 1) * params

    @staticmethod
    def sample_params(state):
      return state

    @staticmethod
    def sample_options(config):
      return {}

  task = Task()
  run = types.SimpleNamespace(task=task, keys={"sample": jax.random.key(0)})
  config = types.SimpleNamespace(train=types.SimpleNamespace(num_samples=4))
  from etils import epath
  train_lib._sample_grid(run, config, jnp.float32(1.0), epath.Path(tmp_path), 7)
  with Image.open(tmp_path / "samples" / "step_7.png") as im:
    png = np.asarray(im)
  assert min(png.shape[:2]) >= 256 and png.shape[0] % 62 == 0   # 62 px native, integer factor
  ((step, image),) = _tb_images(tmp_path / "tb")["samples"]
  assert step == 7 and (image.height, image.width) == png.shape[:2]
