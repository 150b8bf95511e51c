"""The "ebm" task: configs, validation, one train step, sampling, the guard metrics."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import ebm_cifar10, ebm_fashion_mnist
from ebm import ood
from launch import config as config_lib
from launch import tasks
from launch import train as train_lib
from launch.config_errors import ConfigError

METRICS = {"loss", "cd", "reg", "energy_pos", "energy_neg", "langevin_grad_norm", "grad_norm"}


def _batch(task, batch_size, seed=0):
  image = jax.random.uniform(jax.random.key(seed), (batch_size, *task.image_shape),
                             minval=-1.0, maxval=1.0)
  return {"image": image, "label": jnp.zeros((batch_size,), jnp.int32)}


@pytest.mark.parametrize("module,arg", [
    (ebm_fashion_mnist, None), (ebm_fashion_mnist, "smoke"),
    (ebm_cifar10, None), (ebm_cifar10, "cnn"), (ebm_cifar10, "smoke")])
def test_every_config_builds(module, arg):
  config = module.get_config(arg)
  task = tasks.build(config)
  assert task.num_classes == 0
  assert task.image_shape == {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[
      config.data.name]
  assert config.optim.b1 == 0.0 and config.guard.enabled
  assert set(config.guard.metrics) <= METRICS
  name = module.__name__.split(".")[-1]
  assert f"python -m launch --config configs/{name}.py --workdir runs/{name}" in module.__doc__


def test_cifar_config_has_the_tutorial_sampler_settings():
  e = ebm_cifar10.get_config().ebm
  assert (e.langevin_steps, e.step_size, e.noise_scale, e.grad_clip) == (60, 10.0, 0.005, 0.03)
  assert 8192 <= e.buffer_size <= 10000 and ebm_cifar10.get_config().train.batch_size == 128


def test_unknown_config_argument_is_an_error():
  with pytest.raises(ValueError, match="tiny"):  # configs raise plain ValueError
    ebm_fashion_mnist.get_config("tiny")


@pytest.mark.parametrize("key,value", [
    ("model.name", "unet_small"), ("model.activation", "relu"), ("ebm.step_size", -1.0),
    ("ebm.step_size", 0.0), ("ebm.reinit_fraction", 1.5), ("ebm.reinit_fraction", -0.1),
    ("ebm.noise_scale", -0.1), ("ebm.langevin_steps", 0), ("ebm.buffer_size", 4),
    ("data.name", "imagenet"), ("optim.b1", 1.0), ("ebm.sample_steps", 0)])
def test_bad_values_raise_config_error_naming_the_key(key, value):
  config = ebm_fashion_mnist.get_config("smoke")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
    tasks.build(config)
  assert err.value.key == key


def _smoke(module):
  config = module.get_config("smoke")
  task = tasks.build(config)
  batch = _batch(task, config.train.batch_size)
  state = jax.jit(task.init_state)(jax.random.key(0), batch)
  step = jax.jit(task.train_step)
  return config, task, batch, state, step


@pytest.fixture(scope="module", params=["fashion_mnist", "cifar10"])
def smoke(request):
  """Both smoke configs: the tutorial CNN and the ResNet energy."""
  return _smoke({"fashion_mnist": ebm_fashion_mnist, "cifar10": ebm_cifar10}[request.param])


@pytest.fixture(scope="module")
def cnn_smoke():
  """The Fashion-MNIST smoke config only (sampling and evaluation paths)."""
  return _smoke(ebm_fashion_mnist)


def test_init_state_is_abstract_first(smoke):
  config, task, batch, _, _ = smoke
  abstract = jax.eval_shape(task.init_state, jax.random.key(0), batch)
  buf = abstract.extras["buffer"]
  assert buf.shape == (config.ebm.buffer_size, *task.image_shape) and buf.dtype == jnp.float32
  assert abstract.step.shape == () and abstract.lr_scale.dtype == jnp.float32


def test_initial_buffer_is_uniform_noise(smoke):
  _, _, _, state, _ = smoke
  buf = np.asarray(state.extras["buffer"])
  assert buf.min() >= -1.0 and buf.max() <= 1.0 and buf.std() > 0.4


def test_one_train_step_updates_params_and_buffer_with_finite_metrics(smoke):
  _, _, batch, state, step = smoke
  new_state, metrics = step(state, batch, jax.random.key(1))
  assert set(metrics) >= METRICS
  for name, value in metrics.items():
    assert value.shape == () and value.dtype == jnp.float32, name
    assert math.isfinite(float(value)), name
  assert int(new_state.step) == 1
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                         state.params, new_state.params))
  assert all(changed)
  rows_changed = jnp.any(new_state.extras["buffer"] != state.extras["buffer"], axis=(1, 2, 3))
  assert int(rows_changed.sum()) == batch["image"].shape[0]   # exactly the drawn slots
  np.testing.assert_allclose(metrics["loss"], metrics["cd"] + metrics["reg"], rtol=1e-5)


def test_train_step_is_deterministic_in_the_key_and_folds_in_the_step(smoke):
  _, _, batch, state, step = smoke
  a_state, a = step(state, batch, jax.random.key(1))
  b_state, b = step(state, batch, jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, (a_state, a), (b_state, b))
  _, c = step(a_state, batch, jax.random.key(1))    # step 1: different noise
  assert float(c["energy_neg"]) != float(a["energy_neg"])


def test_train_step_data_parallel_matches_single_device(cnn_smoke):
  _, _, batch, state, step = cnn_smoke
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
  replicated = jax.device_put(state, NamedSharding(mesh, P()))
  s_state, s_metrics = step(replicated, sharded, jax.random.key(1))
  u_state, u_metrics = step(state, batch, jax.random.key(1))
  for name in METRICS:
    np.testing.assert_allclose(s_metrics[name], u_metrics[name], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s_state.extras["buffer"], u_state.extras["buffer"], atol=1e-5)


def test_blown_up_params_trip_the_guard_metrics(smoke):
  config, _, batch, state, step = smoke
  # kernels x1e4 (spectral norm undoes that) and biases 1e4 (it cannot)
  big = state.replace(params=jax.tree.map(lambda p: 1e4 * (p + 1.0), state.params))
  _, metrics = step(big, batch, jax.random.key(1))
  tripped = [m for m in config.guard.metrics
             if not math.isfinite(float(metrics[m])) or abs(float(metrics[m])) > config.guard.bound]
  assert tripped, {m: float(metrics[m]) for m in config.guard.metrics}


def test_sample_from_noise_shapes_range_capture_and_init(cnn_smoke):
  _, task, _, state, _ = cnn_smoke
  params = task.sample_params(state)
  x = task.sample(params, jax.random.key(2), 3, steps=4)
  assert x.shape == (3, *task.image_shape)
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
  init = jnp.zeros((3, *task.image_shape))
  x2, traj = task.sample(params, jax.random.key(2), 3, steps=4, capture_every=2, init=init)
  assert traj.shape == (3, 3, *task.image_shape)      # start, after 2 and after 4 steps
  np.testing.assert_array_equal(traj[0], init)
  np.testing.assert_array_equal(traj[-1], x2)
  assert task.sample_options(ebm_fashion_mnist.get_config("smoke")) == {"steps": 8}


def test_sample_from_buffer_returns_buffer_entries_or_continues_them(cnn_smoke):
  _, task, _, state, _ = cnn_smoke
  buf = np.asarray(state.extras["buffer"]).reshape(state.extras["buffer"].shape[0], -1)
  x = np.asarray(task.sample_from_buffer(state, jax.random.key(3), 4))
  assert x.shape == (4, *task.image_shape)
  for row in x.reshape(4, -1):
    assert np.any(np.all(buf == row, axis=1))
  y = task.sample_from_buffer(state, jax.random.key(3), 4, steps=3, noise_scale=0.0)
  assert y.shape == x.shape and not np.array_equal(np.asarray(y), x)


def test_ood_evaluate_through_the_task(cnn_smoke):
  # Against the network's energies on each set and a float64 count over every
  # (in, out) pair; the flips and the inversion are built here in NumPy.
  _, task, batch, state, _ = cnn_smoke
  key = jax.random.key(4)
  scores = task.ood_evaluate(state.params, batch["image"], key, batch_size=4)
  x = np.asarray(batch["image"])
  noise_sets = ood.make_ood_sets(key, batch["image"])
  sets = {"vflip": x[:, ::-1], "hflip": x[:, :, ::-1], "inverted": -x,
          "uniform_noise": noise_sets["uniform_noise"],
          "gaussian_noised": noise_sets["gaussian_noised"]}
  energy = jax.jit(task.energy)
  e_in = np.asarray(energy(state.params, x), np.float64)
  assert set(scores) == set(sets)
  for name, x_out in sets.items():
    e_out = np.asarray(energy(state.params, jnp.asarray(x_out)), np.float64)
    want = np.mean((e_out[:, None] > e_in[None, :]) + 0.5 * (e_out[:, None] == e_in[None, :]))
    np.testing.assert_allclose(float(scores[name]), want, atol=1e-6, err_msg=name)


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_guard_recovers_an_ebm_blow_up_through_the_training_loop(tmp_path):
  # Adam at lr 1e6 (no clipping) sends the energies past the guard's bound
  # within the first steps; the loop restores the last good checkpoint, scales
  # the rate by 1e-8 (to an effective 0.01), reseeds and trains to the end with
  # finite parameters and energies within the bound: no manual restart.
  overrides = {"train.steps": 8, "train.log_every": 1, "train.ckpt_every": 2,
               "optim.lr": 1e6, "optim.grad_clip": 0.0, "optim.warmup_steps": 0,
               "guard.bound": 50.0, "guard.lr_factor": 1e-8, "guard.max_restarts": 2}
  config = config_lib.load("configs/ebm_fashion_mnist.py:smoke", overrides)
  with tfds.testing.mock_data(num_examples=64):
    state = train_lib.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 8
  np.testing.assert_allclose(float(state.lr_scale), 1e-8, rtol=1e-6)
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  restarts = [r for r in records if "guard_restart" in r]
  assert len(restarts) == 1, restarts
  after = [r for r in records[records.index(restarts[0]) + 1:] if "energy_pos" in r]
  assert after and all(abs(r[m]) <= config.guard.bound for r in after for m in config.guard.metrics)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
