"""Class-conditional EBMs (JEM), the per-class buffer, inpainting and denoising.

Numerics are checked against float64 NumPy or closed forms: the marginal
energy against logsumexp, class-conditional Langevin against the components
of an analytic Gaussian mixture, inpainting against the Gaussian conditional
mean, the cross-entropy against optax, the unconditional step against an
inline transcription of the CD step.
"""
from __future__ import annotations

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ebm import buffer as replay
from ebm import cd
from ebm import langevin
from ebm import losses
from ebm import ood
from ebm.networks import (CNNEnergy, ResNetEnergy, class_energies_fn_of, class_logits,
                          energy_fn_of)


class GaussianClassEnergy(nn.Module):
  """E(x, y) = -log N(x; μ_y 1, σ² I): f(x)[y] is component y's log density.

  μ_y is a constant image of value means[y]; the parameter "shift" (0 at
  init) only exists so the module trains through `cd.train_step`.
  """
  means: tuple[float, ...] = (-0.5, 0.5)
  sigma: float = 0.2
  num_classes: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, ...] -> E(x, y) [B, K]."""
    shift = self.param("shift", nn.initializers.zeros_init(), ())
    x = x.reshape(x.shape[0], -1)
    mu = jnp.asarray(self.means, jnp.float32)
    d = x.shape[1]
    sq = jnp.sum(jnp.square(x[:, None, :] - mu[None, :, None]), axis=-1)   # [B, K]
    log_norm = 0.5 * d * jnp.log(2.0 * jnp.pi * self.sigma ** 2)
    return sq / (2.0 * self.sigma ** 2) + log_norm + shift


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


# -------------------------------------------------------------- networks


@pytest.mark.parametrize("network, shape", [
    (CNNEnergy(c_hid=8, num_classes=3), (5, 28, 28, 1)),
    (ResNetEnergy(ch=4, ch_mult=(1,), num_res_blocks=1, num_classes=3), (5, 8, 8, 3)),
])
def test_marginal_energy_is_minus_logsumexp_of_the_class_logits(network, shape):
  x = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
  params = network.init(jax.random.key(1), x[:1])["params"]
  e_class = class_energies_fn_of(network, params)(x)
  assert e_class.shape == (shape[0], 3) and e_class.dtype == jnp.float32
  f = -_np(e_class)   # logits, float64
  expected = -(np.log(np.sum(np.exp(f - f.max(1, keepdims=True)), axis=1)) + f.max(1))
  np.testing.assert_allclose(_np(energy_fn_of(network, params)(x)), expected,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(class_logits(e_class)), -np.asarray(e_class))
  y = np.array([0, 2, 1, 1, 0])
  np.testing.assert_array_equal(np.asarray(energy_fn_of(network, params, label=y)(x)),
                                np.asarray(e_class)[np.arange(5), y])
  np.testing.assert_array_equal(np.asarray(energy_fn_of(network, params, label=2)(x)),
                                np.asarray(e_class)[:, 2])
  with pytest.raises(ValueError, match="label must be in \\[0, 2\\], got 3"):
    energy_fn_of(network, params, label=3)
  # p(x) = Σ_y p(x, y): the marginal lies below every joint energy
  assert np.all(expected[:, None] <= -f + 1e-9)


def test_scalar_network_keeps_its_parameters_and_rejects_labels():
  x = jnp.zeros((2, 28, 28, 1))
  default = CNNEnergy(c_hid=8).init(jax.random.key(0), x)["params"]
  zero_k = CNNEnergy(c_hid=8, num_classes=0).init(jax.random.key(0), x)["params"]
  jax.tree.map(np.testing.assert_array_equal, default, zero_k)
  assert default["Dense_1"]["kernel"].shape == (32, 1)
  assert CNNEnergy(c_hid=8, num_classes=10).init(
      jax.random.key(0), x)["params"]["Dense_1"]["kernel"].shape == (32, 10)
  with pytest.raises(ValueError, match="label given for an unconditional"):
    energy_fn_of(CNNEnergy(c_hid=8), default, label=1)
  with pytest.raises(ValueError, match="no per-class energies"):
    class_energies_fn_of(CNNEnergy(c_hid=8), default)


def test_jem_cross_entropy_equals_optax_and_float64_numpy():
  k1, k2 = jax.random.split(jax.random.key(3))
  e_class = 3.0 * jax.random.normal(k1, (64, 10))
  y = jax.random.randint(k2, (64,), 0, 10)
  ce, accuracy = losses.jem_cross_entropy(e_class, y)
  expected = optax.softmax_cross_entropy_with_integer_labels(-e_class, y).mean()
  np.testing.assert_allclose(float(ce), float(expected), rtol=1e-6)
  f = -_np(e_class)
  log_p = f - f.max(1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
  np.testing.assert_allclose(float(ce), -log_p[np.arange(64), np.asarray(y)].mean(), rtol=1e-6)
  assert float(accuracy) == np.mean(np.argmax(f, 1) == np.asarray(y))


# -------------------------------------------------------------- per-class buffer


def test_draw_labelled_keeps_slot_labels_for_restarted_chains():
  buf = replay.init_buffer(jax.random.key(0), 30, (2, 2, 1))
  labels = replay.init_labels(30, 3)
  np.testing.assert_array_equal(np.asarray(labels), np.arange(30) % 3)
  for fraction in (0.0, 0.5, 1.0):
    x0, y, idx = replay.draw_labelled(buf, labels, jax.random.key(1), 12, fraction)
    x0_plain, idx_plain = replay.draw(buf, jax.random.key(1), 12, fraction)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x0_plain))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(idx_plain))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(labels)[np.asarray(idx)])
  new_buf, new_labels = replay.push_labelled(buf, labels, idx, x0 + 0.0, (y + 1) % 3)
  np.testing.assert_array_equal(np.asarray(new_labels)[np.asarray(idx)],
                                (np.asarray(y) + 1) % 3)
  untouched = np.setdiff1d(np.arange(30), np.asarray(idx))
  np.testing.assert_array_equal(np.asarray(new_labels)[untouched], np.arange(30)[untouched] % 3)
  with pytest.raises(ValueError, match="num_classes"):
    replay.init_labels(4, 0)


def test_slots_of_classes_returns_distinct_slots_of_the_requested_classes():
  labels = replay.init_labels(40, 4)   # 10 slots per class
  y = jnp.array([3, 0, 3, 3, 1, 0, 3, 2, 3, 3, 3, 3, 3, 3])   # ten 3s
  slots = np.asarray(replay.slots_of_classes(labels, jax.random.key(2), y))
  np.testing.assert_array_equal(np.asarray(labels)[slots], np.asarray(y))
  assert len(set(slots.tolist())) == len(slots)
  # more requests than slots of a class: still that class (wrapping around)
  slots = np.asarray(replay.slots_of_classes(labels, jax.random.key(2), jnp.full((15,), 2)))
  assert np.all(np.asarray(labels)[slots] == 2) and len(set(slots.tolist())) == 10


def _class_of(images: np.ndarray, means) -> np.ndarray:
  """Nearest constant image μ_y of each image [N, ...]."""
  m = images.reshape(images.shape[0], -1).mean(1)
  return np.argmin(np.abs(m[:, None] - np.asarray(means)[None, :]), axis=1)


def test_per_class_buffer_stays_aligned_through_steps_restarts_and_a_save_restore():
  means = (-0.6, 0.0, 0.6)
  net = GaussianClassEnergy(means=means, sigma=1.0, num_classes=3)
  tx = optax.sgd(0.0)   # fixed energy: each chain converges to its label's mean
  settings = cd.CDSettings(
      langevin=cd.LangevinSettings(num_steps=12, step_size=0.5, noise_scale=0.01,
                                   grad_clip=None),
      reinit_fraction=0.5, conditional_sampling=True, data_noise=0.0)
  batch = {"image": jnp.zeros((6, 2, 2, 1)), "label": jnp.zeros((6,), jnp.int32)}
  state = cd.init_state(jax.random.key(0), batch, network=net, tx=tx, buffer_size=24,
                        per_class_buffer=True)
  start = np.asarray(state.extras["buffer"])
  step = jax.jit(lambda s, b, k: cd.train_step(s, b, k, network=net, tx=tx,
                                               settings=settings))
  key = jax.random.key(1)
  for _ in range(3):
    state, _ = step(state, batch, key)

  def check(st):
    buf, labels = np.asarray(st.extras["buffer"]), np.asarray(st.extras["buffer_labels"])
    # restarts keep their slot's class: the labels never move and stay balanced
    np.testing.assert_array_equal(labels, np.arange(24) % 3)
    touched = np.any(buf != start, axis=(1, 2, 3))
    assert touched.sum() >= 6   # at least the first step's slots
    np.testing.assert_array_equal(_class_of(buf[touched], means), labels[touched])

  check(state)
  # Save/restore: the bytes of the state into a template from another key.
  template = cd.init_state(jax.random.key(9), batch, network=net, tx=tx, buffer_size=24,
                           per_class_buffer=True)
  restored = flax.serialization.from_bytes(template, flax.serialization.to_bytes(state))
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  a, _ = step(state, batch, key)
  b, _ = step(restored, batch, key)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  check(b)


def test_conditional_sampling_needs_a_per_class_buffer_and_a_conditional_network():
  net = GaussianClassEnergy()
  tx = optax.sgd(0.0)
  batch = {"image": jnp.zeros((2, 2, 2, 1))}
  state = cd.init_state(jax.random.key(0), batch, network=net, tx=tx, buffer_size=4)
  settings = cd.CDSettings(langevin=cd.LangevinSettings(num_steps=1),
                           conditional_sampling=True)
  with pytest.raises(ValueError, match="buffer_labels"):
    cd.train_step(state, batch, jax.random.key(1), network=net, tx=tx, settings=settings)
  with pytest.raises(ValueError, match="batch\\['label'\\]"):
    cd.train_step(state, batch, jax.random.key(1), network=net, tx=tx,
                  settings=cd.CDSettings(ce_weight=1.0))
  with pytest.raises(ValueError, match="class-conditional network"):
    cd.init_state(jax.random.key(0), {"image": jnp.zeros((2, 28, 28, 1))},
                  network=CNNEnergy(c_hid=4), tx=tx, buffer_size=4, per_class_buffer=True)


# -------------------------------------------------------------- sampling


def test_class_conditional_langevin_lands_in_the_requested_component():
  net = GaussianClassEnergy(means=(-0.5, 0.5), sigma=0.2)
  params = net.init(jax.random.key(0), jnp.zeros((1, 1, 1, 2)))["params"]
  # Exact Langevin (σ = sqrt(2α)) from U[-1, 1]² towards N(μ_y, 0.2² I).
  chain = cd.LangevinSettings(num_steps=200, step_size=0.004, noise_scale=float(np.sqrt(0.008)),
                              grad_clip=None, x_range=(-1.0, 1.0))
  y = jnp.arange(512, dtype=jnp.int32) % 2
  run = jax.jit(lambda key, labels: cd.sample(params, key, 512, network=net,
                                              image_shape=(1, 1, 2), langevin_settings=chain,
                                              labels=labels))
  x = np.asarray(run(jax.random.key(1), y)).reshape(512, 2)
  landed = _class_of(x, (-0.5, 0.5))
  assert np.mean(landed == np.asarray(y)) >= 0.95
  for c, mu in enumerate((-0.5, 0.5)):   # and they sample the component
    np.testing.assert_allclose(x[np.asarray(y) == c].mean(0), [mu, mu], atol=0.05)
    np.testing.assert_allclose(x[np.asarray(y) == c].std(0), [0.2, 0.2], rtol=0.2)
  # The marginal (labels None) covers both components.
  x_marginal = np.asarray(run(jax.random.key(1), None)).reshape(512, 2)
  share = np.mean(_class_of(x_marginal, (-0.5, 0.5)))
  assert 0.35 < share < 0.65


def test_sample_from_buffer_by_label_takes_entries_of_those_classes():
  net = GaussianClassEnergy(means=(-0.6, 0.0, 0.6), num_classes=3)
  tx = optax.sgd(0.0)
  batch = {"image": jnp.zeros((2, 2, 2, 1))}
  state = cd.init_state(jax.random.key(0), batch, network=net, tx=tx, buffer_size=12,
                        per_class_buffer=True)
  # Make each slot recognisable: slot i holds the constant image i.
  state = state.replace(extras=dict(state.extras, buffer=jnp.broadcast_to(
      jnp.arange(12.0)[:, None, None, None], (12, 2, 2, 1))))
  y = jnp.array([2, 2, 0, 1, 2])
  x = cd.sample_from_buffer(state, jax.random.key(1), 5, network=net,
                            langevin_settings=cd.LangevinSettings(num_steps=0), labels=y)
  slots = np.asarray(x)[:, 0, 0, 0].astype(int)
  np.testing.assert_array_equal(slots % 3, np.asarray(y))
  assert len(set(slots.tolist())) == 5


# -------------------------------------------------------------- training step


def _cnn_setup(num_classes):
  net = CNNEnergy(c_hid=4, num_classes=num_classes)
  tx = optax.adam(1e-3, b1=0.0)
  k1, k2 = jax.random.split(jax.random.key(5))
  batch = {"image": jax.random.uniform(k1, (4, 28, 28, 1), minval=-1, maxval=1),
           "label": jax.random.randint(k2, (4,), 0, max(num_classes, 1))}
  return net, tx, batch


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_unconditional_step_is_the_plain_cd_step():
  """K = 0: the step is, bit for bit, the tutorial's CD step written out here."""
  net, tx, batch = _cnn_setup(0)
  settings = cd.CDSettings(langevin=cd.LangevinSettings(num_steps=3))
  state = cd.init_state(jax.random.key(0), batch, network=net, tx=tx, buffer_size=8)
  assert set(state.extras) == {"buffer"}
  key = jax.random.key(7)
  new_state, metrics = jax.jit(lambda s, b, k: cd.train_step(
      s, b, k, network=net, tx=tx, settings=settings))(state, batch, key)

  def reference(state, batch, key):
    k_draw, k_chain, k_data = jax.random.split(jax.random.fold_in(key, state.step), 3)
    x0, idx = replay.draw(state.extras["buffer"], k_draw, 4, settings.reinit_fraction)
    e = lambda x: net.apply({"params": state.params}, x)
    lv = settings.langevin
    x_neg = jax.lax.stop_gradient(langevin.langevin_chain(
        e, x0, k_chain, lv.num_steps, lv.step_size, lv.noise_scale, lv.grad_clip,
        lv.x_range).x)
    x_pos = jnp.clip(batch["image"] + settings.data_noise * jax.random.normal(
        k_data, batch["image"].shape), -1.0, 1.0)

    def loss_fn(p):
      en = net.apply({"params": p}, jnp.concatenate([x_pos, x_neg]))
      return losses.cd_loss(en[:4], en[4:], settings.reg_alpha)

    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, tx, settings.ema_decay, settings.ema_warmup,
                                 extras={"buffer": replay.push(state.extras["buffer"],
                                                               idx, x_neg)}), loss

  ref_state, ref_loss = jax.jit(reference)(state, batch, key)
  jax.tree.map(np.testing.assert_array_equal, new_state, ref_state)
  assert float(metrics["loss"]) == float(ref_loss)
  assert "ce" not in metrics and "accuracy" not in metrics


def test_conditional_step_adds_the_cross_entropy_of_the_data():
  net, tx, batch = _cnn_setup(10)
  settings = cd.CDSettings(langevin=cd.LangevinSettings(num_steps=2), data_noise=0.0,
                           ce_weight=0.5)
  state = cd.init_state(jax.random.key(0), batch, network=net, tx=tx, buffer_size=8)
  new_state, m = jax.jit(lambda s, b, k: cd.train_step(
      s, b, k, network=net, tx=tx, settings=settings))(state, batch, jax.random.key(1))
  e_class = net.apply({"params": state.params}, batch["image"])
  expected_ce = optax.softmax_cross_entropy_with_integer_labels(-e_class, batch["label"]).mean()
  np.testing.assert_allclose(float(m["ce"]), float(expected_ce), rtol=1e-5)
  np.testing.assert_allclose(float(m["loss"]), float(m["cd"] + m["reg"] + 0.5 * m["ce"]),
                             rtol=1e-5)
  np.testing.assert_allclose(float(m["energy_pos"]),
                             float(jnp.mean(energy_fn_of(net, state.params)(batch["image"]))),
                             rtol=1e-5)
  assert all(np.isfinite(float(v)) for v in m.values())
  assert int(new_state.step) == 1


# -------------------------------------------------------------- inpainting, denoising


def test_box_mask_and_inpainting_keep_known_pixels_exactly():
  mask = ood.box_mask((6, 5, 1), 1, 2, 3, 2)
  expected = np.ones((6, 5, 1), bool)
  expected[1:4, 2:4] = False
  np.testing.assert_array_equal(np.asarray(mask), expected)
  with pytest.raises(ValueError, match="inside the 6x5 image"):
    ood.box_mask((6, 5), 4, 0, 3, 1)
  x = jax.random.uniform(jax.random.key(0), (3, 6, 5, 1), minval=-1, maxval=1)
  energy = lambda z: jnp.sum(jnp.square(z), axis=(1, 2, 3))
  out, traj = ood.inpaint(energy, x, mask, jax.random.key(1), 10, 0.1, 0.1,
                          capture_every=5)
  for state in [out, *traj]:
    np.testing.assert_array_equal(np.asarray(state)[:, expected], np.asarray(x)[:, expected])
  assert not np.array_equal(np.asarray(out)[:, ~expected], np.asarray(x)[:, ~expected])


def _gaussian(seed):
  """μ [4] and a precision Λ [4, 4] (float64) with λ in [40, 120]."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  lam = q @ np.diag([40.0, 60.0, 90.0, 120.0]) @ q.T
  return rng.uniform(-0.3, 0.3, 4), lam


def test_inpainting_a_gaussian_moves_masked_pixels_to_the_conditional_mean():
  mu, lam = _gaussian(0)
  energy = lambda z: 0.5 * jnp.einsum("bi,ij,bj->b", z.reshape(z.shape[0], 4) - mu, lam,
                                      z.reshape(z.shape[0], 4) - mu)
  known = np.array([True, False, False, True])
  rng = np.random.default_rng(1)
  x_true = rng.uniform(-0.5, 0.5, (8, 4))
  u, k = ~known, known
  # x_u | x_k ~ N(μ_u - Λ_uu⁻¹ Λ_uk (x_k - μ_k), Λ_uu⁻¹)
  cond_mean = mu[u] - np.linalg.solve(lam[np.ix_(u, u)],
                                      lam[np.ix_(u, k)] @ (x_true[:, k] - mu[k]).T).T
  mask = jnp.asarray(known.reshape(2, 2, 1))
  x_img = jnp.asarray(x_true.reshape(8, 2, 2, 1), jnp.float32)
  # Noise-free: gradient descent on the masked pixels converges to the mode = mean.
  run = jax.jit(lambda x, key: ood.inpaint(energy, x, mask, key, 300, 0.01, 0.0))
  out = np.asarray(run(x_img, jax.random.key(2))).reshape(8, 4)
  np.testing.assert_array_equal(out[:, k], np.asarray(x_img).reshape(8, 4)[:, k])
  np.testing.assert_allclose(out[:, u], cond_mean, atol=1e-4)
  # Exact Langevin (σ = sqrt(2α)): many chains average to the conditional mean.
  many = jnp.repeat(x_img[:1], 2048, axis=0)
  run = jax.jit(lambda x, key: ood.inpaint(energy, x, mask, key, 300, 0.002, float(np.sqrt(0.004))))
  out = np.asarray(run(many, jax.random.key(3))).reshape(2048, 4)
  np.testing.assert_allclose(out[:, u].mean(0), cond_mean[0], atol=0.01)
  # ULA's stationary covariance: Λ_uu⁻¹ (I - αΛ_uu/2)⁻¹ (→ Λ_uu⁻¹ as α → 0)
  lam_uu = lam[np.ix_(u, u)]
  cond_cov = np.linalg.inv(lam_uu @ (np.eye(2) - 0.001 * lam_uu))
  np.testing.assert_allclose(np.cov(out[:, u].T), cond_cov, atol=0.1 * cond_cov.max())


def test_denoising_an_analytic_subspace_energy_reduces_the_error():
  """E(x) = |(I - P) x|² / 2s²: data on a 3-D subspace of 16 pixels."""
  rng = np.random.default_rng(4)
  basis, _ = np.linalg.qr(rng.normal(size=(16, 3)))
  off = np.eye(16) - basis @ basis.T
  s2 = 0.01
  energy = lambda z: 0.5 * jnp.sum(jnp.square(z.reshape(z.shape[0], 16) @ off), axis=1) / s2
  clean = (rng.uniform(-0.4, 0.4, (32, 3)) @ basis.T).reshape(32, 4, 4, 1)
  noisy = ood.gaussian_noised_set(jax.random.key(5), jnp.asarray(clean, jnp.float32), 0.2)
  restored = jax.jit(lambda x, key: ood.denoise(energy, x, key, 5, 0.5 * s2))(
      noisy, jax.random.key(6))
  errors = ood.restoration_errors(restored, noisy, jnp.asarray(clean, jnp.float32))
  mse_noisy = np.mean((_np(noisy) - clean) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(float(errors["mse_corrupted"]), mse_noisy.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(errors["psnr_corrupted"]),
                             np.mean(10 * np.log10(4.0 / mse_noisy)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ood.mse(restored, clean)),
                             np.mean((_np(restored) - clean) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  # Each step halves the off-subspace part; 13/16 of the noise lies there.
  assert float(errors["mse"]) < 0.35 * float(errors["mse_corrupted"])
  assert float(errors["psnr"]) > float(errors["psnr_corrupted"]) + 4.0


def test_restoration_errors_with_a_mask_count_only_the_unknown_pixels():
  x = jnp.zeros((2, 4, 4, 1))
  mask = ood.box_mask((4, 4), 0, 0, 2, 2)   # 4 unknown pixels
  corrupted = x.at[:, :2, :2].set(1.0)
  restored = x.at[:, :2, :2].set(0.5)
  errors = ood.restoration_errors(restored, corrupted, x, mask)
  np.testing.assert_allclose(float(errors["mse"]), 0.25)
  np.testing.assert_allclose(float(errors["mse_corrupted"]), 1.0)
  np.testing.assert_allclose(float(errors["psnr"]), 10 * np.log10(4 / 0.25), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ood.psnr(restored, x)),
                             10 * np.log10(4 / (0.25 / 4)) * np.ones(2), rtol=1e-6)
