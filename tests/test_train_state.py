"""The shared TrainState: EMA values and gradient clipping, against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from core import train_state as ts


def _tree(rng):
  return {"w": rng.normal(size=(3, 4)).astype(np.float32),
          "b": rng.normal(size=(4,)).astype(np.float32)}


@pytest.mark.parametrize("decay, warmup", [(0.9, False), (0.5, True), (0.999, True)])
def test_ema_follows_the_float64_recurrence(decay, warmup):
  # ema_{t+1} = d_t ema_t + (1 - d_t) p_{t+1}, ema_0 = p_0, with
  # d_t = min(decay, (1 + t) / (10 + t)) under warm-up (which crosses
  # decay = 0.5 at t = 8 within these 20 steps) and d_t = decay without.
  rng = np.random.default_rng(0)
  p0 = _tree(rng)
  tx = optax.sgd(0.1)
  state = ts.TrainState.create(jax.tree.map(jnp.asarray, p0), tx)
  apply = jax.jit(lambda s, g: s.apply_gradients(g, tx, decay, warmup))
  ema = jax.tree.map(np.float64, p0)
  for t in range(20):
    state = apply(state, jax.tree.map(jnp.asarray, _tree(rng)))
    d = min(decay, (1 + t) / (10 + t)) if warmup else decay
    p = jax.tree.map(np.float64, jax.device_get(state.params))
    ema = jax.tree.map(lambda e, x: d * e + (1 - d) * x, ema, p)
  assert int(state.step) == 20
  for name in p0:
    got = np.asarray(state.ema_params[name], np.float64)
    np.testing.assert_allclose(got, ema[name], rtol=1e-5, atol=1e-6)
    # Not trivially equal to the weights or to the start.
    assert np.abs(got - p[name]).max() > 1e-3 and np.abs(got - p0[name]).max() > 1e-3


def test_ema_decay_at_matches_the_formula():
  steps = np.arange(0, 200)
  got = np.asarray(ts.ema_decay_at(jnp.asarray(steps), 0.99, True))
  np.testing.assert_allclose(got, np.minimum(0.99, (1 + steps) / (10 + steps)), rtol=1e-6)
  assert float(ts.ema_decay_at(jnp.asarray(3), 0.99, False)) == pytest.approx(0.99)


def _first_moment_gradient(adam_state, b1):
  """The gradient Adam saw at its first update: mu_1 = (1 - b1) g."""
  return jax.tree.map(lambda m: np.asarray(m, np.float64) / (1 - b1), adam_state[0].mu)


@pytest.mark.parametrize("scale", [0.3, 4.0, 1e3])
def test_global_norm_clipping_scales_a_large_gradient_to_the_bound_exactly(scale):
  clip, b1 = 1.0, 0.9
  rng = np.random.default_rng(1)
  g = _tree(rng)
  norm = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in g.values()))
  g = {k: (v / norm * scale).astype(np.float32) for k, v in g.items()}
  g_norm = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in g.values()))
  tx = ts.make_optimizer(lr=1e-3, b1=b1, grad_clip=clip)
  params = jax.tree.map(jnp.zeros_like, g)
  _, opt_state = tx.update(jax.tree.map(jnp.asarray, g), tx.init(params), params)
  seen = _first_moment_gradient(opt_state[1], b1)  # chain(clip, adam)
  # Above the bound: g * clip / ||g|| (one factor for all leaves, so the
  # direction is kept); at or below it: g unchanged.
  factor = min(1.0, clip / g_norm)
  for k in g:
    np.testing.assert_allclose(seen[k], np.float64(g[k]) * factor, rtol=1e-5, atol=1e-9)
  seen_norm = np.sqrt(sum(np.sum(x ** 2) for x in seen.values()))
  np.testing.assert_allclose(seen_norm, min(clip, g_norm), rtol=1e-5)


def test_no_clipping_when_grad_clip_is_zero():
  b1 = 0.9
  g = {k: v * 100 for k, v in _tree(np.random.default_rng(2)).items()}
  tx = ts.make_optimizer(lr=1e-3, b1=b1, grad_clip=0.0)
  params = jax.tree.map(jnp.zeros_like, g)
  _, opt_state = tx.update(jax.tree.map(jnp.asarray, g), tx.init(params), params)
  seen = _first_moment_gradient(opt_state, b1)  # adam alone
  for k in g:
    np.testing.assert_allclose(seen[k], np.float64(g[k]), rtol=1e-5)
