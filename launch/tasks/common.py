"""Config readers shared by every task (validated, with the key in the message)."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from core import train_state as ts
from launch.config_errors import check_choice, check_range


def optimizer(config) -> optax.GradientTransformation:
  """The optimiser of `config.optim`, after validating its keys."""
  o = config.optim
  check_choice("optim.name", o.name, ("adam", "adamw"))
  check_range("optim.lr", o.lr, 0.0, lo_open=True)
  check_range("optim.warmup_steps", o.warmup_steps, 0)
  check_range("optim.b1", o.b1, 0.0, 1.0, hi_open=True)
  check_range("optim.b2", o.b2, 0.0, 1.0, hi_open=True)
  check_range("optim.weight_decay", o.weight_decay, 0.0)
  check_range("optim.grad_clip", o.grad_clip, 0.0)
  check_range("optim.ema_decay", o.ema_decay, 0.0, 1.0)
  check_choice("optim.decay", o.decay, ("constant", "cosine"))
  check_range("optim.final_lr_factor", o.final_lr_factor, 0.0, 1.0)
  if o.decay == "cosine" and config.train.steps <= o.warmup_steps:
    check_range("train.steps", config.train.steps, o.warmup_steps + 1)
  return ts.make_optimizer(name=o.name, lr=o.lr, warmup_steps=o.warmup_steps, b1=o.b1,
                           b2=o.b2, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
                           decay=o.decay, decay_steps=config.train.steps,
                           final_lr_factor=o.final_lr_factor)


def lr_schedule(config) -> optax.Schedule:
  """The learning-rate schedule of `config.optim` (for the "lr" metric)."""
  o = config.optim
  return ts.make_lr_schedule(o.lr, o.warmup_steps, o.decay, config.train.steps,
                             o.final_lr_factor)


# model.dtype -> the compute dtype (parameters and optimiser state stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
