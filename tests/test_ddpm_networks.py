"""Networks: parameter counts, the shared blocks, and PyTorch cross-checks."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm import blocks
from ddpm import networks

# Parameter counts of the course networks (also computed with torch below).
SIMPLE_UNET_PARAMS = 7_719_747
UNET_SMALL_PARAMS = 810_561              # UNet(c_in=1, c_out=1, width=16)
UNET_SMALL_CONDITIONAL_PARAMS = 811_201  # UNetConditional(1, 1, 16, n_classes=10)
UNET_HO_PARAMS = 35_746_307              # Ho et al. CIFAR-10

# Values, not speed, are tested: XLA's optimisation level 0 compiles faster.
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def _abstract_params(net, shape, label=False):
  x = jnp.zeros(shape)
  t = jnp.zeros(shape[:1], jnp.int32)
  lab = jnp.zeros(shape[:1], jnp.int32) if label else None
  return jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, lab, train=False))["params"]


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_registry():
  assert set(networks.names()) == {"unet_ho", "simple_unet", "unet_small", "denoiser"}
  assert networks.get("unet_ho") is networks.UNetHo
  with pytest.raises(KeyError, match="unknown network"):
    networks.get("resnet")


@pytest.mark.parametrize("net, shape, label, want", [
    (networks.UNetHo(), (1, 32, 32, 3), False, UNET_HO_PARAMS),
    (networks.SimpleUNet(), (1, 32, 32, 3), False, SIMPLE_UNET_PARAMS),
    (networks.UNetSmall(), (1, 32, 32, 1), False, UNET_SMALL_PARAMS),
    (networks.UNetSmall(num_classes=10), (1, 32, 32, 1), True, UNET_SMALL_CONDITIONAL_PARAMS),
    # The null label of classifier-free guidance: one more row of 4 w = 64.
    (networks.UNetSmall(num_classes=10, null_label=True), (1, 32, 32, 1), True,
     UNET_SMALL_CONDITIONAL_PARAMS + 64),
], ids=["unet_ho", "simple_unet", "unet_small", "unet_small_cond", "unet_small_cond_null"])
def test_parameter_counts(net, shape, label, want):
  params = _abstract_params(net, shape, label)
  assert _count(params) == want
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_output_shapes_and_28x28_inputs():
  for net, shape in [(networks.UNetSmall(width=8), (2, 28, 28, 1)),
                     (networks.Denoiser(ch=8), (2, 28, 28, 1)),
                     (networks.SimpleUNet(out_ch=1, ch=8, time_embed_dim=16, temb_dim=32),
                      (2, 28, 28, 1))]:
    x = jnp.zeros(shape)
    t = jnp.zeros((2,), jnp.int32)
    out = jax.eval_shape(lambda: net.init_with_output(jax.random.key(0), x, t, train=False))[0]
    assert out.shape == shape and out.dtype == jnp.float32


def test_bottleneck_resolution_of_a_configurable_network():
  """64x64 input, three stride-2 downsamplings -> an 8x8 bottleneck."""
  net = networks.UNetHo(out_ch=3, ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1,
                        attn_resolutions=(8,), num_groups=4)
  x = jnp.zeros((2, 64, 64, 3))
  t = jnp.zeros((2,), jnp.int32)

  def run():
    variables = net.init(jax.random.key(0), x, t, train=False)
    return net.apply(variables, x, t, train=False, mutable=["intermediates"])

  out, state = jax.eval_shape(run)
  assert out.shape == (2, 64, 64, 3)
  assert state["intermediates"]["bottleneck"][0].shape == (2, 8, 8, 16)


def test_conditional_networks_take_labels_and_the_null_label():
  x = jnp.zeros((2, 32, 32, 3))
  t = jnp.zeros((2,), jnp.int32)
  label = jnp.array([3, 10])
  for cls in (networks.UNetHo, networks.SimpleUNet):
    kwargs = dict(ch=8, num_groups=4) if cls is networks.SimpleUNet else dict(
        ch=8, ch_mult=(1, 2), num_res_blocks=1, num_groups=4)
    net = cls(num_classes=10, null_label=True, **kwargs)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), x, t, label, train=False))
    assert params["params"]["label_emb"]["embedding"]["embedding"].shape[0] == 11
    jax.eval_shape(lambda p: net.apply(p, x, t, None, train=False), params)   # null label
    strict = cls(num_classes=10, **kwargs)
    with pytest.raises(ValueError, match="pass a label"):
      jax.eval_shape(lambda: strict.init(jax.random.key(0), x, t, None, train=False))


def test_bfloat16_compute_with_float32_params():
  net32 = networks.Denoiser(ch=8, bottleneck_dim=16)
  net16 = networks.Denoiser(ch=8, bottleneck_dim=16, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
  params = jax.jit(lambda k: net32.init(k, x, None, train=False), **FAST)(
      jax.random.key(1, impl="rbg"))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out32, out16 = jax.jit(lambda p: (net32.apply(p, x, train=False),
                                    net16.apply(p, x, train=False)))(params)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.05 * float(jnp.abs(out32).max()))
  assert float(jnp.abs(out16 - out32).max()) > 0   # really computed in bfloat16


def test_conv_transpose_4x4_equals_flax_conv_transpose():
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  ours = blocks.ConvTranspose4x4(4)
  ref = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)))
  shapes = jax.eval_shape(lambda: ours.init(jax.random.key(1), x))
  assert shapes == jax.eval_shape(lambda: ref.init(jax.random.key(1), x))
  params = {"params": {"kernel": jax.random.normal(jax.random.key(2), (4, 4, 3, 4)),
                       "bias": jax.random.normal(jax.random.key(3), (4,))}}

  @functools.partial(jax.jit, **FAST)
  def run(p):
    out, ref_out = ours.apply(p, x), ref.apply(p, x)
    # The gradients agree too (the reason for the sub-pixel form).
    g = jax.grad(lambda q: jnp.sum(ours.apply(q, x) ** 2))(p)
    g_ref = jax.grad(lambda q: jnp.sum(ref.apply(q, x) ** 2))(p)
    return out, ref_out, g, g_ref

  out, ref_out, g, g_ref = run(params)
  assert out.shape == (2, 10, 12, 4)
  np.testing.assert_allclose(out, ref_out, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3), g, g_ref)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient(shape):
  # Distinct values: the window maxima are unique, so both gradients agree.
  x = jnp.asarray(np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape),
                  jnp.float32)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(blocks.max_pool_2x2(x), flax_pool(x))
  w = jnp.asarray(np.random.default_rng(1).normal(size=flax_pool(x).shape), jnp.float32)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * w))(x)
  np.testing.assert_array_equal(grad(blocks.max_pool_2x2), grad(flax_pool))
  # On an exact tie the gradient is shared equally.
  ties = jax.grad(lambda x: jnp.sum(blocks.max_pool_2x2(x)))(jnp.ones((1, 2, 2, 1)))
  np.testing.assert_array_equal(ties, np.full((1, 2, 2, 1), 0.25))


def test_pad_or_crop_to():
  x = jnp.ones((1, 6, 8, 2))
  assert blocks.pad_or_crop_to(x, jnp.zeros((1, 7, 7, 1))).shape == (1, 7, 7, 2)


# ---------------------------------------------------------------------------
# PyTorch cross-checks against tests/torch_reference.py (the course networks).

@pytest.fixture(scope="module")
def reference():
  torch = pytest.importorskip("torch")
  import torch_reference  # pylint: disable=import-outside-toplevel  (needs torch)
  torch.manual_seed(0)
  return torch, torch_reference


def _n_torch(m):
  return sum(p.numel() for p in m.parameters())


@pytest.mark.torch
def test_parameter_counts_equal_torch_reference(reference):
  _, tp = reference
  assert _n_torch(tp.SimpleUNet()) == SIMPLE_UNET_PARAMS
  assert _n_torch(tp.UNet(1, 1, 16)) == UNET_SMALL_PARAMS
  assert _n_torch(tp.UNetConditional(1, 1, 16, 10)) == UNET_SMALL_CONDITIONAL_PARAMS


_SIMPLE_UNET_NAMES = [
    (r"^time_mlp\.0", "time_mlp.dense0"), (r"^time_mlp\.2", "time_mlp.dense1"),
    (r"\.time_proj", ".temb_proj"), (r"\.residual", ".shortcut"),
    (r"^(downsample\d|upsample\d)$", r"\1.conv"),
]
_UNET_SMALL_NAMES = [
    (r"\.maxpool_conv\.1\.", ".conv_res."), (r"\.maxpool_conv\.2\.", ".conv."),
    (r"(up\d)\.conv\.double_conv", r"\1.conv_res.double_conv"),
    (r"(up\d)\.conv2\.double_conv", r"\1.conv.double_conv"),
    (r"\.?double_conv\.0$", ".conv1"), (r"\.?double_conv\.1$", ".norm1"),
    (r"\.?double_conv\.3$", ".conv2"), (r"\.?double_conv\.4$", ".norm2"),
    (r"^outc\.conv$", "outc"), (r"\.sa\.0\.mha\.out_proj$", ".proj"),
    (r"\.sa\.0\.mha$", ".qkv"), (r"\.sa\.0\.ln$", ".norm"),
    (r"\.sa\.0\.ff_self\.0$", ".mlp_norm"), (r"\.sa\.0\.ff_self\.1$", ".mlp_dense0"),
    (r"\.sa\.0\.ff_self\.3$", ".mlp_dense1"), (r"^label_embedding$", "label_emb.embedding"),
]


def _torch_to_flax(torch, model, rules):
  """Flax params holding `model`'s weights, module by module."""
  params = {}

  def put(path, name, value):
    node = params
    for part in path.split("."):
      node = node.setdefault(part, {})
    assert name not in node, (path, name)
    node[name] = jnp.asarray(value.detach().numpy())

  for name, module in model.named_modules():
    path = name
    for pattern, repl in rules:
      path = re.sub(pattern, repl, path)
    if isinstance(module, torch.nn.MultiheadAttention):
      put(path, "kernel", module.in_proj_weight.T)
      put(path, "bias", module.in_proj_bias)
    elif isinstance(module, torch.nn.Linear):
      put(path, "kernel", module.weight.T)
      put(path, "bias", module.bias)
    elif isinstance(module, torch.nn.ConvTranspose2d):
      put(path, "kernel", module.weight.flip(2, 3).permute(2, 3, 0, 1))
      put(path, "bias", module.bias)
    elif isinstance(module, torch.nn.Conv2d):
      w = module.weight.permute(2, 3, 1, 0)
      if path.endswith(("qkv", "proj")) and module.kernel_size == (1, 1):
        w = w[0, 0]                                   # 1x1 conv as a Dense
      put(path, "kernel", w)
      if module.bias is not None:
        put(path, "bias", module.bias)
    elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
      put(path, "scale", module.weight)
      put(path, "bias", module.bias)
    elif isinstance(module, torch.nn.Embedding):
      put(path, "embedding", module.weight)
  return params


def _forward_both(torch, model, net, rules, x, t, label=None):
  model.eval()
  params = _torch_to_flax(torch, model, rules)
  abstract = _abstract_params(net, (1,) + x.shape[1:], label is not None)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, abstract)
  with torch.no_grad():
    args = (torch.from_numpy(np.transpose(x, (0, 3, 1, 2))), torch.from_numpy(t).float())
    if label is not None:
      args += (torch.from_numpy(label).long(),)
    want = model(*args).numpy().transpose(0, 2, 3, 1)
  got = jax.jit(lambda p: net.apply({"params": p}, x, t, label, train=False), **FAST)(params)
  return np.asarray(got), want


@pytest.mark.torch
def test_simple_unet_forward_equals_torch_reference(reference):
  torch, tp = reference
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  t = np.array([3, 777], np.int32)
  got, want = _forward_both(torch, tp.SimpleUNet(), networks.SimpleUNet(), _SIMPLE_UNET_NAMES,
                            x, t)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4)


@pytest.mark.torch
@pytest.mark.parametrize("conditional", [False, True])
def test_unet_small_forward_equals_torch_reference(reference, conditional):
  torch, tp = reference
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
  t = np.array([0, 641], np.int32)
  if conditional:
    model, net, label = tp.UNetConditional(1, 1, 16, 10), networks.UNetSmall(
        num_classes=10), np.array([7, 2], np.int32)
  else:
    model, net, label = tp.UNet(1, 1, 16), networks.UNetSmall(), None
  got, want = _forward_both(torch, model, net, _UNET_SMALL_NAMES, x, t, label)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4)


@pytest.mark.torch
def test_upsampling_blocks_equal_torch(reference):
  torch, _ = reference
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
  np.testing.assert_allclose(blocks.upsample_bilinear(jnp.asarray(x)),
                             up(xt).numpy().transpose(0, 2, 3, 1), atol=1e-5)
  conv_t = torch.nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1)
  params = {"params": {"kernel": jnp.asarray(conv_t.weight.detach().flip(2, 3)
                                             .permute(2, 3, 0, 1).numpy()),
                       "bias": jnp.asarray(conv_t.bias.detach().numpy())}}
  with torch.no_grad():
    want = conv_t(xt).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(blocks.ConvTranspose4x4(4).apply(params, jnp.asarray(x)), want,
                             atol=1e-5)


def test_gelu_exact_matches_float64_erf_formula():
  import math
  import flax.linen as nn
  from ddpm import blocks
  x = np.linspace(-8.0, 8.0, 2001)
  want = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
  got = np.asarray(blocks.gelu_exact(jnp.asarray(x, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-6)
  np.testing.assert_allclose(got, np.asarray(nn.gelu(jnp.asarray(x, jnp.float32),
                                                     approximate=False)), atol=2e-6)
  g = jax.grad(lambda v: blocks.gelu_exact(v).sum())(jnp.asarray(x, jnp.float32))
  want_g = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2)
                     / math.sqrt(2 * math.pi) for v in x])
  np.testing.assert_allclose(np.asarray(g, np.float64), want_g, atol=5e-6)
