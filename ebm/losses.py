"""Contrastive-divergence loss of an energy-based model.

With energies E⁺ = E(x⁺) on data and E⁻ = E(x⁻) on Langevin samples,

    L = mean E⁺ - mean E⁻ + α · (mean E⁺² + mean E⁻²).

The first part is the maximum-likelihood gradient estimate (push the energy
of data down and of samples up); the second keeps energies near zero so they
cannot drift without bound (the tutorial's α = 0.1). Samples must be
stop_gradient'ed before E⁻ is computed.

JEM's hybrid objective (Grathwohl et al. 2020) adds the classifier's
log p(y | x) on labelled data, with logits f(x) = -E(x, ·):
`jem_cross_entropy`.
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


def jem_cross_entropy(class_energies: jax.Array, labels: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
  """-mean log p(y | x) with p(y | x) = softmax_y(-E(x, y)), and the accuracy.

  Args:
    class_energies: E(x, ·) [B, K] on labelled data.
    labels: int [B] in [0, K).

  Returns:
    (cross entropy, accuracy): float32 scalars, the accuracy of
    argmin_y E(x, y) (= argmax of the logits).
  """
  logits = -class_energies.astype(jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  # -log softmax(f)[y] = logsumexp_y' f[y'] - f[y]; E(x) = -logsumexp is the
  # marginal energy, so this is E(x, y) - E(x) = -log p(y | x).
  f_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  ce = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - f_y)
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return ce, accuracy
