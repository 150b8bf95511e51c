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

Improved CD (Du, Li, Tenenbaum & Mordatch 2021, "Improved Contrastive
Divergence Training of Energy-Based Models", §3.1-3.2) adds the gradient
term that CD drops: the samples q_θ depend on θ through the chain, and the
KL(q_θ ‖ p_θ) term of the CD objective is minimised by

    L_KL = E_{θ̄}(x_K(θ)) - H(q_θ),

where θ̄ = stop_gradient(θ) (the energy is a fixed target here; only the
sampler moves) and x_K(θ) is the chain's last state, differentiated through
the last Langevin update only (`kl_last_step`; ICD found the earlier steps
unnecessary and backpropagates through the last one by default). H(q) is
estimated by the nearest-neighbour distance of each sample to a set of
buffer states (`nearest_neighbour_entropy`, ICD's "repel" term,
Kozachenko-Leonenko up to constants).
"""
from __future__ import annotations

from typing import Any, Callable

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


def kl_last_step(energy_fn_of_params: Callable[[Any], Callable[[jax.Array], jax.Array]],
                 params: Any, x_last_input: jax.Array,
                 last_step: Callable[[Callable[[jax.Array], jax.Array], jax.Array], jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
  """Improved CD's KL term through the last Langevin update.

      x_K(θ) = last_step(E_θ, x_{K-1}),   L = mean_b E_{θ̄}(x_K(θ)_b),

  with x_{K-1} a constant (the chain up to the last update is
  stop_gradient'ed) and θ̄ = stop_gradient(θ). ∇_θ L therefore flows only
  through ∇ₓE_θ(x_{K-1}) inside the update: for the plain update
  x_K = x_{K-1} - α ∇ₓE_θ(x_{K-1}) + σ z (no clipping),

      ∇_θ L = -α · mean_b [∂_θ ∇ₓE_θ(x_{K-1})]ᵀ ∇ₓE_θ̄(x_K),

  i.e. the parameters move so that one update lands at lower energy.
  Elementwise gradient clipping and the clip of x to its range have zero
  derivative where they are active, so clipped pixels carry no gradient.

  Args:
    energy_fn_of_params: θ -> E_θ (images [B, ...] -> [B]).
    params: θ.
    x_last_input: x_{K-1} [B, ...] (e.g. `LangevinResult.x_last_input`).
    last_step: (E, x) -> x', the chain's last update with its noise bound
      (e.g. `cd.LangevinSettings.last_step`).

  Returns:
    (L, a float32 scalar; x_K [B, ...], which depends on θ).
  """
  x_last_input = jax.lax.stop_gradient(x_last_input)
  x_final = last_step(energy_fn_of_params(params), x_last_input)
  frozen = jax.lax.stop_gradient(params)
  return jnp.mean(energy_fn_of_params(frozen)(x_final)), x_final


def nearest_neighbour_entropy(x: jax.Array, reference: jax.Array,
                              exclude: jax.Array | None = None,
                              eps: float = 1e-8) -> jax.Array:
  """mean_b log min_j ‖x_b - r_j‖: the entropy estimate of Improved CD (up to constants).

  The Kozachenko-Leonenko estimator of H(q) is d·mean_b log ρ_b plus
  constants, with ρ_b the distance of sample b to its nearest neighbour;
  ICD maximises mean_b log ρ_b with ρ_b measured against states from the
  replay buffer (the "repel" term, weight 0.3). Gradients flow into x only.

  Args:
    x: samples [B, ...].
    reference: states [M, ...] to measure against (stop_gradient'ed).
    exclude: optional bool [B, M]; True drops pair (b, j), e.g. a chain's
      own start state. Every row must keep at least one reference.
    eps: added under the square root, so that the gradient stays finite
      when a sample coincides with a reference.

  Returns:
    float32 scalar.
  """
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  r = jax.lax.stop_gradient(reference).reshape(reference.shape[0], -1).astype(jnp.float32)
  # ‖x - r‖² expanded as a matmul: [B, M] without a [B, M, D] intermediate.
  sq = (jnp.sum(jnp.square(x), axis=1)[:, None] + jnp.sum(jnp.square(r), axis=1)[None, :]
        - 2.0 * x @ r.T)
  sq = jnp.maximum(sq, 0.0)
  if exclude is not None:
    sq = jnp.where(exclude, jnp.inf, sq)
  return jnp.mean(0.5 * jnp.log(jnp.min(sq, axis=1) + eps))
