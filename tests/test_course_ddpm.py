"""scripts/course_ddpm.py, the course's PyTorch DDPM baseline: maths and a tiny run."""
from __future__ import annotations

import gzip
import importlib.util
import json
import pathlib
import struct
import sys

import numpy as np
import pytest

from ddpm import samplers
from ddpm import schedules

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_script():
  spec = importlib.util.spec_from_file_location("course_ddpm", ROOT / "scripts" / "course_ddpm.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


course = _load_script()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
  threads = torch.get_num_threads()
  yield
  torch.set_num_threads(threads)


def _write_idx(path, magic, array):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes())


@pytest.fixture
def fake_data_dir(tmp_path):
  rng = np.random.default_rng(0)
  directory = tmp_path / "idx"
  directory.mkdir()
  _write_idx(directory / "train-images-idx3-ubyte.gz", 2051,
             rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
  _write_idx(directory / "train-labels-idx1-ubyte.gz", 2049,
             rng.integers(0, 10, (64,), dtype=np.uint8))
  return directory


def _f64_schedule(T):
  betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
  return betas, 1.0 - betas, np.cumprod(1.0 - betas)


def test_load_fashion_mnist_scales_and_pads(fake_data_dir):
  images, labels = course.load_fashion_mnist(fake_data_dir)
  raw = course.read_idx(fake_data_dir / "train-images-idx3-ubyte.gz", 2051)
  assert images.shape == (64, 1, 32, 32) and images.dtype == np.float32
  assert labels.shape == (64,)
  np.testing.assert_array_equal(images[:, 0, 2:30, 2:30], raw / np.float32(127.5) - 1)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(images[:, 0][:, border] == -1.0)
  with pytest.raises(ValueError, match="IDX magic 2049, expected 2051"):
    course.read_idx(fake_data_dir / "train-labels-idx1-ubyte.gz", 2051)


@pytest.mark.parametrize("T,S", [(1000, 100), (1000, 1000), (1000, 1), (1000, 7), (10, 5),
                                 (4000, 333)])
def test_ddim_timesteps_equal_the_projects(T, S):
  ours = course.ddim_timesteps(T, S)
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(ours, samplers.ddim_timesteps(T, S, "uniform"))


def test_ddim_timesteps_reject_too_many_steps():
  with pytest.raises(ValueError, match="num_steps"):
    course.ddim_timesteps(10, 100)


def test_schedule_is_linear_betas():
  betas, _, alpha_bars = _f64_schedule(1000)
  sched = course.Schedule()
  np.testing.assert_allclose(sched.beta.numpy(), betas, rtol=1e-6)
  np.testing.assert_allclose(sched.alpha_bar.numpy(), alpha_bars, rtol=1e-4)


@pytest.mark.parametrize("i", [999, 500, 0])
def test_ancestral_step_is_algorithm_2(i):
  rng = np.random.default_rng(i)
  x, eps, z = (rng.standard_normal((2, 1, 32, 32)).astype(np.float32) for _ in range(3))
  seen_t = []

  def model(x_t, t):
    seen_t.append(t.numpy())
    return torch.from_numpy(eps)

  got = course.ancestral_step(model, course.Schedule(), torch.from_numpy(x), i,
                              torch.from_numpy(z)).numpy()
  betas, alphas, alpha_bars = _f64_schedule(1000)
  a, ab, b = alphas[i], alpha_bars[i], betas[i]
  x64, eps64, z64 = (v.astype(np.float64) for v in (x, eps, z))
  want = (x64 - (1 - a) / np.sqrt(1 - ab) * eps64) / np.sqrt(a) + (np.sqrt(b) * z64 if i else 0)
  np.testing.assert_array_equal(seen_t[0], np.full(2, float(i), np.float32))
  # float32 schedule: 1 - alpha_bar at i = 0 (1e-4) carries ~1e-3 relative error.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("t,t_prev", [(999, 989), (500, 490), (0, -1)])
def test_ddim_step_is_clipped_eta0_ddim(t, t_prev):
  rng = np.random.default_rng(t)
  x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
  eps = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
  got = course.ddim_step(lambda *_: torch.from_numpy(eps), course.Schedule(),
                         torch.from_numpy(x), t, t_prev).numpy()
  _, _, alpha_bars = _f64_schedule(1000)
  a = alpha_bars[t]
  a_prev = alpha_bars[t_prev] if t_prev >= 0 else 1.0
  x0 = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
  eps_clipped = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
  want = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps_clipped
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  if t_prev < 0:
    assert np.all(np.abs(got) <= 1.0)


@pytest.mark.parametrize("S", [20, 10, 5])
def test_dpm_solver_scheduler_is_the_projects_default_sampler_setup(S):
  """The course model's dpmpp_2m_sde<S> runs diffusers' scheduler, which
  tests/test_reference_samplers.py proves step by step equal to the project's
  `dpmpp_2m_sde`, on the same setup: the course's betas, the project's
  linspace timesteps, clipping, the SDE variant of 2M."""
  pytest.importorskip("diffusers")
  sched = course.Schedule(1000)
  scheduler = course.dpm_solver_scheduler(sched, S)
  betas, _, alpha_bars = _f64_schedule(1000)
  project = schedules.Schedule(num_timesteps=1000, **schedules.tables_from_betas(betas))
  np.testing.assert_array_equal(scheduler.timesteps.numpy(),
                                samplers.solver_timesteps(project, S, "linspace"))
  np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), alpha_bars, rtol=1e-5)
  c = scheduler.config
  assert (c.algorithm_type, c.solver_order, c.solver_type, c.prediction_type) == (
      "sde-dpmsolver++", 2, "midpoint", "epsilon")
  assert c.thresholding and c.sample_max_value == 1.0 and c.final_sigmas_type == "zero"
  with pytest.raises(ValueError, match=r"num_steps must be in \[1, 999\]"):
    course.dpm_solver_scheduler(sched, 1000)


def test_to_uint8_crops_rounds_and_clamps():
  x = torch.zeros((1, 1, 32, 32))
  x[0, 0, 2, 2], x[0, 0, 2, 3], x[0, 0, 2, 4], x[0, 0, 0, 0] = -1.0, 1.0, 3.0, 1.0
  u = course.to_uint8(x)
  assert u.shape == (1, 28, 28, 1) and u.dtype == np.uint8
  assert (u[0, 0, 0, 0], u[0, 0, 1, 0], u[0, 0, 2, 0], u[0, 5, 5, 0]) == (0, 255, 255, 128)


def test_unknown_sampler_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="unknown sampler 'ddpm'"):
    course.main(["--out", str(tmp_path / "out"), "--samplers", "ddpm"])
  with pytest.raises(ValueError, match="num_steps"):
    course.main(["--out", str(tmp_path / "out"), "--samplers", "ddim100",
                 "--num_timesteps", "10"])
  with pytest.raises(ValueError, match="num_steps"):
    course.main(["--out", str(tmp_path / "out"), "--samplers", "dpmpp_2m_sde10",
                 "--num_timesteps", "10"])
  assert not (tmp_path / "out").exists()


def test_train_sample_and_resample(fake_data_dir, tmp_path):
  out = tmp_path / "out"
  args = ["--out", str(out), "--data_dir", str(fake_data_dir), "--steps", "3",
          "--batch_size", "16", "--threads", "1", "--num_samples", "8", "--sample_batch", "4",
          "--num_timesteps", "10", "--samplers", "ddim5,ancestral", "--seed", "3"]
  record = course.main(args)
  run = json.loads((out / "run.json").read_text())
  assert run["steps"] == record["steps"] == 3
  assert np.isfinite(run["final_loss"]) and run["threads"] == 1
  assert run["torch_version"] == torch.__version__
  assert run["args"]["budget_s"] == 900 and set(run["samples"]) == {"ddim5", "ancestral"}
  log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
  assert [l["step"] for l in log] == [3]
  first = {}
  for name in ("ddim5", "ancestral"):
    with np.load(out / f"samples_{name}.npz") as f:
      assert f.files == ["images"]
      first[name] = f["images"]
    assert first[name].shape == (8, 28, 28, 1) and first[name].dtype == np.uint8
  model = course.torch_reference.UNet(c_in=1, c_out=1, width=16)
  model.load_state_dict(torch.load(out / "model.pt"))
  assert sum(p.numel() for p in model.parameters()) == 810_561

  course.main(args + ["--sample_only"])
  for name in ("ddim5", "ancestral"):
    with np.load(out / f"samples_{name}.npz") as f:
      np.testing.assert_array_equal(f["images"], first[name])
  assert json.loads((out / "run.json").read_text())["steps"] == 3
  with pytest.raises(ValueError, match="--num_timesteps 10"):
    course.main(args + ["--sample_only", "--num_timesteps", "20", "--samplers", "ancestral"])


def test_dpm_solver_sde_samples_are_seeded(fake_data_dir, tmp_path):
  """dpmpp_2m_sde<S> through main(): uint8 samples, reproduced by --sample_only,
  and its fresh per-step noise comes from the seeded generator (another seed,
  other samples)."""
  pytest.importorskip("diffusers")
  out = tmp_path / "out"
  args = ["--out", str(out), "--data_dir", str(fake_data_dir), "--steps", "2",
          "--batch_size", "16", "--threads", "1", "--num_samples", "4", "--sample_batch", "2",
          "--num_timesteps", "10", "--samplers", "dpmpp_2m_sde5,ddim5", "--seed", "3"]
  course.main(args)
  with np.load(out / "samples_dpmpp_2m_sde5.npz") as f:
    first = f["images"]
  with np.load(out / "samples_ddim5.npz") as f:
    ddim = f["images"]
  assert first.shape == (4, 28, 28, 1) and first.dtype == np.uint8
  assert not np.array_equal(first, ddim)
  course.main(args + ["--sample_only"])
  with np.load(out / "samples_dpmpp_2m_sde5.npz") as f:
    np.testing.assert_array_equal(f["images"], first)
  model = course.torch_reference.UNet(c_in=1, c_out=1, width=16)
  model.load_state_dict(torch.load(out / "model.pt"))
  model.eval()
  x_T = torch.randn((4, 1, 32, 32), generator=torch.Generator().manual_seed(3))
  again = course.dpm_solver_sde_sample(model, course.Schedule(10), x_T[:2],
                                       torch.Generator().manual_seed(4), 5)   # the first batch
  other = course.dpm_solver_sde_sample(model, course.Schedule(10), x_T[:2],
                                       torch.Generator().manual_seed(5), 5)
  np.testing.assert_array_equal(course.to_uint8(again), first[:2])
  assert not torch.equal(again, other)
