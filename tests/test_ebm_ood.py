"""OOD score, AUROC (against a brute-force Mann-Whitney count), OOD sets, inpainting."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm import ood


def _auroc_pairwise(neg, pos) -> float:
  """P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) by counting every pair (Mann-Whitney U / n⁺n⁻)."""
  neg, pos = np.asarray(neg, np.float64), np.asarray(pos, np.float64)
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_equals_the_pairwise_mann_whitney_statistic(seed):
  rng = np.random.default_rng(seed)
  neg = rng.integers(0, 6, size=13).astype(np.float32)     # many ties
  pos = rng.integers(2, 9, size=7).astype(np.float32)
  np.testing.assert_allclose(ood.auroc(neg, pos), _auroc_pairwise(neg, pos), rtol=1e-6)
  neg, pos = rng.normal(size=50), rng.normal(0.5, 1.0, size=30)
  np.testing.assert_allclose(ood.auroc(neg, pos), _auroc_pairwise(neg, pos), rtol=1e-6)


def test_auroc_extremes():
  a = jnp.array([0.1, 0.2, 0.3])
  b = jnp.array([1.0, 2.0])
  np.testing.assert_allclose(ood.auroc(a, b), 1.0)          # perfectly separated
  np.testing.assert_allclose(ood.auroc(b, a), 0.0)          # perfectly reversed
  np.testing.assert_allclose(ood.auroc(a, a), 0.5)          # identical
  np.testing.assert_allclose(ood.auroc(jnp.ones(4), jnp.ones(9)), 0.5)   # all tied


def test_ood_sets_shapes_ranges_and_definitions():
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1, maxval=1)
  sets = ood.make_ood_sets(jax.random.key(1), x)
  for name, s in sets.items():
    assert s.shape == x.shape, name
    assert float(s.min()) >= -1.0 and float(s.max()) <= 1.0, name
  np.testing.assert_array_equal(sets["vflip"][:, 0], x[:, -1])
  np.testing.assert_array_equal(sets["hflip"][:, :, 0], x[:, :, -1])
  np.testing.assert_array_equal(sets["inverted"], -x)
  assert not np.array_equal(sets["gaussian_noised"], x)


def test_ood_score_is_the_energy_and_batches_the_same():
  energy = lambda x: jnp.mean(x, axis=(1, 2, 3))
  x = jax.random.normal(jax.random.key(2), (10, 4, 4, 1))
  np.testing.assert_allclose(ood.ood_score(energy, x, batch_size=3), energy(x), rtol=1e-5,
                             atol=1e-7)


def test_ood_evaluate_separates_what_the_energy_penalises():
  # E = mean |x - dark|: dark (≈ -1) images are "data"; noise and inversion are far.
  energy = lambda x: jnp.mean(jnp.abs(x + 1.0), axis=(1, 2, 3))
  x_in = -1.0 + 0.1 * jax.random.uniform(jax.random.key(3), (32, 8, 8, 1))
  scores = ood.ood_evaluate(energy, x_in, jax.random.key(4), batch_size=16)
  np.testing.assert_allclose(scores["uniform_noise"], 1.0)
  np.testing.assert_allclose(scores["inverted"], 1.0)
  np.testing.assert_allclose(scores["vflip"], 0.5, atol=0.2)   # flips keep the energy here


def test_inpainting_keeps_known_pixels_exactly_through_the_chain():
  x_known = jax.random.uniform(jax.random.key(5), (3, 6, 6, 1), minval=-1, maxval=1)
  mask = jnp.zeros((1, 6, 6, 1), bool).at[:, :3].set(True)     # top half known
  energy = lambda x: 0.5 * jnp.sum(jnp.square(x - 0.3), axis=(1, 2, 3))
  x, traj = ood.inpaint(energy, x_known, mask, jax.random.key(6), num_steps=40,
                        step_size=0.2, noise_scale=0.01, capture_every=1)
  known = np.broadcast_to(np.asarray(mask), x_known.shape)
  for state in np.asarray(traj):
    np.testing.assert_array_equal(state[known], np.asarray(x_known)[known])
  np.testing.assert_array_equal(np.asarray(x)[known], np.asarray(x_known)[known])
  np.testing.assert_allclose(np.asarray(x)[~known], 0.3, atol=0.1)   # filled from the energy


def test_denoising_descends_the_energy():
  energy = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))
  noisy = jax.random.uniform(jax.random.key(7), (2, 4, 4, 1), minval=-1, maxval=1)
  clean = ood.denoise(energy, noisy, jax.random.key(8), num_steps=20, step_size=0.1)
  assert bool(jnp.all(energy(clean) < energy(noisy)))
