"""The distillation run end to end: a student of a DDPM workdir (configs/distill_fashion_mnist.py).

The teacher is the session's smoke DDPM workdir (tests/conftest.py; its
initial state, T = 20). Checked: the student starts from the teacher and keeps
it in its checkpoint, every bad teacher or distill key is a one-line error
naming it, the student samples with `sampler=consistency` in every mode and
over the API, and (slow) a resumed distillation equals an uninterrupted one
bit for bit.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
import pytest
from fastapi.testclient import TestClient

import helpers
from launch import bench
from launch import config as config_lib
from launch import tasks
from launch import train as train_lib
from launch import workdir as workdir_lib
from launch.config_errors import ConfigError
from launch.serve import app as serve

SPEC = f"{helpers.ROOT}/configs/distill_fashion_mnist.py:smoke"
MOCK_EXAMPLES = 64
pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


def _config(teacher, **overrides):
  return config_lib.load(SPEC, {"distill.teacher_workdir": str(teacher), **overrides})


@pytest.fixture(scope="module")
def student(smoke_workdir, tmp_path_factory):
  """(config, workdir) of a student holding its initial state (no training)."""
  teacher = smoke_workdir("ddpm")
  config = _config(teacher)
  workdir = tmp_path_factory.mktemp("student")
  helpers.write_workdir(SPEC, workdir, {"distill.teacher_workdir": str(teacher)})
  return config, workdir


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_student_starts_from_the_teacher_and_keeps_it(smoke_workdir, student):
  teacher_run, teacher_state = workdir_lib.load_trained(smoke_workdir("ddpm"))
  config, workdir = student
  run, state = workdir_lib.load_trained(workdir)
  assert run.task.spec.distilled and run.task.spec.sampler == "consistency"
  for tree in (state.params, state.ema_params, state.extras["teacher"]):
    _leaves_equal(tree, teacher_state.ema_params)
  # Restoring the student reads only its own checkpoint: not the teacher's workdir.
  moved = _config(pathlib.Path("/nonexistent/teacher"))
  _, again = workdir_lib.load_trained(workdir, moved)
  _leaves_equal(again.extras["teacher"], state.extras["teacher"])


def test_bad_teachers_and_keys_are_named(smoke_workdir, tmp_path):
  teacher = smoke_workdir("ddpm")
  with pytest.raises(ConfigError, match=r"distill.teacher_workdir='/nonexistent'.*not a trained"):
    tasks.build(_config("/nonexistent")).teacher_params()
  with pytest.raises(ConfigError, match=r"config.model.ch=16 is invalid: the teacher .* has 8"):
    tasks.build(_config(teacher, **{"model.ch": 16})).teacher_params()
  with pytest.raises(ConfigError, match=r"diffusion.num_timesteps=40 .* has 20"):
    tasks.build(_config(teacher, **{"diffusion.num_timesteps": 40})).teacher_params()
  with pytest.raises(ConfigError, match="distill.distance"):
    tasks.build(_config(teacher, **{"distill.distance": "l1"}))
  with pytest.raises(ConfigError, match="distill.num_intervals"):
    tasks.build(_config(teacher, **{"distill.num_intervals": 21}))
  with pytest.raises(ConfigError, match="distill.target"):
    tasks.build(_config(teacher, **{"distill.target": "teacher"}))
  with pytest.raises(ConfigError, match=r"distill.solver='rk4' is invalid.*'ddim', 'heun'"):
    tasks.build(_config(teacher, **{"distill.solver": "rk4"}))
  assert tasks.build(_config(teacher, **{"distill.solver": "heun"})).distill.solver == "heun"
  with pytest.raises(ConfigError, match="--mode distill needs a trained DDPM workdir"):
    train_lib.distill_and_evaluate(config_lib.load(helpers.SMOKE["ddpm"]), str(tmp_path / "w"))
  # The bad teacher stops --mode distill before anything is written.
  with pytest.raises(ConfigError, match="not a trained DDPM workdir"):
    train_lib.distill_and_evaluate(_config("/nonexistent"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_student_samples_with_consistency_in_one_to_eight_steps(student):
  _, workdir = student
  run, state = workdir_lib.load_trained(workdir)
  task, params = run.task, run.task.sample_params(state)
  key = jax.random.key(0)
  for steps in (1, 2, 4):
    images = task.sample(params, key, 3, steps=steps)
    assert images.shape == (3, 28, 28, 1) and float(np.abs(images).max()) <= 1.0
    np.testing.assert_array_equal(np.asarray(images), np.asarray(task.sample(params, key, 3,
                                                                             steps=steps)))
  assert task.describe_sampling({"steps": 4})["sampler"] == "consistency"
  with pytest.raises(ValueError, match="steps=9"):
    task.sample(params, key, 2, steps=9)
  # The teacher's samplers still run on the student.
  assert task.sample(params, key, 2, sampler="ddim", steps=3).shape == (2, 28, 28, 1)


def test_the_api_serves_the_student_and_refuses_consistency_for_a_teacher(smoke_workdir,
                                                                        student):
  _, workdir = student
  config = helpers.serve_config({"ddpm": smoke_workdir("ddpm")})
  config.models["student"] = helpers.serve_configs.model("", str(workdir))
  config.warmup = "none"
  b = serve.build(config).start()
  try:
    assert b.wait_ready(120), b.error
    client = TestClient(serve.create_app(b, manage=False), raise_server_exceptions=False)
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    student_samplers = {s["name"]: s for s in models["student"]["samplers"]}
    assert models["student"]["default_sampler"] == "consistency"
    c = student_samplers["consistency"]
    assert (c["steps_min"], c["steps_max"], c["steps_default"]) == (1, 8, 4)
    assert "consistency" not in {s["name"] for s in models["ddpm"]["samplers"]}
    r = client.post("/generate", json={"model": "student", "num_images": 4, "steps": 4,
                                       "seed": 1, "format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sampler"] == "consistency" and body["steps"] == 4 and len(body["images"]) == 4
    r = client.post("/generate", json={"model": "student", "num_images": 1, "steps": 9})
    assert r.status_code == 422 and r.json()["field"] == "steps", r.text
    r = client.post("/generate", json={"model": "ddpm", "num_images": 1,
                                       "sampler": "consistency"})
    assert r.status_code == 422 and r.json()["field"] == "sampler", r.text
    assert "not a sampler of this model" in r.json()["detail"]
  finally:
    b.stop()


def test_bench_times_the_student_chains_and_the_served_grid(student):
  config, workdir = student
  task = tasks.build(config)
  chains = {name: (n, options) for name, _, n, options in
            bench.sampling_chains(config, task, bench.bench_settings(config))}
  assert chains["consistency1"] == (1, {"sampler": "consistency", "steps": 1})
  assert chains["consistency4"] == (4, {"sampler": "consistency", "steps": 4})
  assert chains["dpmpp_2m_sde19"][1] == {"sampler": "dpmpp_2m_sde", "steps": 19}  # T - 1 = 19
  records = bench.bench_serve(config, str(workdir), bench.bench_settings(config))
  by_name = {r["name"]: r for r in records}
  timed = by_name["serve.generate.time"]
  assert timed["n"] == config.bench.repeats and 0 < timed["min"] <= timed["value"] <= timed["max"]
  assert timed["settings"]["num_images"] == 4 and timed["settings"]["sampler"] == "consistency"
  per_image = by_name["serve.generate.ms_per_image"]["value"]
  assert per_image == pytest.approx(1e3 * timed["value"] / 4)
  with pytest.raises(ConfigError, match="bench.serve_images=512.*at most 64"):
    bench.bench_serve(config, str(workdir), dataclasses.replace(
        bench.bench_settings(config), serve_images=512))


@pytest.mark.slow  # three distillation runs (~1 min on 2 cores); .ci/run runs it
def test_resumed_distillation_equals_an_uninterrupted_one(smoke_workdir, tmp_path):
  teacher = smoke_workdir("ddpm")

  def config(steps):
    return _config(teacher, **{"train.steps": steps, "train.ckpt_every": 2,
                               "train.log_every": 1, "train.num_samples": 0})
  full = train_lib.distill_and_evaluate(config(4), str(tmp_path / "full"))
  first = train_lib.distill_and_evaluate(config(2), str(tmp_path / "resumed"))
  resumed = train_lib.distill_and_evaluate(config(4), str(tmp_path / "resumed"))
  assert int(full.step) == int(resumed.step) == 4 and int(first.step) == 2
  assert not np.array_equal(jax.device_get(jax.tree.leaves(first.params)[0]),
                            jax.device_get(jax.tree.leaves(resumed.params)[0]))
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(full))
  for (path, x), y in zip(flat, jax.tree.leaves(jax.device_get(resumed))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=jax.tree_util.keystr(path))
  # The teacher did not move; the student did.
  _leaves_equal(full.extras["teacher"], first.extras["teacher"])
  assert dataclasses.is_dataclass(full.extras) is False and set(full.extras) == {"teacher"}
