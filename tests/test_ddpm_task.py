"""The ddpm / denoiser tasks: configs, validation, one train step, sampling."""
import dataclasses
import functools
import importlib
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import train_state as core_train_state
from ddpm import task as ddpm_task_lib
from launch import tasks
from helpers import config_error_of
from launch.tasks import ddpm as ddpm_task

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {   # name -> (image shape, num_classes, parameters of the full-size network)
    "ddpm_fashion_mnist": ((28, 28, 1), 0, 810_561),   # unpadded (docs/ablation.md)
    "ddpm_mnist": ((32, 32, 1), 0, 810_561),
    "ddpm_mnist_conditional": ((32, 32, 1), 10, 811_201 + 64),
    "ddpm_cifar10": ((32, 32, 3), 0, 35_746_307),
    "ddpm_cifar10_course": ((32, 32, 3), 0, 7_719_747),
    "denoiser_fashion_mnist": ((32, 32, 1), 0, None),
}
# These tests check values, not speed: XLA's backend optimisation level 0
# halves the compile time that dominates them on CPU.
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})
VARIANTS = [(name, arg) for name in CONFIGS for arg in (None, "smoke")] + [
    ("ddpm_mnist_conditional", "course")]


def _config(name, arg=None):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  config.lock()
  return config


def _n_params(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _batch(config, shape, seed=0):
  rng = np.random.default_rng(seed)
  b = config.train.batch_size
  return {"image": rng.uniform(-1, 1, (b,) + shape).astype(np.float32),
          "label": (np.arange(b) % 10).astype(np.int32)}


@pytest.mark.parametrize("name, arg", VARIANTS, ids=lambda v: str(v))
def test_every_config_builds_its_task(name, arg):
  config = _config(name, arg)
  shape, num_classes, n_params = CONFIGS[name]
  task = tasks.build(config)
  assert isinstance(task, ddpm_task_lib.DenoiserTask if config.task == "denoiser"
                    else ddpm_task_lib.DDPMTask)
  assert task.image_shape == shape == ddpm_task.image_shape(config.data)
  assert task.num_classes == num_classes
  options = task.sample_options(config)
  hash(tuple(sorted(options.items())))   # the loop caches compiled samplers by them
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert f"python -m launch --config configs/{name}.py --workdir runs/{name}" in doc
  assert f"configs/{name}.py:smoke" in doc
  if arg is None and n_params is not None:
    batch = {"image": jax.ShapeDtypeStruct((1,) + shape, jnp.float32),
             "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
    state = jax.eval_shape(task.init_state, jax.random.key(0), batch)
    assert _n_params(state.params) == n_params


def test_build_needs_no_jax_backend():
  """The launcher validates configs, building their tasks, before it sets JAX up."""
  code = ("import importlib, jax\n"
          "from launch import tasks\n"
          f"for name in {list(CONFIGS)!r}:\n"
          "  tasks.build(importlib.import_module('configs.' + name).get_config())\n"
          "jax.config.update('jax_num_cpu_devices', 2)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


def test_course_conditional_variant_has_the_course_parameter_count():
  task = tasks.build(_config("ddpm_mnist_conditional", "course"))
  batch = {"image": jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32),
           "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
  assert _n_params(jax.eval_shape(task.init_state, jax.random.key(0), batch).params) == 811_201
  assert not task.null_label


def test_image_shape_helper():
  config = _config("ddpm_mnist")
  assert ddpm_task.image_shape(config.data) == (32, 32, 1)
  config.data.pad_to_32 = False
  assert ddpm_task.image_shape(config.data) == (28, 28, 1)
  config.data.name = "cifar10"
  assert ddpm_task.image_shape(config.data) == (32, 32, 3)


@pytest.mark.parametrize("name, key, value", [
    ("ddpm_fashion_mnist", "model.name", "resnet"),
    ("ddpm_fashion_mnist", "model.name", "denoiser"),       # a ddpm needs a time input
    ("denoiser_fashion_mnist", "model.name", "unet_small"),
    ("ddpm_fashion_mnist", "diffusion.schedule", "quadratic"),
    ("ddpm_fashion_mnist", "diffusion.objective", "score"),
    ("ddpm_fashion_mnist", "diffusion.t_sampling", "lognormal"),
    ("ddpm_fashion_mnist", "sample.sampler", "euler"),
    ("ddpm_fashion_mnist", "sample.variance", "large"),
    ("ddpm_fashion_mnist", "sample.spacing", "cubic"),
    ("ddpm_fashion_mnist", "model.dtype", "float16"),
    ("ddpm_fashion_mnist", "data.name", "svhn"),
    ("ddpm_fashion_mnist", "optim.name", "sgd"),
])
def test_unknown_names_raise_config_error(name, key, value):
  message = str(config_error_of(_config(name), key, value))
  assert f"config.{key}=" in message and "allowed" in message


@pytest.mark.parametrize("name, key, value", [
    ("ddpm_fashion_mnist", "diffusion.num_timesteps", 0),
    ("ddpm_fashion_mnist", "diffusion.num_timesteps", 10_000_000),
    ("ddpm_fashion_mnist", "sample.guidance", -1.0),
    ("ddpm_fashion_mnist", "sample.guidance", 3.0),         # unconditional: no null label
    ("ddpm_mnist_conditional", "sample.guidance", 1000.0),
    ("ddpm_mnist", "sample.steps", 50),                     # only ddim takes fewer steps
    ("ddpm_fashion_mnist", "sample.steps", 5000),
    ("ddpm_fashion_mnist", "sample.eta", 1.5),
    ("ddpm_fashion_mnist", "sample.label", 3),              # unconditional
    ("ddpm_mnist_conditional", "sample.label", 11),
    ("ddpm_fashion_mnist", "diffusion.class_dropout", 0.1),  # unconditional
    ("ddpm_fashion_mnist", "diffusion.beta_end", 1e-5),     # below beta_start
    ("ddpm_cifar10_course", "model.num_groups", 7),
    ("ddpm_cifar10", "model.ch_mult", (1, 2, 2, 2, 2, 2, 2)),  # 32 / 2^6 is not whole
    ("ddpm_fashion_mnist", "model.num_heads", 3),
    ("ddpm_fashion_mnist", "model.dropout", 1.0),
    ("ddpm_fashion_mnist", "optim.lr", 0.0),
    ("denoiser_fashion_mnist", "diffusion.denoise_mix", 0.0),
])
def test_out_of_range_values_raise_config_error(name, key, value):
  assert f"config.{key}=" in str(config_error_of(_config(name), key, value))


@functools.lru_cache(maxsize=None)
def _trained(name):
  """(config, task, state after one train step, metrics, initial params) of a smoke config."""
  config = _config(name, "smoke")
  task = tasks.build(config)
  batch = _batch(config, task.image_shape)
  key = jax.random.key(0)
  abstract = jax.eval_shape(task.init_state, key, batch)
  state = jax.jit(task.init_state, **FAST)(key, batch)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == jax.tree.map(
      lambda a: (a.shape, a.dtype), abstract)
  params0 = jax.tree.map(np.asarray, state.params)
  ema0 = jax.tree.map(np.asarray, state.ema_params)
  state, metrics = jax.jit(task.train_step, donate_argnums=0, **FAST)(state, batch,
                                                                      jax.random.key(1))
  return config, task, state, metrics, params0, ema0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_smoke_train_step_and_sample(name):
  config, task, state, metrics, params0, ema0 = _trained(name)
  assert {"loss", "grad_norm"} <= set(metrics)
  for k, v in metrics.items():
    assert v.shape == () and v.dtype == jnp.float32 and np.isfinite(float(v)), (k, v)
  assert int(state.step) == 1
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(state.params)))
  assert any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(ema0), jax.tree.leaves(state.ema_params)))
  # As the loop does: jit(partial(task.sample, num=..., **options))(params, key).
  options = task.sample_options(config)
  sample = jax.jit(functools.partial(task.sample, num=3, **options), **FAST)
  images = sample(task.sample_params(state), jax.random.key(2))
  assert images.shape == (3,) + task.image_shape and images.dtype == jnp.float32
  assert np.all(np.isfinite(images)) and float(jnp.abs(images).max()) <= 1.0


def test_guidance_one_equals_the_conditional_model():
  _, task, state, _, _, _ = _trained("ddpm_mnist_conditional")
  assert task.null_label
  params = state.params
  x = jax.random.normal(jax.random.key(0), (4,) + task.image_shape)
  t = jnp.array([0, 5, 10, 19])
  label = jnp.array([1, 4, 7, 9])
  apply = jax.jit(lambda p, lab: task.network.apply({"params": p}, x, t, lab, train=False),
                  **FAST)
  static = jax.jit(lambda p, lab: task.eps_fn(p, lab, 1.0)(x, t), **FAST)
  guided = jax.jit(lambda p, lab, s: task.eps_fn(p, lab, s)(x, t), **FAST)
  direct, uncond = apply(params, label), apply(params, jnp.full((4,), 10))
  static_one, traced_one, zero = static(params, label), guided(params, label, 1.0), guided(
      params, label, 0.0)
  np.testing.assert_array_equal(static_one, direct)
  np.testing.assert_allclose(traced_one, direct, atol=1e-5)
  np.testing.assert_allclose(zero, uncond, atol=1e-5)
  assert float(jnp.abs(direct - uncond).max()) > 1e-4


def test_sample_options_and_trajectory_capture():
  _, task, state, _, _, _ = _trained("ddpm_fashion_mnist")
  params = task.sample_params(state)
  noise = jax.random.normal(jax.random.key(5), (2,) + task.image_shape)
  run = jax.jit(lambda p, k: task.sample(p, k, 2, sampler="ddim", steps=6, eta=0.0,
                                         noise=noise, capture_every=2), **FAST)
  images, traj = run(params, jax.random.key(0))
  images2, _ = run(params, jax.random.key(1))    # eta = 0 and the noise is given: key unused
  assert traj.shape == (3, 2) + task.image_shape
  np.testing.assert_array_equal(images, jnp.clip(traj[-1], -1, 1))
  np.testing.assert_array_equal(images, images2)
  with pytest.raises(ValueError, match="unknown sampler"):
    task.sample(params, jax.random.key(0), 2, sampler="euler")
  with pytest.raises(ValueError, match="unconditional"):
    task.sample(params, jax.random.key(0), 2, label=3)
  with pytest.raises(ValueError, match="guidance"):
    task.sample(params, jax.random.key(0), 2, guidance=2.0)
  with pytest.raises(ValueError, match="ddim"):
    task.sample(params, jax.random.key(0), 2, steps=5)


def test_conditional_sample_labels():
  _, task, _, _, _, _ = _trained("ddpm_mnist_conditional")
  np.testing.assert_array_equal(task._sample_labels(None, 12), np.arange(12) % 10)
  np.testing.assert_array_equal(task._sample_labels(3, 2), [3, 3])
  np.testing.assert_array_equal(task._sample_labels(10, 2), [10, 10])   # the null label
  with pytest.raises(ValueError):
    task._sample_labels(11, 2)
  with pytest.raises(ValueError):
    task._sample_labels(np.arange(3), 2)


class _Affine(nn.Module):
  """x0_hat = a x + b with scalar a, b: a denoiser whose output is known in closed form."""

  @nn.compact
  def __call__(self, x, t, label, train=False):
    del t, label, train
    a = self.param("a", nn.initializers.ones, ())
    b = self.param("b", nn.initializers.zeros, ())
    return a * x + b


def test_denoiser_sample_and_loss_against_float64():
  # The task with its network swapped for x0_hat = a x + b and m = 0.3 (not
  # 0.5, so that swapping m and 1 - m shows).
  m = 0.3
  task = dataclasses.replace(tasks.build(_config("denoiser_fashion_mnist", "smoke")),
                             network=_Affine(), denoise_mix=m)
  assert task.sample_options(_config("denoiser_fashion_mnist")) == {}
  rng = np.random.default_rng(0)
  shape = (64,) + task.image_shape
  eps = rng.standard_normal(shape)
  x0 = rng.uniform(-1, 1, shape)
  a, b = 1.7, -0.2
  params = {"a": jnp.float32(a), "b": jnp.float32(b)}
  blots = task.sample(params, jax.random.key(0), 64, noise=jnp.asarray(eps, jnp.float32))
  np.testing.assert_allclose(blots, np.clip(a * eps + b, -1, 1), rtol=1e-5, atol=1e-6)
  mixed = task.sample(params, jax.random.key(0), 64, noise=jnp.asarray(eps, jnp.float32),
                      x0=jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(mixed, np.clip(a * ((1 - m) * x0 + m * eps) + b, -1, 1),
                             rtol=1e-5, atol=1e-6)
  # The loss is the MSE to x0: with a = 0 it is mean((b - x0)^2) whatever the
  # noise; with a = 1, b = 0 it is m^2 mean((eps - x0)^2), whose expectation
  # over eps ~ N(0, 1) is m^2 (1 + mean(x0^2)) (65536 values: within ~1%).
  batch = {"image": jnp.asarray(x0, jnp.float32), "label": jnp.zeros((64,), jnp.int32)}
  step = jax.jit(task.train_step)
  for (a, b), want, rtol in [
      ((0.0, 0.25), np.mean((0.25 - x0) ** 2), 1e-6),
      ((1.0, 0.0), m ** 2 * (1 + np.mean(x0 ** 2)), 0.03)]:
    state = core_train_state.TrainState.create(
        {"a": jnp.float32(a), "b": jnp.float32(b)}, task.tx)
    _, metrics = step(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["loss"]), want, rtol=rtol)


def test_bfloat16_compute_is_a_config_option():
  config = _config("ddpm_cifar10", "smoke")
  config.model.dtype = "bfloat16"
  task = tasks.build(config)
  assert task.network.dtype == jnp.bfloat16
  batch = {"image": jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
  state = jax.eval_shape(task.init_state, jax.random.key(0), batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  _, metrics = jax.eval_shape(task.train_step, state, batch, jax.random.key(1))
  assert metrics["loss"].dtype == jnp.float32


def test_fashion_mnist_conditional_variant_keeps_the_default_recipe():
  """`:conditional` was measured with the default's data, loss, optimiser and steps
  (docs/ablation.md, rows v_msnr5_28 and cond_v_28): only the conditioning differs,
  and the sampler, which is the one its figures were measured with."""
  default = _config("ddpm_fashion_mnist").to_dict()
  conditional = _config("ddpm_fashion_mnist", "conditional").to_dict()
  for group in ("data", "optim", "train", "model", "diffusion", "sample"):
    differ = {k for k in default[group] if default[group][k] != conditional[group][k]}
    assert differ == {"model": {"conditional"}, "diffusion": {"class_dropout"},
                      "sample": {"guidance", "sampler"}}.get(group, set()), (group, differ)
  assert (conditional["diffusion"]["objective"], conditional["data"]["pad_to_32"],
          conditional["sample"]["guidance"]) == ("v", False, 3.0)
  assert (default["sample"]["sampler"], conditional["sample"]["sampler"],
          conditional["sample"]["steps"]) == ("dpmpp_2m_sde", "dpmpp_2m", 20)
