"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024).

"Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
Sec. 3 and App. C. A power-function EMA with exponent γ averages the weights
θ(τ) seen up to time t with the profile

  p_{t,γ}(τ) = (γ + 1) τ^γ / t^(γ+1)   on 0 < τ ≤ t,

whose width relative to t, σ_rel = sqrt((γ + 1) / ((γ + 2)² (γ + 3))), is
what the paper sweeps (`gamma_to_sigma_rel`, `sigma_rel_to_gamma`). Unlike a
fixed decay it has no time constant, so one σ_rel means the same relative
averaging at every training length.

Discrete form. Time is counted in optimiser updates, 1-based as in the
paper: the t-th update (code's 0-based `step` = t − 1) moves the average by

  ema ← β_t ema + (1 − β_t) θ_t,   β_t = (1 − 1/t)^(γ+1),

so β_1 = 0 (the first average is θ_1, whatever it was initialised to). The
product of the β telescopes: after t updates the weight of θ_i is
(i^(γ+1) − (i − 1)^(γ+1)) / t^(γ+1), which is exactly ∫_{i−1}^{i} p_{t,γ}, so
the discrete average *is* the continuous profile applied to the piecewise
constant trajectory θ(τ) = θ_i on (i − 1, i] (tested against that closed form).

Post-hoc reconstruction. Training tracks two such averages (σ_rel 0.05 and
0.10 in the paper) and saves snapshots of both every few steps. An average
with any other profile p_{t_r,γ_r} is approximated by the combination
Σ_i x_i snapshot_i whose profile Σ_i x_i p_i is closest to it in L2: the
normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>, and

  <p_{a,γa}, p_{b,γb}> = (γa + 1)(γb + 1) min(a, b)^(γa+γb+1)
                          / ((γa + γb + 1) a^(γa+1) b^(γb+1))

in closed form (`profile_inner`). Because the discrete averages are exactly
those profiles, the reconstruction error is only the profile mismatch.

Everything here is host-side NumPy float64 except `update` and `combine`,
which act on parameter pytrees (jit-compatible).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# sigma_rel of the uniform profile (γ = 0); larger sigma_rel has no γ ≥ 0.
MAX_SIGMA_REL = float(np.sqrt(1.0 / 12.0))


def gamma_to_sigma_rel(gamma: float | np.ndarray) -> np.ndarray:
  """σ_rel = std of the profile τ ~ p_{t,γ} divided by t."""
  g = np.asarray(gamma, np.float64)
  return np.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """The exponent γ ≥ 0 with `gamma_to_sigma_rel(γ) = sigma_rel`.

  σ² (γ + 2)² (γ + 3) = γ + 1 is the cubic γ³ + 7γ² + (16 − s)γ + (12 − s) = 0
  with s = σ⁻²; its largest real root is the one wanted.

  Raises:
    ValueError: unless 0 < sigma_rel < sqrt(1/12) (the uniform profile's).
  """
  s = float(sigma_rel)
  if not 0.0 < s < MAX_SIGMA_REL:
    raise ValueError(f"sigma_rel must be in (0, {MAX_SIGMA_REL:.4f}), got {sigma_rel!r}")
  inv = s ** -2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def one_minus_beta(step: jax.Array, gamma: float) -> jax.Array:
  """1 − β_t of the update with 0-based index `step` (t = step + 1).

  As −expm1((γ + 1) log1p(−1/t)): 1 − 1/t itself loses 1/t's digits in
  float32 once t is large (6% of it at t = 10⁶); this form keeps them.
  """
  t = jnp.asarray(step, jnp.result_type(float)) + 1.0
  return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / t))


def update(emas: Sequence[Any], params: Any, step: jax.Array,
           gammas: Sequence[float]) -> tuple[Any, ...]:
  """Each power EMA moved towards `params` after the update with index `step`.

  Args:
    emas: one parameter pytree per γ.
    params: the parameters just produced by update `step` (0-based).
    step: int scalar, the update's 0-based index (the state's step before it).
    gammas: the exponents, as many as `emas`.
  """
  if len(emas) != len(gammas):
    raise ValueError(f"{len(emas)} power EMAs for {len(gammas)} exponents")
  out = []
  for ema, gamma in zip(emas, gammas):
    w = one_minus_beta(step, gamma)
    out.append(jax.tree.map(lambda e, p, w=w: e + w.astype(p.dtype) * (p - e), ema, params))
  return tuple(out)


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
  """<p_{t_a,γ_a}, p_{t_b,γ_b}>, the L2 inner product of two profiles (broadcasts)."""
  t_a, g_a, t_b, g_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
  m = np.minimum(t_a, t_b)
  # (γa+1)(γb+1)/(γa+γb+1) · (m/a)^(γa+1) (m/b)^(γb+1) / m, in ratios ≤ 1 (no overflow).
  return ((g_a + 1.0) * (g_b + 1.0) / (g_a + g_b + 1.0)
          * (m / t_a) ** (g_a + 1.0) * (m / t_b) ** (g_b + 1.0) / m)


def solve_coefficients(steps: Sequence[float], gammas: Sequence[float], target_step: float,
                       target_gamma: float) -> np.ndarray:
  """Weights x of the snapshots whose combined profile is nearest p_{target} in L2.

  Args:
    steps: t of each snapshot (updates, 1-based: a snapshot taken after the
      update with 0-based index s has t = s + 1, i.e. the state's step).
    gammas: γ of each snapshot.
    target_step, target_gamma: the profile wanted.

  Returns:
    [n] float64 coefficients (they sum to ≈ 1).

  Raises:
    ValueError: no snapshot, or profiles that do not determine the weights.
  """
  t = np.asarray(steps, np.float64)
  g = np.asarray(gammas, np.float64)
  if t.size == 0 or t.shape != g.shape:
    raise ValueError(f"need one γ per snapshot and at least one snapshot, got {t.size} steps "
                     f"and {g.size} exponents")
  a = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
  b = profile_inner(t, g, float(target_step), float(target_gamma))
  try:
    return np.linalg.solve(a, b)
  except np.linalg.LinAlgError as e:
    raise ValueError("the snapshots' profiles are linearly dependent (two snapshots with the "
                     "same step and exponent?)") from e


def combine(trees: Sequence[Any], coefs: Sequence[float]) -> Any:
  """Σ_i coefs_i · trees_i, leaf by leaf (accumulated in float64 on the host)."""
  if len(trees) != len(coefs) or not trees:
    raise ValueError(f"{len(trees)} snapshots for {len(coefs)} coefficients")

  def mix(*leaves):
    acc = np.zeros(np.shape(leaves[0]), np.float64)
    for c, leaf in zip(coefs, leaves):
      acc += float(c) * np.asarray(leaf, np.float64)
    return acc.astype(np.asarray(leaves[0]).dtype)

  return jax.tree.map(mix, *trees)


def reconstruct(snapshots: Sequence[tuple[int, Sequence[Any]]], gammas: Sequence[float],
                sigma_rel: float, target_step: int | None = None) -> tuple[Any, np.ndarray]:
  """The post-hoc EMA with `sigma_rel` at `target_step` from saved snapshots.

  Args:
    snapshots: (t, (ema_0, ..., ema_{k-1})) for each saved step t (the number
      of updates the EMAs had seen), one tree per tracked exponent.
    gammas: the k tracked exponents.
    sigma_rel: the width wanted.
    target_step: t of the average wanted (default: the last snapshot's).

  Returns:
    (parameter pytree, coefficients [len(snapshots) * k] in the order
    snapshot-major, exponent-minor).
  """
  if not snapshots:
    raise ValueError("no power-EMA snapshots to reconstruct from")
  target_step = max(t for t, _ in snapshots) if target_step is None else target_step
  used = [(t, trees) for t, trees in snapshots if t <= target_step]
  if not used or any(len(trees) != len(gammas) for _, trees in used):
    raise ValueError(f"each snapshot needs {len(gammas)} averages, and one must be at or "
                     f"before step {target_step}")
  steps = [t for t, trees in used for _ in trees]
  exps = [g for _ in used for g in gammas]
  coefs = solve_coefficients(steps, exps, target_step, sigma_rel_to_gamma(sigma_rel))
  return combine([tree for _, trees in used for tree in trees], coefs), coefs
