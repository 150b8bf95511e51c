"""Energy networks: shapes, parameter counts, the tutorial transcription, SN."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm import networks


def _num_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _cheap_params(net, x):
  """Deterministic parameters of the right shapes without compiling an RNG init."""
  abstract = jax.eval_shape(net.init, jax.random.key(0), x)["params"]
  return jax.tree.map(
      lambda a: 0.1 * jnp.sin(jnp.arange(int(np.prod(a.shape)), dtype=jnp.float32)
                              ).reshape(a.shape), abstract)


def _peer_count(c: int, in_ch: int) -> int:
  """Parameters of the PyTorch peer's CNNModel(c, in_ch), layer by layer."""
  convs = [(in_ch, c // 2, 5), (c // 2, c, 3), (c, 2 * c, 3), (2 * c, 4 * c, 3)]
  n = sum(i * o * k * k + o for i, o, k in convs)
  return n + (4 * c * 4) * (4 * c) + 4 * c + 4 * c + 1


@pytest.mark.parametrize("shape,expected", [((32, 32, 3), 164_001), ((28, 28, 1), 163_201),
                                            ((32, 32, 1), 163_201)])
def test_cnn_energy_matches_the_peer_parameter_count(shape, expected):
  net = networks.CNNEnergy(c_hid=32)
  params = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1,) + shape))["params"]
  assert _num_params(params) == expected == _peer_count(32, shape[-1])


def test_cnn_energy_output_shape_and_dtype():
  net = networks.make_network("cnn_tutorial", c_hid=8)
  x = jnp.zeros((3, 28, 28, 1))
  e = jax.jit(net.apply)({"params": _cheap_params(net, x)}, x)
  assert e.shape == (3,) and e.dtype == jnp.float32


def test_resnet_energy_shapes_activations_and_spectral_norm():
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  # (the swish variant is trained in tests/test_ebm_task.py)
  net = networks.make_network("resnet_igebm", ch=8, ch_mult=(1, 2), num_res_blocks=1,
                              activation="leaky_relu", spectral_norm=True)
  params = _cheap_params(net, x)
  assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 8)
  e = jax.jit(net.apply)({"params": params}, x)
  assert e.shape == (2,) and bool(jnp.all(jnp.isfinite(e)))


def test_spectral_normalize_gives_unit_largest_singular_value():
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 16, 32)) * 3.0
  normed = networks.spectral_normalize(kernel, power_iterations=20)
  s = np.linalg.svd(np.asarray(normed).reshape(-1, 32), compute_uv=False)
  np.testing.assert_allclose(s[0], 1.0, rtol=1e-2)
  assert s[0] >= 1.0 - 1e-5      # power iteration approaches sigma_max from below


def test_unknown_network_name_fails_loudly():
  with pytest.raises(KeyError, match="cnn_tutorial"):
    networks.make_network("unet", ch=8)


def test_cnn_energy_rejects_unsupported_image_sizes():
  net = networks.CNNEnergy(c_hid=8)
  with pytest.raises(ValueError, match="side"):
    jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 27, 27, 1)))


def _torch_cnn(c, in_ch, pad):
  import torch.nn as tnn  # pylint: disable=import-outside-toplevel

  class Swish(tnn.Module):
    def forward(self, x):
      return x * x.sigmoid()

  return tnn.Sequential(
      tnn.Conv2d(in_ch, c // 2, 5, stride=2, padding=pad), Swish(),
      tnn.Conv2d(c // 2, c, 3, stride=2, padding=1), Swish(),
      tnn.Conv2d(c, 2 * c, 3, stride=2, padding=1), Swish(),
      tnn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), Swish(),
      tnn.Flatten(), tnn.Linear(4 * c * 4, 4 * c), Swish(), tnn.Linear(4 * c, 1))


@pytest.mark.torch
@pytest.mark.parametrize("shape,pad", [((32, 32, 3), 2), ((28, 28, 1), 4)])
def test_cnn_energy_is_minus_the_torch_cnnmodel_with_ported_weights(shape, pad):
  torch = pytest.importorskip("torch", reason="PyTorch not installed (the [torch] extra)")
  c, (h, w, in_ch) = 8, shape
  torch.manual_seed(0)
  model = _torch_cnn(c, in_ch, pad).double()
  assert sum(p.numel() for p in model.parameters()) == _peer_count(c, in_ch)
  t = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  conv = lambda i: {"kernel": t[f"{i}.weight"].transpose(2, 3, 1, 0), "bias": t[f"{i}.bias"]}
  # torch flattens (C, H, W); the Flax net flattens (H, W, C)
  dense0 = t["9.weight"].T.reshape(4 * c, 2, 2, 4 * c).transpose(1, 2, 0, 3).reshape(-1, 4 * c)
  params = {"Conv_0": conv(0), "Conv_1": conv(2), "Conv_2": conv(4), "Conv_3": conv(6),
            "Dense_0": {"kernel": dense0, "bias": t["9.bias"]},
            "Dense_1": {"kernel": t["11.weight"].T, "bias": t["11.bias"]}}
  net = networks.CNNEnergy(c_hid=c)
  ref = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1,) + shape))["params"]
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), ref, params)
  x = np.random.default_rng(0).uniform(-1, 1, (4,) + shape)
  f_torch = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))[:, 0].detach().numpy()
  params32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  energy = net.apply({"params": params32}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(energy, -f_torch, rtol=1e-4, atol=1e-5)


# (shape, kernel, strides, padding) of the convolutions checked against lax.
_CONV_CASES = [
    ((2, 28, 28, 1), (5, 5, 1, 4), (2, 2), ((4, 4), (4, 4))),
    ((2, 4, 4, 6), (3, 3, 6, 8), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1))),
    ((2, 7, 6, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 9, 2), (1, 1, 2, 3), (1, 1), ((0, 0), (0, 0))),
    ((1, 5, 7, 2), (2, 3, 2, 3), (2, 1), ((0, 1), (2, 0)))]


# conv2d computes the forward with lax itself (exact); conv2d_matmul sums in another order.
@pytest.mark.parametrize("conv,value_tol", [(networks.conv2d, (1e-7, 0.0)),
                                            (networks.conv2d_matmul, (1e-5, 1e-5))],
                         ids=["custom_vjp", "matmul"])
@pytest.mark.parametrize("shape,kernel,strides,padding", _CONV_CASES)
def test_convolutions_equal_lax_in_values_and_gradients(conv, value_tol, shape, kernel, strides,
                                                        padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  plain = lambda x, w, s, p: jax.lax.conv_general_dilated(
      x, w, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(conv(x, w, strides, padding), plain(x, w, strides, padding),
                             rtol=value_tol[0], atol=value_tol[1])
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, padding)))
  got = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(x, w)
  want = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cnn_energy_matmul_layers_change_neither_values_nor_input_gradients():
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
  fast = networks.CNNEnergy(c_hid=8)            # the 4x4 and 2x2 outputs as matmuls
  convs = networks.CNNEnergy(c_hid=8, matmul_positions=0)
  params = fast.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(
      convs.init(jax.random.key(0), x)["params"])
  e = lambda net: lambda x: jnp.sum(net.apply({"params": params}, x))
  np.testing.assert_allclose(e(fast)(x), e(convs)(x), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(e(fast))(x), jax.grad(e(convs))(x), rtol=1e-4, atol=1e-6)
  by_params = lambda net: jax.grad(lambda p: jnp.sum(net.apply({"params": p}, x)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               by_params(fast), by_params(convs))
  with pytest.raises(ValueError, match="impl"):
    networks.Conv(4, impl="fft").init(jax.random.key(0), x)
