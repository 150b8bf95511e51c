"""IGEBM / Improved CD options of the EBM: annealed Langevin, ICD's KL and
entropy terms, augmented buffer restarts, more chains than data, spectral
normalisation with the JEM head, and their config keys.

Numerics are checked against float64 references: the annealed chain against
a NumPy recurrence with the chain's own noise, the KL term's parameter
gradient against its hand-derived value and central finite differences on a
quadratic energy, the entropy term against a NumPy nearest-neighbour
computation, the augmentation against a NumPy shift/flip, spectral norms
against an SVD.
"""
from __future__ import annotations

import os
import pathlib
import shlex
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import ebm_fashion_mnist
from ebm import buffer as replay
from ebm import cd
from ebm import langevin
from ebm import losses
from ebm import networks
from launch import config as config_lib
from launch import tasks
from launch.config_errors import ConfigError
from helpers import config_error_of

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


# ------------------------------------------------------------- annealing


def test_annealed_values_closed_forms_and_errors():
  np.testing.assert_allclose(langevin.annealed_values(10.0, 0.1, 5, "linear"),
                             [10.0, 7.75, 5.5, 3.25, 1.0], rtol=1e-15)
  np.testing.assert_allclose(langevin.annealed_values(10.0, 0.01, 3, "geometric"),
                             [10.0, 1.0, 0.1], rtol=1e-14)
  np.testing.assert_allclose(langevin.annealed_values(0.5, 0.0, 3, "linear"), [0.5, 0.25, 0.0])
  np.testing.assert_array_equal(langevin.annealed_values(2.0, 1.0, 4, "constant"), [2.0] * 4)
  np.testing.assert_array_equal(langevin.annealed_values(2.0, 0.3, 1, "geometric"), [2.0])
  assert langevin.annealed_values(2.0, 0.3, 0, "linear").shape == (0,)
  with pytest.raises(ValueError, match="cosine"):
    langevin.annealed_values(1.0, 0.5, 3, "cosine")
  with pytest.raises(ValueError, match="geometric"):
    langevin.annealed_values(1.0, 0.0, 3, "geometric")
  with pytest.raises(ValueError, match="constant"):
    langevin.annealed_values(1.0, 0.5, 3, "constant")


def _quadratic(a):
  """E(x) = ½ Σ_d a_d x_d² per chain: [B, D] -> [B]."""
  return lambda x: 0.5 * jnp.sum(a * jnp.square(x), axis=-1)


@pytest.mark.parametrize("schedule,noise_first", [
    ("linear", False), ("geometric", False), ("geometric", True)])
def test_annealed_chain_matches_a_float64_numpy_recurrence(schedule, noise_first):
  # ∇E = a ⊙ x; with no clipping the chain is the recurrence
  #   x_{k+1} = x_k - α_k a x_k + σ_k z_k            (default order)
  #   x_{k+1} = (x_k + σ_k z_k) - α_k a (x_k + σ_k z_k)   (noise first)
  # with z_k the chain's own noise (`_standard_normal` of split(key, K)[k]).
  k_steps, alpha, sigma = 7, 0.3, 0.2
  with jax.enable_x64(True):
    a = jnp.asarray([0.5, 1.0, 2.0], jnp.float64)
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)) * 2.0, jnp.float64)
    key = jax.random.key(3)
    result = langevin.langevin_chain(
        _quadratic(a), x0, key, k_steps, alpha, sigma, None, None, noise_first=noise_first,
        anneal=schedule, step_size_final_factor=0.2, noise_final_factor=0.05,
        capture_every=3)
    keys = jax.random.split(key, k_steps)
    zs = [_np(langevin._standard_normal(keys[k], (4, 3), jnp.float64)) for k in range(k_steps)]
    assert result.x.dtype == jnp.float64
  t = np.arange(k_steps) / (k_steps - 1)
  if schedule == "linear":
    alphas, sigmas = alpha * (1 - 0.8 * t), sigma * (1 - 0.95 * t)
  else:
    alphas, sigmas = alpha * 0.2 ** t, sigma * 0.05 ** t
  x, states = _np(x0), [_np(x0)]
  a_np = _np(a)
  for k in range(k_steps):
    if noise_first:
      x = x + sigmas[k] * zs[k]
      x = x - alphas[k] * a_np * x
    else:
      x = x - alphas[k] * a_np * x + sigmas[k] * zs[k]
    states.append(x)
  np.testing.assert_allclose(_np(result.x), x, rtol=1e-12, atol=1e-12)
  # capture: start, after steps 3 and 6 (the remainder step 7 runs uncaptured)
  np.testing.assert_allclose(_np(result.trajectory), np.stack(states[0:7:3]), rtol=1e-12,
                             atol=1e-12)


def test_constant_schedule_is_the_plain_chain_and_anneal_changes_it():
  x0 = jax.random.normal(jax.random.key(0), (6, 5))
  plain = langevin.langevin_chain(_quadratic(1.0), x0, jax.random.key(1), 9, 0.2, 0.3)
  const = langevin.langevin_chain(_quadratic(1.0), x0, jax.random.key(1), 9, 0.2, 0.3,
                                  anneal="constant")
  np.testing.assert_array_equal(plain.x, const.x)
  # a linear schedule with factors 1 is the same chain, up to float rounding
  flat = langevin.langevin_chain(_quadratic(1.0), x0, jax.random.key(1), 9, 0.2, 0.3,
                                 anneal="linear")
  np.testing.assert_allclose(flat.x, plain.x, rtol=1e-6, atol=1e-6)
  cooled = langevin.langevin_chain(_quadratic(1.0), x0, jax.random.key(1), 9, 0.2, 0.3,
                                   anneal="linear", noise_final_factor=0.0)
  assert not np.allclose(cooled.x, plain.x, atol=1e-3)


# ----------------------------------------------- the last step, the KL term


@pytest.mark.parametrize("anneal,noise_first", [("constant", False), ("geometric", True)])
def test_last_step_is_returned_and_recomputes_the_chain_output(anneal, noise_first):
  # On the tutorial CNN with the default clips active: the differentiable
  # recomputation of the last update lands exactly where the chain did.
  net = networks.CNNEnergy(c_hid=4)
  x0 = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1, maxval=1)
  params = net.init(jax.random.key(1), x0)["params"]
  energy = networks.energy_fn_of(net, params)
  factors = {} if anneal == "constant" else {"step_size_final_factor": 0.25,
                                              "noise_final_factor": 0.5}
  chain = cd.LangevinSettings(num_steps=4, step_size=10.0, noise_scale=0.005,
                              noise_first=noise_first, anneal=anneal, **factors)
  plain = chain.run(energy, x0, jax.random.key(2))
  full = chain.run(energy, x0, jax.random.key(2), return_last_step=True)
  np.testing.assert_allclose(full.x, plain.x, rtol=0, atol=1e-6)
  np.testing.assert_allclose(full.grad_norm, plain.grad_norm, rtol=1e-5)
  # x_{K-1} is the 3-step chain's output (same keys for the first 3 steps)
  three = langevin.langevin_chain(energy, x0, jax.random.key(2), 4, 10.0, 0.005, 0.03,
                                  noise_first=noise_first, capture_every=3, anneal=anneal,
                                  **factors).trajectory[1]
  np.testing.assert_allclose(full.x_last_input, three, rtol=0, atol=1e-6)
  np.testing.assert_allclose(chain.last_step(energy, full.x_last_input, full.z_last), full.x,
                             rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match="return_last_step"):
    langevin.langevin_chain(energy, x0, jax.random.key(2), 0, 1.0, 0.0, return_last_step=True)


def _quadratic_params_energy(theta):
  """E_θ(x) = ½ Σ_d a_d (x_d - μ_d)², θ = {"a": [D], "mu": [D]}: [B, D] -> [B]."""
  return lambda x: 0.5 * jnp.sum(theta["a"] * jnp.square(x - theta["mu"]), axis=-1)


@pytest.mark.parametrize("noise_first", [False, True])
def test_kl_gradient_equals_hand_derivation_and_finite_differences(noise_first):
  # x_K(θ) = x̃ - α a ⊙ (x̃ - μ) with x̃ = x + σz (noise first) or x̃ = x and
  # +σz after; L = mean_b ½ Σ a0 (x_K - μ0)² with θ0 = (a0, μ0) frozen:
  #   ∂L/∂a = mean_b a0 (x_K - μ0) ⊙ (-α (x̃ - μ)),  ∂L/∂μ = mean_b a0 (x_K - μ0) ⊙ (α a).
  rng = np.random.default_rng(1)
  a0, mu0 = rng.uniform(0.5, 2.0, 4), rng.normal(size=4) * 0.3
  x, z = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
  alpha, sigma = 0.3, 0.1
  chain = cd.LangevinSettings(num_steps=3, step_size=alpha, noise_scale=sigma, grad_clip=None,
                              x_range=None, noise_first=noise_first)
  with jax.enable_x64(True):
    theta = {"a": jnp.asarray(a0), "mu": jnp.asarray(mu0)}
    x_j, z_j = jnp.asarray(x), jnp.asarray(z)

    def kl(th):
      return losses.kl_last_step(_quadratic_params_energy, th, x_j,
                                 lambda e, v: chain.last_step(e, v, z_j))[0]

    grad = jax.grad(kl)(theta)
    value, x_final = losses.kl_last_step(_quadratic_params_energy, theta, x_j,
                                         lambda e, v: chain.last_step(e, v, z_j))

    # the objective with the energy's parameters frozen at θ0 (finite differences)
    def frozen_objective(a, mu):
      x_k = chain.last_step(_quadratic_params_energy({"a": a, "mu": mu}), x_j, z_j)
      return float(jnp.mean(_quadratic_params_energy(theta)(x_k)))

    eps = 1e-6
    fd = {"a": np.zeros(4), "mu": np.zeros(4)}
    for d in range(4):
      e = np.eye(4)[d] * eps
      fd["a"][d] = (frozen_objective(jnp.asarray(a0 + e), jnp.asarray(mu0))
                    - frozen_objective(jnp.asarray(a0 - e), jnp.asarray(mu0))) / (2 * eps)
      fd["mu"][d] = (frozen_objective(jnp.asarray(a0), jnp.asarray(mu0 + e))
                     - frozen_objective(jnp.asarray(a0), jnp.asarray(mu0 - e))) / (2 * eps)
  x_tilde = x + sigma * z if noise_first else x
  x_k = x_tilde - alpha * a0 * (x_tilde - mu0) + (0.0 if noise_first else sigma * z)
  r = a0 * (x_k - mu0)
  want_a = np.mean(r * (-alpha * (x_tilde - mu0)), axis=0)
  want_mu = np.mean(r * (alpha * a0), axis=0)
  np.testing.assert_allclose(_np(x_final), x_k, rtol=1e-13)
  np.testing.assert_allclose(float(value), np.mean(0.5 * np.sum(a0 * (x_k - mu0) ** 2, -1)),
                             rtol=1e-13)
  np.testing.assert_allclose(_np(grad["a"]), want_a, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(_np(grad["mu"]), want_mu, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(_np(grad["a"]), fd["a"], rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(_np(grad["mu"]), fd["mu"], rtol=1e-6, atol=1e-9)


def test_kl_gradient_uses_the_last_steps_annealed_step_size_and_is_zero_where_clipped():
  rng = np.random.default_rng(2)
  a0, mu0 = rng.uniform(0.5, 2.0, 3), rng.normal(size=3)
  x, z = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  with jax.enable_x64(True):
    theta = {"a": jnp.asarray(a0), "mu": jnp.asarray(mu0)}

    def grad_for(chain):
      return jax.grad(lambda th: losses.kl_last_step(
          _quadratic_params_energy, th, jnp.asarray(x),
          lambda e, v: chain.last_step(e, v, jnp.asarray(z)))[0])(theta)

    annealed = cd.LangevinSettings(num_steps=5, step_size=0.4, noise_scale=0.1, grad_clip=None,
                                   x_range=None, anneal="geometric",
                                   step_size_final_factor=0.25, noise_final_factor=0.5)
    g = grad_for(annealed)
    clipped = grad_for(cd.LangevinSettings(num_steps=5, step_size=0.4, noise_scale=0.1,
                                           grad_clip=1e-6, x_range=None))
  alpha, sigma = 0.4 * 0.25, 0.1 * 0.5          # step K-1 of the geometric schedule
  x_k = x - alpha * a0 * (x - mu0) + sigma * z
  np.testing.assert_allclose(_np(g["mu"]), np.mean(a0 * (x_k - mu0) * alpha * a0, axis=0),
                             rtol=1e-12)
  # every gradient entry clipped: the update no longer depends on θ
  np.testing.assert_array_equal(_np(clipped["a"]), 0.0)
  np.testing.assert_array_equal(_np(clipped["mu"]), 0.0)


def test_nearest_neighbour_entropy_against_float64_numpy():
  rng = np.random.default_rng(3)
  x, ref = rng.normal(size=(6, 2, 3)), rng.normal(size=(5, 2, 3))
  exclude = np.zeros((6, 5), bool)
  exclude[0, 1] = exclude[2, 4] = True
  d = np.sqrt(((x.reshape(6, 1, -1) - ref.reshape(1, 5, -1)) ** 2).sum(-1))
  d[exclude] = np.inf
  want = np.mean(np.log(d.min(1)))
  got = losses.nearest_neighbour_entropy(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(ref, jnp.float32), jnp.asarray(exclude),
                                         eps=0.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # d/dx_b of log ρ_b = (x_b - r*) / (B ρ_b²), r* the nearest reference
  grad = jax.grad(lambda v: losses.nearest_neighbour_entropy(
      v, jnp.asarray(ref, jnp.float32), jnp.asarray(exclude), eps=0.0))(
          jnp.asarray(x, jnp.float32))
  nearest = ref.reshape(5, -1)[np.argmin(d, 1)]
  rho = d.min(1)
  want_grad = (x.reshape(6, -1) - nearest) / (6 * rho[:, None] ** 2)
  np.testing.assert_allclose(_np(grad).reshape(6, -1), want_grad, rtol=1e-3, atol=1e-5)
  # a sample on top of a reference: finite value and gradient (eps)
  same = losses.nearest_neighbour_entropy(jnp.asarray(ref[:2]), jnp.asarray(ref))
  assert np.isfinite(float(same))
  assert np.all(np.isfinite(jax.grad(
      lambda v: losses.nearest_neighbour_entropy(v, jnp.asarray(ref)))(jnp.asarray(ref[:2]))))


# ------------------------------------------------------------ augmentation


def _np_transform(x, flip, shift, s, fill):
  out = np.full_like(x, fill)
  b, h, w, _ = x.shape
  for i in range(b):
    img = x[i, :, ::-1] if flip[i] else x[i]
    dy, dx = shift[i]
    for r in range(h):
      for c in range(w):
        if 0 <= r - dy < h and 0 <= c - dx < w:
          out[i, r, c] = img[r - dy, c - dx]
  return out


def test_transform_images_against_numpy_shift_and_flip():
  rng = np.random.default_rng(4)
  x = rng.uniform(-1, 1, (5, 6, 7, 2))
  flip = np.array([False, True, False, True, True])
  shift = np.array([[0, 0], [2, -1], [-2, 2], [1, 0], [-1, -2]])
  noise = rng.normal(size=x.shape) * 0.3
  got = replay.transform_images(jnp.asarray(x, jnp.float32), jnp.asarray(flip),
                                jnp.asarray(shift), jnp.asarray(noise, jnp.float32), 2, -1.0)
  want = np.clip(_np_transform(x, flip, shift, 2, -1.0) + noise, -1, 1)
  np.testing.assert_allclose(_np(got), want, rtol=1e-6, atol=1e-6)


def test_augment_draws_every_shift_flips_half_and_off_is_identity():
  x = jax.random.uniform(jax.random.key(0), (400, 8, 8, 1), minval=-0.5, maxval=0.5)
  off = replay.augment(x, jax.random.key(1), replay.Augmentation())
  np.testing.assert_array_equal(off, x)
  # an image whose single bright pixel reveals the transformation
  # (9 × 11: a flip moves column 2 to 8, so flipped and unflipped columns,
  # each shifted by up to 2, never coincide)
  probe = jnp.full((2000, 9, 11, 1), -1.0).at[:, 4, 2, 0].set(1.0)
  out = np.asarray(replay.augment(probe, jax.random.key(2),
                                  replay.Augmentation(max_shift=2, flip=True)))
  rows, cols = np.nonzero(out[..., 0] > 0)[1:]
  assert len(rows) == 2000                         # the pixel is never shifted out
  dy = rows - 4
  dx_unflipped, dx_flipped = cols - 2, cols - 8
  assert set(dy) == {-2, -1, 0, 1, 2}
  flipped = cols >= 5
  assert 0.45 < flipped.mean() < 0.55
  assert set(dx_flipped[flipped]) == set(dx_unflipped[~flipped]) == {-2, -1, 0, 1, 2}
  noisy = np.asarray(replay.augment(x, jax.random.key(3), replay.Augmentation(noise_std=0.05)))
  np.testing.assert_allclose(np.std(noisy - np.asarray(x)), 0.05, rtol=0.02)


def test_draw_with_augmentation_keeps_slots_restarts_and_transforms_only_continued_chains():
  buf = replay.init_buffer(jax.random.key(0), 64, (6, 6, 1))
  aug = replay.Augmentation(max_shift=1, flip=True, noise_std=0.01)
  plain, idx_plain = replay.draw(buf, jax.random.key(5), 32, 0.5)
  x0, idx = replay.draw(buf, jax.random.key(5), 32, 0.5, aug)
  np.testing.assert_array_equal(idx, idx_plain)
  restarted = ~np.all(np.asarray(plain) == np.asarray(buf)[np.asarray(idx)], axis=(1, 2, 3))
  assert 0 < restarted.sum() < 32
  np.testing.assert_array_equal(np.asarray(x0)[restarted], np.asarray(plain)[restarted])
  assert not np.any(np.all(np.asarray(x0)[~restarted] == np.asarray(plain)[~restarted],
                           axis=(1, 2, 3)))
  # the labelled draw is the same draw
  labels = replay.init_labels(64, 4)
  x0_l, y, idx_l = replay.draw_labelled(buf, labels, jax.random.key(5), 32, 0.5, aug)
  np.testing.assert_array_equal(x0_l, x0)
  np.testing.assert_array_equal(y, np.asarray(labels)[np.asarray(idx)])
  with pytest.raises(ValueError, match="65 distinct chains"):
    replay.draw(buf, jax.random.key(5), 65, 0.0)


# ------------------------------------------------- the CD step with options


class TinyEnergy(nn.Module):
  """A dense energy on small images, fast to compile: [B, H, W, C] -> E [B] or E(x, y) [B, K]."""
  num_classes: int = 0

  @nn.compact
  def __call__(self, x):
    h = networks.swish(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    f = nn.Dense(max(self.num_classes, 1))(h)
    return -(f if self.num_classes else f[:, 0])


def _state(network, batch_size, buffer_size, side=28, per_class=False):
  tx = optax.adam(1e-4, b1=0.0)
  batch = {"image": jax.random.uniform(jax.random.key(0), (batch_size, side, side, 1),
                                       minval=-1, maxval=1),
           "label": jnp.arange(batch_size, dtype=jnp.int32) % 3}
  state = cd.init_state(jax.random.key(1), batch, network=network, tx=tx,
                        buffer_size=buffer_size, per_class_buffer=per_class)
  return tx, batch, state


def _step(network, tx, settings):
  return jax.jit(lambda s, b, k: cd.train_step(s, b, k, network=network, tx=tx,
                                               settings=settings))


def test_every_option_at_once_trains_the_tutorial_cnn():
  # The real network: second-order gradients through its custom-gradient
  # convolutions, 12 chains for 4 data images, augmented annealed chains.
  network = networks.CNNEnergy(c_hid=4, spectral_norm=True)
  tx, batch, state = _state(network, 4, 40)
  settings = cd.CDSettings(
      langevin=cd.LangevinSettings(num_steps=3, anneal="linear", noise_final_factor=0.0),
      num_chains=12, augmentation=replay.Augmentation(max_shift=2, noise_std=0.01),
      kl_weight=1.0, entropy_weight=0.3, entropy_reference=16, kl_chains=5)
  new_state, metrics = _step(network, tx, settings)(state, batch, jax.random.key(2))
  assert {"kl", "entropy_nn", "loss", "cd"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(new_state.params))
  changed = np.any(np.asarray(new_state.extras["buffer"]) != np.asarray(state.extras["buffer"]),
                   axis=(1, 2, 3))
  assert changed.sum() == 12                       # num_chains slots written back


def test_kl_and_entropy_terms_add_to_the_loss_and_change_the_gradient():
  network = TinyEnergy()
  tx, batch, state = _state(network, 4, 40, side=6)
  chain = cd.LangevinSettings(num_steps=3, step_size=1.0, noise_scale=0.01)
  settings = cd.CDSettings(langevin=chain, num_chains=12, kl_weight=1.0, entropy_weight=0.3,
                           entropy_reference=16, kl_chains=5)
  _, metrics = _step(network, tx, settings)(state, batch, jax.random.key(2))
  # loss = cd + reg + kl_weight·kl - entropy_weight·entropy
  np.testing.assert_allclose(
      float(metrics["loss"]),
      float(metrics["cd"] + metrics["reg"] + metrics["kl"] - 0.3 * metrics["entropy_nn"]),
      rtol=1e-5, atol=1e-6)
  # the same chains without the terms: same samples, another parameter gradient
  _, m_plain = _step(network, tx, cd.CDSettings(langevin=chain, num_chains=12))(
      state, batch, jax.random.key(2))
  np.testing.assert_allclose(float(m_plain["energy_neg"]), float(metrics["energy_neg"]),
                             rtol=1e-5)
  assert "kl" not in m_plain
  assert abs(float(m_plain["grad_norm"]) - float(metrics["grad_norm"])) > 1e-6


def test_kl_with_conditional_sampling_uses_the_chains_labels():
  network = TinyEnergy(num_classes=3)
  tx, batch, state = _state(network, 4, 12, side=6, per_class=True)
  settings = cd.CDSettings(langevin=cd.LangevinSettings(num_steps=2), conditional_sampling=True,
                           num_chains=6, kl_weight=1.0, kl_chains=4, ce_weight=1.0,
                           augmentation=replay.Augmentation(max_shift=1))
  new_state, metrics = _step(network, tx, settings)(state, batch, jax.random.key(3))
  assert {"kl", "ce", "accuracy"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  np.testing.assert_array_equal(new_state.extras["buffer_labels"], state.extras["buffer_labels"])


def test_step_settings_errors_name_the_problem():
  network = TinyEnergy()
  tx, batch, state = _state(network, 4, 8, side=6)
  for settings, match in [(cd.CDSettings(num_chains=9), "num_chains = 9"),
                          (cd.CDSettings(entropy_weight=0.3, entropy_reference=9),
                           "entropy_reference = 9")]:
    with pytest.raises(ValueError, match=match):
      cd.train_step(state, batch, jax.random.key(0), network=network, tx=tx, settings=settings)


# ------------------------------------------------------ spectral norm, JEM


@pytest.mark.parametrize("network", [
    networks.CNNEnergy(c_hid=4, num_classes=10, spectral_norm=True),
    networks.ResNetEnergy(ch=4, ch_mult=(1,), num_res_blocks=1, num_classes=10,
                          spectral_norm=True)])
@pytest.mark.slow
def test_spectral_norm_works_with_the_jem_head(network):
  side = 28 if isinstance(network, networks.CNNEnergy) else 8
  x = jax.random.uniform(jax.random.key(0), (3, side, side, 1), minval=-1, maxval=1)
  params = network.init(jax.random.key(1), x)["params"]
  plain = network.clone(spectral_norm=False)
  # the same parameter tree as without spectral normalisation
  assert (jax.tree.structure(params)
          == jax.tree.structure(plain.init(jax.random.key(1), x)["params"]))
  e = network.apply({"params": params}, x)
  assert e.shape == (3, 10) and np.all(np.isfinite(np.asarray(e)))
  assert not np.allclose(e, plain.apply({"params": params}, x))
  # every kernel, the K-wide head included, is divided by its σ_max
  for path, kernel in jax.tree_util.tree_leaves_with_path(params):
    if "kernel" not in jax.tree_util.keystr(path):
      continue
    normed = networks.spectral_normalize(kernel, 5)
    s = np.linalg.svd(np.asarray(normed, np.float64).reshape(-1, kernel.shape[-1]),
                      compute_uv=False)
    assert 1.0 - 1e-5 <= s[0] < 1.25, (jax.tree_util.keystr(path), s[0])
  # the marginal energy trains: finite gradients through logsumexp and the norms
  grads = jax.grad(lambda p: jnp.mean(networks.energy_fn_of(network, p)(x)))(params)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


# ------------------------------------------------------------ config keys


def test_default_config_leaves_every_option_off():
  task = tasks.build(ebm_fashion_mnist.get_config())
  s = task.settings
  assert (s.num_chains, s.kl_weight, s.entropy_weight, s.augmentation.enabled) == (0, 0, 0, False)
  assert s.langevin.anneal == task.sample_langevin.anneal == "constant"
  assert s.chains(128) == 128 and not task.network.spectral_norm


def test_options_reach_the_settings():
  config = ebm_fashion_mnist.get_config("smoke")
  e = config.ebm
  e.num_chains, e.anneal, e.step_size_final_factor, e.noise_final_factor = 16, "geometric", 0.1, 0.5
  e.augment_shift, e.augment_flip, e.augment_noise = 2, True, 0.01
  e.kl_weight, e.entropy_weight, e.entropy_reference, e.kl_chains = 1.0, 0.3, 20, 8
  config.model.spectral_norm = True
  task = tasks.build(config)
  s = task.settings
  assert s.langevin.anneal == task.sample_langevin.anneal == "geometric"
  assert (s.langevin.step_size_final_factor, s.langevin.noise_final_factor) == (0.1, 0.5)
  assert s.augmentation == replay.Augmentation(max_shift=2, flip=True, noise_std=0.01)
  assert (s.num_chains, s.kl_weight, s.entropy_weight, s.entropy_reference, s.kl_chains) == (
      16, 1.0, 0.3, 20, 8)
  assert task.network.spectral_norm
  assert task.describe_sampling(task.sample_options())["anneal"] == "geometric"


@pytest.mark.parametrize("key,value", [
    ("ebm.num_chains", -1), ("ebm.num_chains", 33), ("ebm.anneal", "cosine"),
    ("ebm.step_size_final_factor", 0.5),      # with anneal "constant": no effect
    ("ebm.noise_final_factor", -0.1), ("ebm.augment_shift", 9),
    ("ebm.augment_noise", -0.1), ("ebm.kl_weight", -1.0), ("ebm.entropy_weight", -0.3),
    ("ebm.entropy_reference", 1), ("ebm.kl_chains", -2)])
def test_bad_option_values_raise_config_error_naming_the_key(key, value):
  error = config_error_of(ebm_fashion_mnist.get_config("smoke"), key, value)  # buffer 32
  assert error.key == key and key in str(error)


def test_entropy_reference_beyond_the_buffer_is_an_error_only_when_the_term_is_on():
  config = ebm_fashion_mnist.get_config("smoke")   # buffer 32
  config.ebm.entropy_reference = 100
  tasks.build(config)                                # term off: not read
  config.ebm.entropy_weight = 0.3
  with pytest.raises(ConfigError, match=r"ebm\.entropy_reference"):
    tasks.build(config)


# --------------------------------------------------------- the ablation script


def _dry_run(tmp_path, *variants):
  env = dict(os.environ, DRY_RUN="1", RUNS=str(tmp_path / "runs"), BUDGET_S="1800",
             PYTHON="python")
  return subprocess.run(["bash", str(ROOT / "scripts" / "ebm_ablation.sh"), *variants],
                        env=env, capture_output=True, text=True, check=False)


def test_ablation_script_trains_every_variant_for_the_same_budget_then_evaluates(tmp_path):
  out = _dry_run(tmp_path)
  assert out.returncode == 0, out.stderr
  commands = [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("+ ")]
  train = [c for c in commands if "--mode" not in c]
  evaluate = [c for c in commands if "--mode" in c]
  names = [pathlib.Path(c[c.index("--workdir") + 1]).name for c in train]
  assert names == ["baseline", "sn", "augment", "kl", "anneal", "short_chains", "short_run", "jem",
                   "jem_short_run", "all"]
  assert len(evaluate) == len(train)
  seen = set()
  for t, e in zip(train, evaluate):
    assert t[:3] == ["python", "-m", "launch"] and "--config.train.time_budget_s=1800" in t
    assert e[e.index("--mode") + 1] == "evaluate"
    # evaluate sees the variant's own config: the same overrides, plus both meters
    meters = ("--config.eval.classifier_workdir=", "--config.eval.independent_workdir=")
    assert [a for a in e if a.startswith("--config.") and not a.startswith(meters)] == [
        a for a in t if a.startswith("--config.")]
    assert all(any(a.startswith(m) for a in e) for m in meters)
    overrides = [a[len("--config."):] for a in t if a.startswith("--config.")]
    config = config_lib.load(str(ROOT / t[t.index("--config") + 1]), overrides)  # validates
    seen.add(tuple(sorted(overrides)))
    assert config.train.time_budget_s == 1800 and config.train.sample_every == 0
  assert len(seen) == len(train)                   # every variant differs
  # the measured winners are the shipped configs: short_run is the default's chain and
  # sampler, jem_short_run the :conditional variant's (the docstrings quote their figures)
  budget = {"train.time_budget_s", "train.steps", "train.sample_every"}
  for name, shipped in (("short_run", ""), ("jem_short_run", ":conditional")):
    t = train[names.index(name)]
    path = str(ROOT / t[t.index("--config") + 1])
    overrides = [a[len("--config."):] for a in t if a.startswith("--config.")]
    measured, default = config_lib.load(path, overrides), config_lib.load(path + shipped, [])
    for group in ("ebm", "model", "optim", "data"):
      assert measured[group].to_dict() == default[group].to_dict(), (name, group)
    assert {o.split("=")[0] for o in overrides} - budget <= {
        "ebm.reinit_fraction", "ebm.sample_steps", "model.num_classes",
        "ebm.conditional_sampling", "ebm.ce_weight"}
  bad = _dry_run(tmp_path, "baseline", "nonsense")
  assert bad.returncode == 2 and "nonsense" in bad.stderr
