"""Consistency distillation (Song et al. 2023) of a trained DDPM into a few-step student.

A consistency function maps any point of a probability-flow ODE trajectory to
the trajectory's clean endpoint, so that one network call from x_T is a
sample. It is learned from a teacher DDPM by asking the student to give the
same answer at two adjacent points of one teacher ODE step (the paper's
Algorithm 2, consistency distillation, in the DDPM's discrete VP setting):

  grid       N increasing timesteps tau_0 < ... < tau_{N-1} = T - 1 (0-based
             indices into the DDPM's schedule; `consistency_grid`), and a
             clean end tau_{-1} where alpha_bar = 1.
  interval   n uniform in {0, ..., N-1}; x_hi = sqrt(a_n) x0 + sqrt(1 - a_n) eps
             at tau_n (a_n = alpha_bar at tau_n).
  teacher    one DDIM step (the PF-ODE's Euler step in sigma = sqrt((1-a)/a))
             with the teacher's eps from tau_n to tau_{n-1}:
               x_lo = sqrt(a_lo) x0_T + sqrt(1 - a_lo) eps_T,
               x0_T = (x_hi - sqrt(1 - a_n) eps_T) / sqrt(a_n);
             for n = 0 the step ends at the clean end: x_lo = x0_T.
             Or ("heun", the paper's choice) Heun's second-order step: the
             same formula with eps_T replaced by the mean of eps_T(x_hi, tau_n)
             and eps_T(x_lo_ddim, tau_{n-1}) (two teacher calls); for n = 0
             the DDIM step, as in Karras et al. 2022's last step.
  target     f_target(x_lo, tau_{n-1}) for n > 0, and x_lo itself for n = 0:
             the boundary condition f(x, clean) = x holds exactly.
  loss       d(f_student(x_hi, tau_n), stop_gradient(target)), d = squared
             error ("l2") or pseudo-Huber ("huber", Song & Dhariwal 2023).

f(x_t, t) is the network's x0 prediction (any objective converts to x0), so
the student is the teacher's network, initialised from the teacher's
weights, and every DDPM sampler can still run it. Its fixed point: a student
with f(x, tau_n) = Phi_n(x), the endpoint of the teacher's N-step DDIM
chain started at tau_n, has zero loss for every n; as N grows Phi_n tends to
the PF-ODE's exact endpoint (tests/test_distill.py checks both on a Gaussian
oracle in float64). The target network is the student's EMA ("ema", the
original paper's theta^-) or the student itself under stop-gradient
("online", Song & Dhariwal 2023).

Sampling a consistency student is `ddpm.samplers.consistency_sample`
(Algorithm 1, multistep): x0 = f(x_T, T-1), then for each later timestep
re-noise x0 to it and apply f again.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.train_state import TrainState
from ddpm import objectives
from ddpm import samplers
from ddpm import training
from ddpm.schedules import Schedule

DISTANCES = ("l2", "huber")
TARGETS = ("online", "ema")
SOLVERS = ("ddim", "heun")

X0Fn = Callable[[jax.Array, jax.Array], jax.Array]   # (x_t, t [B]) -> x0_hat
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x_t, t [B]) -> eps_hat


def consistency_grid(num_timesteps: int, num_intervals: int) -> np.ndarray:
  """The N = num_intervals increasing int32 timesteps tau_0 < ... < tau_{N-1} = T - 1.

  `ddpm.samplers.trailing_timesteps`: tau_n = T - 1 - (N - 1 - n) * T / N
  (rounded), so the grid holds T - 1 and, for N a multiple of k, the k
  timesteps the k-step consistency sampler visits. 0-based (tau = 0 is the
  paper's t = 1).
  """
  try:
    return samplers.trailing_timesteps(num_timesteps, num_intervals)
  except ValueError as e:
    raise ValueError(f"num_intervals {e}") from None


def _bcast(a: jax.Array, ndim: int) -> jax.Array:
  return a.reshape(a.shape + (1,) * (ndim - 1))


def ddim_step(x: jax.Array, eps: jax.Array, a_hi: jax.Array, a_lo: jax.Array) -> jax.Array:
  """One deterministic DDIM step (eta = 0) from alpha_bar a_hi to a_lo (a_lo = 1: x0_hat).

  a_hi, a_lo: [B] per example.
  """
  a_hi, a_lo = _bcast(a_hi, x.ndim), _bcast(a_lo, x.ndim)
  x0 = (x - jnp.sqrt(1.0 - a_hi) * eps) / jnp.sqrt(a_hi)
  return jnp.sqrt(a_lo) * x0 + jnp.sqrt(1.0 - a_lo) * eps


def teacher_step(teacher_eps: EpsFn, x_hi: jax.Array, t_hi: jax.Array, t_lo: jax.Array,
                 a_hi: jax.Array, a_lo: jax.Array, solver: str = "ddim") -> jax.Array:
  """The teacher's PF-ODE step of x_hi from t_hi to t_lo: DDIM (Euler) or Heun.

  a_hi, a_lo: [B] alpha_bar at the two ends (a_lo = 1: the clean end, where
  Heun falls back to the DDIM step: the eps of a clean image is undefined).
  """
  eps_hi = teacher_eps(x_hi, t_hi)
  x_lo = ddim_step(x_hi, eps_hi, a_hi, a_lo)
  if solver == "ddim":
    return x_lo
  if solver != "heun":
    raise ValueError(f"unknown solver {solver!r} (allowed: {', '.join(SOLVERS)})")
  x_heun = ddim_step(x_hi, 0.5 * (eps_hi + teacher_eps(x_lo, t_lo)), a_hi, a_lo)
  return jnp.where(_bcast(a_lo < 1.0, x_hi.ndim), x_heun, x_lo)


def consistency_target(teacher_eps: EpsFn, target_x0: X0Fn, alpha_bars: jax.Array,
                       grid: jax.Array, x_hi: jax.Array, n: jax.Array,
                       solver: str = "ddim") -> jax.Array:
  """The target of interval n: f_target(teacher step of x_hi from tau_n to tau_{n-1}).

  Args:
    teacher_eps: the teacher's (x_t, t [B]) -> eps_hat.
    target_x0: the target network's (x_t, t [B]) -> x0_hat.
    alpha_bars: [T] the schedule's alpha_bar (float32, or float64 in tests).
    grid: [N] int32 timesteps (`consistency_grid`).
    x_hi: [B, ...] points at tau_n.
    n: [B] int32 interval indices in [0, N).
    solver: the teacher's step, one of `SOLVERS`.

  Returns:
    [B, ...] targets (not yet stop-gradient'ed).
  """
  t_hi = grid[n]
  t_lo = grid[jnp.maximum(n - 1, 0)]
  a_hi = alpha_bars[t_hi]
  a_lo = jnp.where(n > 0, alpha_bars[t_lo], jnp.ones_like(a_hi))
  x_lo = teacher_step(teacher_eps, x_hi, t_hi, t_lo, a_hi, a_lo, solver)
  f_lo = target_x0(x_lo, t_lo)
  return jnp.where(_bcast(n > 0, x_hi.ndim), f_lo, x_lo)


def distance(pred: jax.Array, target: jax.Array, kind: str) -> jax.Array:
  """Per-example distance [B]: mean squared error ("l2"), or pseudo-Huber ("huber").

  pseudo-Huber: sqrt(||d||^2 + c^2) - c with c = 0.00054 sqrt(D) (Song &
  Dhariwal 2023), D the number of dimensions of one example.
  """
  d = (pred - target).reshape(pred.shape[0], -1)
  if kind == "l2":
    return jnp.mean(jnp.square(d), axis=1)
  if kind == "huber":
    c = 0.00054 * np.sqrt(d.shape[1])
    return jnp.sqrt(jnp.sum(jnp.square(d), axis=1) + c * c) - c
  raise ValueError(f"unknown distance {kind!r} (allowed: {', '.join(DISTANCES)})")


def consistency_loss(student_x0: X0Fn, teacher_eps: EpsFn, target_x0: X0Fn,
                     alpha_bars: jax.Array, grid: jax.Array, x0: jax.Array, noise: jax.Array,
                     n: jax.Array, kind: str = "l2", solver: str = "ddim") -> jax.Array:
  """The consistency-distillation loss of a batch (mean over examples).

  Args:
    student_x0: the student's (x_t, t [B]) -> x0_hat (differentiated).
    teacher_eps, target_x0, alpha_bars, grid, n: see `consistency_target`.
    x0: [B, ...] data.
    noise: [B, ...] standard normal.
    kind: the distance, one of `DISTANCES`.
    solver: the teacher's step, one of `SOLVERS`.
  """
  t_hi = grid[n]
  a = _bcast(alpha_bars[t_hi], x0.ndim)
  x_hi = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
  target = jax.lax.stop_gradient(
      consistency_target(teacher_eps, target_x0, alpha_bars, grid, x_hi, n, solver))
  return jnp.mean(distance(student_x0(x_hi, t_hi), target, kind))


# ---------------------------------------------------------------------------
# The train step of a network student (state.extras["teacher"] holds the teacher).

@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """Hyperparameters of consistency distillation.

  Attributes:
    num_intervals: N, the grid's length.
    distance: one of `DISTANCES`.
    target: "online" (stop-gradient of the student) or "ema" (its EMA).
    solver: the teacher's ODE step, one of `SOLVERS`.
  """
  num_intervals: int = 40
  distance: str = "l2"
  target: str = "ema"
  solver: str = "ddim"


def init_student(teacher_params: Any, tx: optax.GradientTransformation) -> TrainState:
  """The student's first state: the teacher's weights, a fresh optimiser and EMA,
  and the teacher kept in extras (so a checkpoint alone resumes the run)."""
  params = jax.tree.map(jnp.array, teacher_params)
  return TrainState.create(params, tx, extras={"teacher": jax.tree.map(jnp.array, teacher_params)})


def distill_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
                 network: nn.Module, tx: optax.GradientTransformation, schedule: Schedule,
                 objective: str, settings: training.TrainSettings,
                 distill: DistillSettings) -> tuple[TrainState, dict[str, jax.Array]]:
  """One consistency-distillation update of the student in `state`.

  Randomness from fold_in(key, state.step): the interval n of each example,
  its noise and the label dropout. Teacher and target run with train=False.
  Metrics: "loss", "grad_norm", "lr".
  """
  key = jax.random.fold_in(key, state.step)
  k_n, k_noise, k_label, k_dropout = jax.random.split(key, 4)
  x0 = batch["image"].astype(jnp.float32)
  label = training.train_labels(k_label, batch, settings)
  grid = jnp.asarray(consistency_grid(schedule.num_timesteps, distill.num_intervals))
  n = jax.random.randint(k_n, (x0.shape[0],), 0, distill.num_intervals)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  alpha_bars = jnp.asarray(schedule.alpha_bars)

  def x0_fn(params, train: bool):
    def f(x_t, t):
      kwargs = {"rngs": {"dropout": k_dropout}} if train else {}
      out = network.apply({"params": params}, x_t, t, label, train=train, **kwargs)
      return objectives.output_to_x0(objective, schedule, x_t, t, out)
    return f

  def teacher_eps(x_t, t):
    out = network.apply({"params": state.extras["teacher"]}, x_t, t, label, train=False)
    return objectives.output_to_eps(objective, schedule, x_t, t, out)

  target_params = state.ema_params if distill.target == "ema" else state.params
  target_x0 = x0_fn(jax.lax.stop_gradient(target_params), False)

  def loss_fn(params):
    return consistency_loss(x0_fn(params, True), teacher_eps, target_x0, alpha_bars, grid,
                            x0, noise, n, distill.distance, distill.solver)

  return training.update(state, loss_fn, tx=tx, settings=settings)
