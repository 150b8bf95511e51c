"""Energy networks E_theta(x): images [B, H, W, C] in [-1, 1] -> energies [B].

Sign convention (one for the whole package): every network here returns the
energy E(x), which is LOW on data. The model density is p(x) ∝ exp(-E(x)), the
score is -∇ₓE(x), Langevin dynamics descends E, and the OOD score of an input
is its energy (higher = less likely).

The UvA deep-learning tutorial 8 (and `CNNModel` of the PyTorch peer) outputs
the opposite quantity f(x) = -E(x), a "score" that is high on data. `CNNEnergy`
is a layer-for-layer transcription of that network and returns E(x) = -f(x):
the same weights (moved to the NHWC/HWIO layouts) give the negated output, and
the tutorial's loss (mean f(x⁻) - mean f(x⁺) + α·mean(f(x⁺)² + f(x⁻)²)) is
exactly `ebm.losses.cd_loss` written with E.

Networks are chosen by name from `NETWORKS` (`make_network(name, **fields)`);
their fields are typed and they never see a config.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def swish(x: jax.Array) -> jax.Array:
  """Swish / SiLU, x·sigmoid(x) (the tutorial's activation)."""
  return x * jax.nn.sigmoid(x)


def leaky_relu(x: jax.Array) -> jax.Array:
  """Leaky ReLU with slope 0.2 (IGEBM's alternative activation)."""
  return jax.nn.leaky_relu(x, negative_slope=0.2)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": swish,
    "leaky_relu": leaky_relu,
}


def _l2_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  return v * jax.lax.rsqrt(jnp.sum(v * v) + eps)


def spectral_normalize(kernel: jax.Array, power_iterations: int) -> jax.Array:
  """kernel / σ_max(kernel reshaped to [fan_in, fan_out]) (Miyato et al. 2018).

  σ_max is estimated by power iteration from a fixed start vector, freshly at
  every call, so the function is pure and needs no mutable state (Miyato et
  al. keep the vector between steps and do one iteration per step). Power
  iteration approaches σ_max from below, so the normalised kernel's norm is
  at least 1 and close to it; the cost is negligible next to the
  convolutions. The singular vectors are stop_gradient'ed, as in the paper.

  Args:
    kernel: [..., fan_out] weight (conv [kh, kw, c_in, c_out] or dense).
    power_iterations: number of power iterations (≥ 1).

  Returns:
    The kernel divided by its estimated largest singular value.
  """
  w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
  u = _l2_normalize(jax.random.normal(jax.random.key(0), (w.shape[1],), jnp.float32))
  v = _l2_normalize(w @ u)
  for _ in range(power_iterations - 1):
    u = _l2_normalize(w.T @ v)
    v = _l2_normalize(w @ u)
  u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
  sigma = v @ (w @ u)
  return (kernel / sigma.astype(kernel.dtype)).astype(kernel.dtype)


_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=_DIMENSION_NUMBERS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """2-D convolution, NHWC × HWIO -> NHWC, whose input gradient is fast on CPU.

  Same values and gradients as `lax.conv_general_dilated`. Why: in the
  Langevin chain ∇ₓE is taken inside `lax.scan` with the kernels loop
  invariant; XLA then folds the kernel reversal and the in/out transpose of
  the input-gradient convolution into the convolution itself (dimension
  labels 01oi), and XLA:CPU runs that form on its slow generic path
  (`outer_dimension_partitions`, see PERF_NOTES). Here the backward pass
  flips and transposes the kernel explicitly behind an
  `optimization_barrier`, so the input gradient is an ordinary HWIO
  convolution (with lhs dilation for strides) on the library kernel: the
  60-step tutorial chain ran ~1.3× faster on 2 CPU cores. The weight
  gradient is JAX's own. Reverse mode only (no jvp), like any custom_vjp.

  Args:
    x: [B, H, W, C_in].
    kernel: [kh, kw, C_in, C_out].
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)).

  Returns:
    [B, H', W', C_out].
  """
  return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  # Transposed-convolution padding: with output length m, stride s, the
  # s-dilated gradient has length (m - 1)s + 1 and must map back to n.
  pads = []
  for n, m, k, s, (lo, _) in zip(x.shape[1:3], g.shape[1:3], kernel.shape[:2], strides,
                                 padding):
    pads.append((k - 1 - lo, n - ((m - 1) * s + 1) + lo))
  dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DIMENSION_NUMBERS)
  _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, strides, padding), kernel)
  return dx.astype(x.dtype), kernel_vjp(g)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_matmul(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                  padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """The same convolution as `conv2d`, computed as patches @ kernel (im2col).

  The kh·kw strided slices of the padded input are concatenated into
  patches [B, H', W', kh·kw·C_in] and multiplied by the kernel reshaped to
  [kh·kw·C_in, C_out]; its gradients are JAX's own (a matmul plus the
  transposes of the slices, i.e. padded adds, for the input; one matmul for
  the kernel). Same values as `lax.conv_general_dilated` up to float
  rounding. Why: XLA:CPU's convolutions are slow on very small feature
  maps. The input gradient of the tutorial CNN's last layer (4×4 -> 2×2,
  64 -> 128 channels, batch 64, one core) took 5.7 ms as a convolution and
  0.4 ms in this form. With the two last layers (outputs 4×4 and 2×2) in
  this form the 60-step Langevin chain ran ~1.5× faster on 2 CPU cores, and
  the CD step lost its two weight-gradient convolutions on XLA's slow
  generic path (`outer_dimension_partitions`); docs/benchmarks.md
  has the figures. The patches take kh·kw times the input's memory, so it
  is meant for small maps. Arguments and result as `conv2d`.
  """
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, h, w, _ = xp.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"kernel {kernel.shape[:2]} is larger than the padded input {(h, w)}")
  cols = [jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c_in),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)   # (i, j, c) order = kernel.reshape's
  return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * c_in, c_out))


class Conv(nn.Module):
  """2-D convolution (params "kernel" [kh, kw, C_in, C_out], "bias"), with
  optional spectral normalisation and the CPU-friendly gradient of `conv2d`.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)); None = 'SAME' for odd kernels
      at stride 1, i.e. (k - 1) / 2 on each side.
    spectral_norm: divide the kernel by its largest singular value.
    power_iterations: iterations of the σ_max estimate.
    custom_grad: use `conv2d` (True) or plain `lax.conv_general_dilated`;
      only for impl "conv".
    impl: "conv" (a convolution) or "matmul" (`conv2d_matmul`, for small
      feature maps); same parameters and function either way.
    dtype: compute dtype.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Sequence[Sequence[int]] | None = None
  spectral_norm: bool = False
  power_iterations: int = 5
  custom_grad: bool = True
  impl: str = "conv"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, H', W', features]."""
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    if self.spectral_norm:
      kernel = spectral_normalize(kernel, self.power_iterations)
    padding = self.padding
    if padding is None:
      padding = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    strides = tuple(int(s) for s in self.strides)
    if self.impl == "matmul":
      conv = conv2d_matmul
    elif self.impl == "conv":
      conv = conv2d if self.custom_grad else _conv
    else:
      raise ValueError(f"Conv.impl must be 'conv' or 'matmul', got {self.impl!r}")
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype), strides, padding)
    return y + bias.astype(self.dtype)


class SNDense(nn.Module):
  """Dense layer with optional spectral normalisation (fields as `Conv`)."""
  features: int
  spectral_norm: bool = False
  power_iterations: int = 5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, D] -> [B, features]."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    if self.spectral_norm:
      kernel = spectral_normalize(kernel, self.power_iterations)
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class CNNEnergy(nn.Module):
  """The tutorial's small CNN energy (the PyTorch peer's `CNNModel`).

  conv 5×5 s2 (c/2) → conv 3×3 s2 (c) → conv 3×3 s2 (2c) → conv 3×3 s2 (4c),
  Swish after each; flatten [B, 2·2·4c] → dense 4c → Swish → dense 1, then
  E = -output (see the module docstring). Spatial sizes 32 → 16 → 8 → 4 → 2.
  A 28×28 input gets padding 4 in the first convolution instead of 2, as in
  the tutorial's MNIST model, so it too becomes 16×16; any H = W ≤ 32 with
  32 - H even works the same way. With c_hid = 32 there are 164,001
  parameters for 3 channels and 163,201 for 1, exactly the peer's count.

  The flatten is over NHWC (H, W, C order) where PyTorch flattens (C, H, W):
  same parameter count and function class; porting torch weights permutes
  the rows of the first dense kernel accordingly.

  Attributes:
    c_hid: hidden width c (the tutorial's `hidden_features`).
    activation: name in `ACTIVATIONS`.
    custom_grad: convolutions with the CPU-friendly input gradient
      (`conv2d`); same values and gradients either way.
    matmul_positions: layers whose output has at most this many spatial
      positions (H'·W') are computed as matmuls (`conv2d_matmul`); with the
      default 16 these are the 4×4 and 2×2 outputs of a 32×32 input. 0 =
      every layer is a convolution. Same values and gradients either way.
    num_classes: K > 0 makes the last layer K-wide and the output the K
      per-class energies E(x, y) = -f(x)[y] [B, K] (JEM; see `energy_fn_of`);
      0 = one scalar energy [B] (the tutorial's network, same parameters).
    spectral_norm: spectral normalisation of every conv and dense kernel
      (IGEBM, Du & Mordatch 2019, §3.3: it bounds the Lipschitz constant of
      E, keeping the Langevin gradients smooth). Same parameter tree either
      way; False is the tutorial's network.
    dtype: compute dtype (parameters stay float32; energies are float32).
  """
  c_hid: int = 32
  activation: str = "swish"
  custom_grad: bool = True
  matmul_positions: int = 16
  num_classes: int = 0
  spectral_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Energies of a batch.

    Args:
      x: images [B, H, W, C] in [-1, 1], H = W ≤ 32 with 32 - H even.

    Returns:
      E(x) [B] float32, or the per-class energies E(x, y) [B, K] when
      num_classes = K > 0.
    """
    act = ACTIVATIONS[self.activation]
    h_in = x.shape[1]
    if x.shape[2] != h_in or h_in > 32 or (32 - h_in) % 2:
      raise ValueError(f"CNNEnergy needs square images of side <= 32 with 32 - side even, "
                       f"got {x.shape[1:3]}")
    pad = 2 + (32 - h_in) // 2
    c = self.c_hid
    layers = ((c // 2, 5, pad), (c, 3, 1), (2 * c, 3, 1), (4 * c, 3, 1))
    h = x.astype(self.dtype)
    for i, (feats, k, p) in enumerate(layers):   # 16×16×c/2, 8×8×c, 4×4×2c, 2×2×4c
      out_side = (h.shape[1] + 2 * p - k) // 2 + 1
      impl = "matmul" if out_side * out_side <= self.matmul_positions else "conv"
      h = act(Conv(feats, (k, k), (2, 2), ((p, p), (p, p)), custom_grad=self.custom_grad,
                   impl=impl, spectral_norm=self.spectral_norm, dtype=self.dtype,
                   name=f"Conv_{i}")(h))
    h = h.reshape(h.shape[0], -1)
    if self.spectral_norm:   # same names and initialisers as nn.Dense: same parameters
      dense = lambda n, name: SNDense(n, spectral_norm=True, dtype=self.dtype, name=name)
    else:
      dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
    h = act(dense(4 * c, "Dense_0")(h))
    f = dense(max(self.num_classes, 1), "Dense_1")(h)
    f = f if self.num_classes else f[:, 0]
    return -f.astype(jnp.float32)


class EnergyResBlock(nn.Module):
  """Pre-activation residual block: x + conv(act(conv(act(x)))).

  The shortcut is a 1×1 convolution when the channel count changes. No
  normalisation layers: batch statistics would couple the chains of a batch
  and make E(x) depend on the other samples.
  """
  features: int
  activation: str = "swish"
  spectral_norm: bool = False
  custom_grad: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] -> [B, H, W, features]."""
    act = ACTIVATIONS[self.activation]
    conv = lambda k: Conv(self.features, (k, k), spectral_norm=self.spectral_norm,
                          custom_grad=self.custom_grad, dtype=self.dtype)
    h = conv(3)(act(x))
    h = conv(3)(act(h))
    shortcut = x if x.shape[-1] == self.features else conv(1)(x)
    return shortcut + h


class ResNetEnergy(nn.Module):
  """IGEBM-style ResNet energy (Du & Mordatch 2019) for 32×32 images.

  conv 3×3 (ch) → per stage s: `num_res_blocks` residual blocks of width
  ch·ch_mult[s], then 2×2 average pooling → act → mean over space → dense 1.
  With ch = 128, ch_mult = (1, 2, 2), num_res_blocks = 2 it is the layout of
  IGEBM's CIFAR-10 ResNet (32 → 16 → 8 → 4). Returns E(x) directly.

  Attributes:
    ch: base width.
    ch_mult: width multiplier per stage; each stage halves the resolution.
    num_res_blocks: residual blocks per stage.
    activation: name in `ACTIVATIONS` ("swish" or "leaky_relu").
    spectral_norm: spectral normalisation of every conv and dense kernel.
    custom_grad: convolutions with the CPU-friendly input gradient.
    num_classes: K > 0 makes the last layer K-wide and the output the K
      per-class energies E(x, y) [B, K] (JEM; see `energy_fn_of`); 0 = one
      scalar energy [B].
    dtype: compute dtype.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  activation: str = "swish"
  spectral_norm: bool = False
  custom_grad: bool = True
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Energies of a batch.

    Args:
      x: images [B, H, W, C] in [-1, 1].

    Returns:
      E(x) [B] float32, or the per-class energies E(x, y) [B, K] when
      num_classes = K > 0.
    """
    act = ACTIVATIONS[self.activation]
    h = Conv(self.ch, (3, 3), spectral_norm=self.spectral_norm, custom_grad=self.custom_grad,
             dtype=self.dtype)(x)
    for mult in self.ch_mult:
      for _ in range(self.num_res_blocks):
        h = EnergyResBlock(self.ch * mult, self.activation, self.spectral_norm,
                           self.custom_grad, self.dtype)(h)
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    # IGEBM sums over space; the mean keeps E's scale independent of the
    # resolution, so a fresh network's energies are O(1), not O(H·W).
    h = jnp.mean(act(h), axis=(1, 2))   # [B, C]
    e = SNDense(max(self.num_classes, 1), spectral_norm=self.spectral_norm, dtype=self.dtype)(h)
    e = e if self.num_classes else e[:, 0]
    return e.astype(jnp.float32)


# name -> network class; each takes only typed fields.
NETWORKS: dict[str, type[nn.Module]] = {
    "cnn_tutorial": CNNEnergy,
    "resnet_igebm": ResNetEnergy,
}


def make_network(name: str, **fields) -> nn.Module:
  """Instantiates the energy network registered as `name` with `fields`."""
  if name not in NETWORKS:
    raise KeyError(f"unknown energy network {name!r}; allowed: {sorted(NETWORKS)}")
  return NETWORKS[name](**fields)


def num_classes_of(network: nn.Module) -> int:
  """K of a class-conditional energy network (its per-class outputs), 0 if scalar."""
  k = int(getattr(network, "num_classes", 0))
  if k < 0:
    raise ValueError(f"num_classes must be >= 0, got {k}")
  return k


def marginal_energy(class_energies: jax.Array) -> jax.Array:
  """E(x) = -logsumexp_y(-E(x, y)) = -logsumexp_y f(x)[y] (JEM's p(x)).

  Args:
    class_energies: E(x, y) [B, K].

  Returns:
    [B] float32; exp(-E(x)) = Σ_y exp(-E(x, y)), so p(x) ∝ Σ_y p(x, y).
  """
  return -jax.nn.logsumexp(-class_energies.astype(jnp.float32), axis=-1)


def conditional_energy(class_energies: jax.Array, labels: jax.Array | int) -> jax.Array:
  """E(x, y) = -f(x)[y]: the energy of each image under its label.

  Args:
    class_energies: E(x, ·) [B, K].
    labels: int labels in [0, K), a scalar (one class for all) or [B].

  Returns:
    [B] float32.
  """
  labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), class_energies.shape[:1])
  picked = jnp.take_along_axis(class_energies, labels[:, None], axis=-1)[:, 0]
  return picked.astype(jnp.float32)


def class_logits(class_energies: jax.Array) -> jax.Array:
  """Classifier logits f(x) = -E(x, ·) [B, K]: p(y | x) = softmax_y f(x)[y]."""
  return -class_energies.astype(jnp.float32)


def energy_fn_of(network: nn.Module, params, label: jax.Array | int | None = None
                 ) -> Callable[[jax.Array], jax.Array]:
  """E(·) with `params` bound: images [B, H, W, C] -> energies [B].

  For a scalar network (num_classes = 0) this is the network itself and
  `label` must be None. For a class-conditional one (num_classes = K) it is
  the marginal E(x) = -logsumexp_y f(x)[y] when `label` is None, else the
  joint E(x, y) = -f(x)[y] with y = `label` (a scalar, or [B] aligned with
  the batch the function is called on).
  """
  k = num_classes_of(network)
  if not k:
    if label is not None:
      raise ValueError(f"label given for an unconditional energy network "
                       f"({type(network).__name__} has num_classes = 0)")
    return lambda x: network.apply({"params": params}, x)
  if label is None:
    return lambda x: marginal_energy(network.apply({"params": params}, x))
  if isinstance(label, int) and not 0 <= label < k:
    raise ValueError(f"label must be in [0, {k - 1}], got {label}")
  return lambda x: conditional_energy(network.apply({"params": params}, x), label)


def class_energies_fn_of(network: nn.Module, params) -> Callable[[jax.Array], jax.Array]:
  """E(·, ·) with `params` bound: images [B, H, W, C] -> [B, K] (K > 0 only)."""
  if not num_classes_of(network):
    raise ValueError(f"{type(network).__name__} has num_classes = 0: no per-class energies")
  return lambda x: network.apply({"params": params}, x)
