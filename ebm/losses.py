"""Contrastive-divergence loss of an energy-based model.

With energies E⁺ = E(x⁺) on data and E⁻ = E(x⁻) on Langevin samples,

    L = mean E⁺ - mean E⁻ + α · (mean E⁺² + mean E⁻²).

The first part is the maximum-likelihood gradient estimate (push the energy
of data down and of samples up); the second keeps energies near zero so they
cannot drift without bound (the tutorial's α = 0.1). Samples must be
stop_gradient'ed before E⁻ is computed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cd_loss(energy_pos: jax.Array, energy_neg: jax.Array,
            reg_alpha: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Contrastive-divergence loss with the squared-energy regulariser.

  Args:
    energy_pos: E(x⁺) [B] on (noised) data.
    energy_neg: E(x⁻) [B'] on samples.
    reg_alpha: α, weight of the regulariser.

  Returns:
    (loss, aux) with aux = {"cd": mean E⁺ - mean E⁻, "reg": α · (mean E⁺² +
    mean E⁻²), "energy_pos": mean E⁺, "energy_neg": mean E⁻}; all float32
    scalars, loss = cd + reg.
  """
  e_pos = jnp.mean(energy_pos)
  e_neg = jnp.mean(energy_neg)
  cd = e_pos - e_neg
  reg = reg_alpha * (jnp.mean(jnp.square(energy_pos)) + jnp.mean(jnp.square(energy_neg)))
  return cd + reg, {"cd": cd, "reg": reg, "energy_pos": e_pos, "energy_neg": e_neg}
