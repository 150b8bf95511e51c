"""Tests of core/images.py, core/plots.py, the family figures and launch/figures.py on tiny (8x8) images."""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from core import images as image_lib
from core import plots
from ddpm import figures as ddpm_figures
from ebm import figures as ebm_figures
from launch import data as data_lib
from launch import figures

H = W = 8


def _images(n, c=3, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, size=(n, H, W, c)).astype(np.float32)


def _render(fig, tmp_path, name):
  path = tmp_path / "figs" / f"{name}.png"
  figures.save_figure(fig, path)
  assert path.stat().st_size > 2000
  with Image.open(path) as im:
    assert im.format == "PNG" and im.width >= 100 and im.height >= 70
  return path


# --- utilities --------------------------------------------------------------


def test_to_uint8_exact_values_and_clipping():
  x = np.array([-1.0, 0.0, 1.0, -1.5, 2.0, np.nan, 1 / 127.5 - 1], np.float32)
  np.testing.assert_array_equal(image_lib.to_uint8(x), [0, 128, 255, 0, 255, 0, 1])
  assert image_lib.to_uint8(x).dtype == np.uint8
  u = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(image_lib.to_uint8(image_lib.from_uint8(u)), u)
  assert image_lib.to_uint8(u) is u
  with pytest.raises(TypeError, match="dtype"):
    image_lib.to_uint8(np.arange(3))


def test_image_grid_layout_exact():
  # Three 2x3 single-channel images, two per row, 2-px padding of value 7.
  imgs = np.stack([np.full((2, 3, 1), v, np.uint8) for v in (10, 20, 30)])
  imgs[1, 0, 0, 0] = 21  # a marked top-left pixel
  grid = image_lib.image_grid(imgs, nrow=2, padding=2, pad_value=7)
  assert grid.shape == (2 * (2 + 2) + 2, 2 * (3 + 2) + 2, 1) == (10, 12, 1)
  expected = np.full((10, 12), 7, np.uint8)
  expected[2:4, 2:5] = 10
  expected[2:4, 7:10] = 20
  expected[2, 7] = 21
  expected[6:8, 2:5] = 30
  np.testing.assert_array_equal(grid[..., 0], expected)


def test_image_grid_float_input_and_fewer_images_than_nrow():
  grid = image_lib.image_grid(-np.ones((2, 4, 4, 3), np.float32), nrow=8)
  assert grid.shape == (1 * 6 + 2, 2 * 6 + 2, 3)  # columns = min(nrow, N)
  assert grid.dtype == np.uint8 and grid.max() == 0
  assert image_lib.image_grid(np.zeros((3, 4, 4), np.uint8), nrow=3).shape == (8, 20, 1)


def test_save_png_round_trip(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  figures.save_png(rgb, tmp_path / "a" / "rgb.png")
  with Image.open(tmp_path / "a" / "rgb.png") as im:
    np.testing.assert_array_equal(np.asarray(im), rgb)
  gray = rgb[..., :1]
  figures.save_png(gray, tmp_path / "gray.png")
  with Image.open(tmp_path / "gray.png") as im:
    assert im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im), gray[..., 0])


@pytest.mark.parametrize("shape, factor", [((62, 62, 1), 5), ((242, 242, 1), 2),
                                           ((274, 274, 3), 1), ((30, 62), 9)])
def test_upscale_nearest_integer_factor_to_viewing_size(shape, factor):
  x = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  big = image_lib.upscale_nearest(x)
  assert big.shape == (shape[0] * factor, shape[1] * factor) + shape[2:]
  assert min(big.shape[:2]) >= image_lib.MIN_VIEW_SIDE
  # Every source pixel is a factor x factor block of itself (nearest neighbour).
  blocks = big.reshape(shape[0], factor, shape[1], factor, *shape[2:])
  for i in range(factor):
    for j in range(factor):
      np.testing.assert_array_equal(blocks[:, i, :, j], x)


def test_save_grid_writes_a_viewable_png_of_a_2x2_grid(tmp_path):
  """The smoke run's 2x2 grid of 28x28 images was saved at 62x62 px."""
  images = np.random.default_rng(2).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  grid = image_lib.image_grid(images, nrow=2)
  assert grid.shape == (62, 62, 1)
  saved = figures.save_grid(grid, tmp_path / "samples" / "step_2.png")
  with Image.open(tmp_path / "samples" / "step_2.png") as im:
    png = np.asarray(im)
  assert png.shape == (310, 310) and min(png.shape) >= 256
  np.testing.assert_array_equal(png, saved[..., 0])
  np.testing.assert_array_equal(png[::5, ::5], grid[..., 0])


# --- figures ----------------------------------------------------------------


def test_forward_process_figure(tmp_path):
  ts = list(range(0, 1000, 100))
  fig = ddpm_figures.forward_process_figure(_images(10), ts)
  assert isinstance(fig, Figure) and len(fig.axes) == 10
  assert [ax.get_title() for ax in fig.axes][:2] == ["t = 0", "t = 100"]
  _render(fig, tmp_path, "forward")


def test_noisy_batch_figure(tmp_path):
  fig = ddpm_figures.noisy_batch_figure(_images(11, c=1), np.arange(11) * 90, ncols=4)
  assert len(fig.axes) == 11
  assert fig.axes[10].get_title() == "t = 900"
  _render(fig, tmp_path, "noisy_batch")


def test_trajectory_figure(tmp_path):
  x_hist = np.random.default_rng(1).uniform(-1, 1, (10, 10, H, W, 3))
  steps = list(range(999, -1, -111))[:10]
  fig = ddpm_figures.trajectory_figure(x_hist, steps)
  assert len(fig.axes) == 1
  labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
  assert labels[0] == "t = 999" and len(labels) == 10
  assert len(fig.axes[0].get_yticklabels()) == 10
  _render(fig, tmp_path, "trajectory")


def test_fixed_init_figure(tmp_path):
  fig = ddpm_figures.fixed_init_figure(_images(10), _images(10, seed=1))
  assert len(fig.axes) == 2
  _render(fig, tmp_path, "fixed_init")
  fig = ddpm_figures.fixed_init_figure(_images(10), _images(10, seed=1), x_T=_images(1)[0])
  assert len(fig.axes) == 3
  _render(fig, tmp_path, "fixed_init_xT")


@pytest.mark.parametrize("names", [data_lib.CIFAR10_CLASSES, data_lib.FASHION_MNIST_CLASSES,
                                   data_lib.MNIST_CLASSES])
def test_class_grid_figure(tmp_path, names):
  assert len(names) == 10
  x = np.random.default_rng(2).uniform(-1, 1, (10, 10, H, W, 1))
  fig = plots.class_grid_figure(x, names)
  assert len(fig.axes) == 1
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(names)
  _render(fig, tmp_path, "classes")


def test_class_names_constants():
  assert figures.CLASS_NAMES["cifar10"][0] == "airplane"
  assert figures.CLASS_NAMES["fashion_mnist"][9] == "Ankle boot"
  assert figures.CLASS_NAMES["mnist"][3] == "3"


def test_ink_blot_figure(tmp_path):
  fig = ddpm_figures.ink_blot_figure(_images(8), _images(8, seed=1), noise=_images(8, seed=2))
  assert len(fig.axes) == 3
  _render(fig, tmp_path, "ink_blots")
  assert len(ddpm_figures.ink_blot_figure(_images(8), _images(8, seed=1)).axes) == 2


def test_langevin_chain_and_buffer_figures(tmp_path):
  chain = np.random.default_rng(3).uniform(-1, 1, (6, 4, H, W, 1)).astype(np.float32)
  fig = ebm_figures.langevin_chain_figure(chain, [0, 10, 20, 30, 40, 59])
  assert len(fig.axes) == 1
  _render(fig, tmp_path, "langevin")
  fig = ebm_figures.buffer_figure(image_lib.to_uint8(_images(25)), nrow=5)
  assert len(fig.axes) == 1
  _render(fig, tmp_path, "buffer")


def test_training_curves_figure(tmp_path):
  steps = np.arange(0, 1000, 50)
  series = {"train": (steps, 1.0 / (1 + steps)), "validation": (steps[::4], 1.2 / (1 + steps[::4]))}
  fig = plots.training_curves_figure(series, log_scale=True, title="DDPM loss")
  ax = fig.axes[0]
  assert len(fig.axes) == 1 and ax.get_yscale() == "log" and len(ax.get_lines()) == 2
  _render(fig, tmp_path, "loss")
  energies = {"E(data)": (steps, -np.log1p(steps)), "E(samples)": (steps, np.log1p(steps))}
  fig = plots.training_curves_figure(energies, log_scale=True, ylabel="energy")
  assert fig.axes[0].get_yscale() == "symlog"
  _render(fig, tmp_path, "energies")
  with pytest.raises(ValueError, match="equal-length"):
    plots.training_curves_figure({"a": ([0, 1], [1.0])})


def test_figures_validate_label_counts():
  with pytest.raises(ValueError, match="timesteps"):
    ddpm_figures.forward_process_figure(_images(3), [0, 1])
  with pytest.raises(ValueError, match="step labels"):
    ddpm_figures.trajectory_figure(np.zeros((3, 2, H, W, 3)), [0, 1])
  with pytest.raises(ValueError, match="class names"):
    plots.class_grid_figure(np.zeros((3, 2, H, W, 3)), ["a", "b"])


def test_figures_from_threads_without_pyplot():
  def make(seed):
    return len(figures.figure_png(ebm_figures.buffer_figure(_images(4, seed=seed), nrow=2)))

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    assert all(size > 1000 for size in pool.map(make, range(4)))
  code = ("import sys, launch.figures as f, ebm.figures as e, numpy as np; "
          "f.figure_png(e.buffer_figure(np.zeros((2, 4, 4, 3), np.uint8))); "
          "assert 'matplotlib.pyplot' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


# --- the DDPM paper's figures -------------------------------------------------


def test_paper_figures_render(tmp_path):
  _render(ddpm_figures.progressive_figure(_images(12).reshape(4, 3, H, W, 3), [4, 3, 2, 1]),
          tmp_path, "progressive")
  _render(ddpm_figures.shared_latent_figure(_images(3), _images(12).reshape(3, 4, H, W, 3),
                                       [1000, 500, 250]), tmp_path, "shared_latent")
  lambdas = [0.0, 0.5, 1.0]
  _render(ddpm_figures.interpolation_figure(_images(2), _images(2, seed=1),
                                       _images(6).reshape(2, 3, H, W, 3), lambdas, 500),
          tmp_path, "interpolation")
  t = np.arange(50)
  _render(ddpm_figures.rate_distortion_figure(5.0 / (1 + t), 30 * t / 49, 6.5), tmp_path, "rd")
  _render(ddpm_figures.nll_terms_figure(np.exp(-t / 5.0), 1e-5), tmp_path, "terms")


def test_paper_figures_validate_shapes():
  with pytest.raises(ValueError, match="timesteps"):
    ddpm_figures.shared_latent_figure(_images(3), _images(12).reshape(3, 4, H, W, 3), [1000, 500])
  with pytest.raises(ValueError, match="samples"):
    ddpm_figures.shared_latent_figure(_images(3), _images(12).reshape(4, 3, H, W, 3), [1, 2, 3])
  with pytest.raises(ValueError, match="lambdas"):
    ddpm_figures.interpolation_figure(_images(2), _images(2), _images(6).reshape(2, 3, H, W, 3),
                                 [0.0, 1.0], 500)
  with pytest.raises(ValueError, match="rate"):
    ddpm_figures.rate_distortion_figure(np.ones(5), np.ones(4), 1.0)
  with pytest.raises(ValueError, match="terms_bpd"):
    ddpm_figures.nll_terms_figure(np.ones((2, 5)), 0.0)
