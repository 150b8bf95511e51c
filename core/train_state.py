"""Training state shared by every task: parameters, EMA, optimiser, step.

Pure pytrees and functions; the loop in `launch/` checkpoints the whole
`TrainState` and never looks inside `params` or `extras`.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  Attributes:
    step: int32 scalar, number of optimiser updates applied so far.
    params: network parameters (float32).
    ema_params: exponential moving average of `params`, used for sampling.
    opt_state: optax state.
    lr_scale: float32 scalar multiplying every update (1.0 normally); the
      divergence guard lowers it after a blow-up. Scaling Adam's update is
      exactly scaling its learning rate.
    extras: task state that must be checkpointed with the rest (e.g. the EBM
      replay buffer `{"buffer": [N, H, W, C]}`); `{}` when there is none.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  lr_scale: jax.Array
  extras: Any

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, extras=None):
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        lr_scale=jnp.ones((), jnp.float32),
        extras={} if extras is None else extras,
    )

  def apply_gradients(self, grads, tx: optax.GradientTransformation,
                      ema_decay: float, ema_warmup: bool = True, **changes):
    """One optimiser update, the EMA update and step + 1."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    updates = jax.tree.map(lambda u: u * self.lr_scale.astype(u.dtype), updates)
    params = optax.apply_updates(self.params, updates)
    decay = ema_decay_at(self.step, ema_decay, ema_warmup)
    ema_params = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e),
                              self.ema_params, params)
    return self.replace(step=self.step + 1, params=params, ema_params=ema_params,
                        opt_state=opt_state, **changes)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """EMA decay used at update `step` (0-based).

  With warm-up, decay_t = min(decay, (1 + t) / (10 + t)) (as in TF's
  ExponentialMovingAverage with num_updates), so the average follows the
  weights early in training instead of staying near the initialisation.
  """
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def make_lr_schedule(lr: float, warmup_steps: int = 0, decay: str = "constant",
                     decay_steps: int = 0, final_lr_factor: float = 0.0) -> optax.Schedule:
  """The learning rate at each update (optax counts updates from 0).

  decay "constant" keeps `lr` after the linear warm-up (the DDPM paper);
  "cosine" anneals it to `final_lr_factor * lr` at `decay_steps` (warm-up
  included), which helps short CPU budgets.
  """
  if decay == "cosine":
    if decay_steps <= warmup_steps:
      raise ValueError(f"cosine decay needs decay_steps ({decay_steps}) > warmup_steps "
                       f"({warmup_steps})")
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps, decay_steps, end_value=final_lr_factor * lr)
  if decay != "constant":
    raise ValueError(f"optim.decay: unknown schedule {decay!r}; allowed: 'constant', 'cosine'")
  if warmup_steps > 0:
    return optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.constant_schedule(lr)


def make_optimizer(*, name: str = "adam", lr: float, warmup_steps: int = 0,
                   b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0,
                   grad_clip: float = 0.0, decay: str = "constant",
                   decay_steps: int = 0, final_lr_factor: float = 0.0
                   ) -> optax.GradientTransformation:
  """Adam(W) on `make_lr_schedule(...)` with optional global-norm clipping."""
  # A constant rate without warm-up is passed as a plain number: no schedule
  # counter in the optimiser state, so checkpoints written that way restore.
  schedule = (lr if decay == "constant" and warmup_steps == 0 else
              make_lr_schedule(lr, warmup_steps, decay, decay_steps, final_lr_factor))
  if name == "adam":
    opt = optax.adam(schedule, b1=b1, b2=b2)
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
  else:
    raise ValueError(f"optim.name: unknown optimiser {name!r}; allowed: 'adam', 'adamw'")
  if grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), opt)
  return opt
