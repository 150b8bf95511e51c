"""Replay buffer (draw / push) and the contrastive-divergence loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ebm import buffer as replay
from ebm import losses


def test_init_buffer_is_uniform_in_range():
  buf = replay.init_buffer(jax.random.key(0), 64, (4, 4, 1))
  assert buf.shape == (64, 4, 4, 1) and buf.dtype == jnp.float32
  assert float(buf.min()) >= -1.0 and float(buf.max()) <= 1.0
  np.testing.assert_allclose(buf.mean(), 0.0, atol=0.1)
  np.testing.assert_allclose(buf.var(), 1 / 3, rtol=0.1)


def test_draw_takes_distinct_slots_and_restarts_a_fraction():
  # slot i holds the constant 2 + i, outside the noise range [-1, 1]
  buf = (2.0 + jnp.arange(500, dtype=jnp.float32))[:, None, None, None] * jnp.ones((1, 2, 2, 1))
  x0, idx = replay.draw(buf, jax.random.key(1), 400, 0.25)
  idx = np.asarray(idx)
  assert x0.shape == (400, 2, 2, 1) and idx.dtype == np.int32
  assert len(set(idx.tolist())) == 400
  restarted = np.asarray(jnp.max(jnp.abs(x0), axis=(1, 2, 3)) <= 1.0)
  np.testing.assert_allclose(restarted.mean(), 0.25, atol=0.07)
  np.testing.assert_array_equal(np.asarray(x0)[~restarted, 0, 0, 0], 2.0 + idx[~restarted])


def test_draw_fraction_extremes():
  buf = jnp.full((16, 2, 2, 1), 5.0)
  x_all_old, _ = replay.draw(buf, jax.random.key(2), 8, 0.0)
  np.testing.assert_array_equal(x_all_old, 5.0)
  x_all_new, _ = replay.draw(buf, jax.random.key(2), 8, 1.0)
  assert float(jnp.max(jnp.abs(x_all_new))) <= 1.0


def test_push_writes_back_into_the_drawn_slots_only():
  buf = jnp.zeros((10, 2, 2, 1))
  idx = jnp.array([7, 2, 5], jnp.int32)
  new = jnp.arange(1.0, 4.0)[:, None, None, None] * jnp.ones((3, 2, 2, 1))
  out = np.asarray(replay.push(buf, idx, new))
  np.testing.assert_array_equal(out[[7, 2, 5], 0, 0, 0], [1.0, 2.0, 3.0])
  np.testing.assert_array_equal(np.delete(out, [7, 2, 5], axis=0), 0.0)


def test_draw_is_deterministic_given_the_key():
  buf = replay.init_buffer(jax.random.key(3), 32, (2, 2, 1))
  a = replay.draw(buf, jax.random.key(4), 8, 0.5)
  b = replay.draw(buf, jax.random.key(4), 8, 0.5)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_cd_loss_value_and_parts():
  e_pos = jnp.array([-1.0, -3.0])
  e_neg = jnp.array([2.0, 0.0, 1.0])
  loss, aux = losses.cd_loss(e_pos, e_neg, reg_alpha=0.1)
  cd = -2.0 - 1.0
  reg = 0.1 * ((1 + 9) / 2 + (4 + 0 + 1) / 3)
  np.testing.assert_allclose(aux["cd"], cd, rtol=1e-6)
  np.testing.assert_allclose(aux["reg"], reg, rtol=1e-6)
  np.testing.assert_allclose(loss, cd + reg, rtol=1e-6)
  np.testing.assert_allclose(aux["energy_pos"], -2.0)
  np.testing.assert_allclose(aux["energy_neg"], 1.0)


def test_cd_loss_gradient_lowers_data_energy_and_raises_sample_energy():
  g_pos, g_neg = jax.grad(lambda a, b: losses.cd_loss(a, b, 0.0)[0], argnums=(0, 1))(
      jnp.zeros(4), jnp.zeros(4))
  np.testing.assert_allclose(g_pos, 0.25)    # descending the loss lowers E(x⁺)
  np.testing.assert_allclose(g_neg, -0.25)   # and raises E(x⁻)
