"""Training a DDPM (Ho et al. 2020, Algorithm 1) and the one-step denoiser.

Pure functions over `core.train_state.TrainState`, mirroring `ebm/cd.py`:
hyperparameters are a frozen dataclass (`TrainSettings`) passed as keyword
arguments with the network, the schedule and the optimiser, bound by the
task, so every function here jit-compiles with them static.

One DDPM step (`train_step`):

  1. key ← fold_in(key, step), split into the loss, dropout and label keys;
  2. labels (class-conditional models) replaced by the null label with
     probability class_dropout (classifier-free guidance);
  3. the simple loss of `objectives.diffusion_loss` (t uniform, eps, x_t,
     the eps / x0 / v target), one optimiser update and the EMA.

The denoiser step (`denoiser_train_step`) regresses x0 from the 50/50 mix
(1 - m) x0 + m eps in one step (the course's "ink blot" baseline).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core import posthoc_ema
from core.train_state import TrainState
from ddpm import objectives
from ddpm.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Hyperparameters of a DDPM or denoiser update.

  Attributes:
    num_classes: K for class-conditional models (labels 0..K-1), 0 otherwise.
    class_dropout: probability of replacing a label by the null label K.
    ema_decay, ema_warmup: see `core.train_state.ema_decay_at`.
    lr_schedule: the optimiser's learning rate at each update (the "lr"
      metric only; the optimiser holds its own).
    power_ema_gammas: exponents of the power-function EMAs tracked beside
      the EMA, in `state.extras["power_ema"]` (`core.posthoc_ema`); () = none.
  """
  num_classes: int = 0
  class_dropout: float = 0.0
  ema_decay: float = 0.9999
  ema_warmup: bool = False
  lr_schedule: Callable[[jax.Array], jax.Array] | None = None
  power_ema_gammas: tuple[float, ...] = ()


def init_state(key: jax.Array, batch: dict[str, jax.Array], *, network: nn.Module,
               tx: optax.GradientTransformation, num_classes: int = 0,
               power_emas: int = 0) -> TrainState:
  """Fresh parameters (from one example of `batch`), optimiser state and EMA.

  Args:
    key: PRNG key.
    batch: example batch; only the shape of batch["image"] [B, H, W, C] is used.
    network: the network (x_t [B, H, W, C], t [B] or None, label [B] or None).
    tx: the optimiser.
    num_classes: > 0 for class-conditional networks (they are built with a label).
    power_emas: number of power-function EMAs to track (extras["power_ema"],
      a tuple of parameter copies; their first update overwrites them).

  Returns:
    TrainState; extras {} or {"power_ema": (...)}.
  """
  x = jnp.zeros((1,) + tuple(batch["image"].shape[1:]), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  label = jnp.zeros((1,), jnp.int32) if num_classes else None
  # The parameter draws use XLA's RngBitGenerator ("rbg"), seeded from `key`:
  # threefry inlines a large program per parameter, which made init 3x slower
  # to compile on CPU. The initial values may differ between backends.
  init_key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
  params = network.init({"params": init_key}, x, t, label, train=False)["params"]
  extras = {"power_ema": tuple(jax.tree.map(jnp.copy, params) for _ in range(power_emas))
            } if power_emas else None
  return TrainState.create(params, tx, extras)


def train_labels(key: jax.Array, batch: dict[str, jax.Array],
                 settings: TrainSettings) -> jax.Array | None:
  """The [B] int32 training labels (with label dropout), None for unconditional models."""
  if not settings.num_classes:
    return None
  label = batch["label"].astype(jnp.int32)
  if settings.class_dropout > 0:
    label = objectives.drop_labels(key, label, settings.class_dropout, settings.num_classes)
  return label


def update(state: TrainState, loss_fn: Callable[[Any], jax.Array], *,
           tx: optax.GradientTransformation, settings: TrainSettings
           ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser update on loss_fn(params); metrics "loss", "grad_norm", "lr"."""
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads, tx, settings.ema_decay, settings.ema_warmup)
  if settings.power_ema_gammas:
    power = posthoc_ema.update(state.extras["power_ema"], new_state.params, state.step,
                               settings.power_ema_gammas)
    new_state = new_state.replace(extras={**new_state.extras, "power_ema": power})
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  if settings.lr_schedule is not None:
    metrics["lr"] = settings.lr_schedule(state.step) * state.lr_scale
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               network: nn.Module, tx: optax.GradientTransformation, schedule: Schedule,
               objective: str, settings: TrainSettings, min_snr_gamma: float = 0.0,
               t_sampling: str = "uniform"
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on the simple loss (Algorithm 1) of `batch`.

  Args:
    state: the train state.
    batch: {"image": [B, H, W, C] in [-1, 1], "label": [B] int}.
    key: the run's constant train key (folded with state.step here).
    network: the network.
    tx: the optimiser (the one `init_state` used).
    schedule: the noise schedule.
    objective: "eps", "x0" or "v".
    settings: the update's hyperparameters.
    min_snr_gamma: > 0 weights the loss by min-SNR-gamma
      (`objectives.min_snr_weight`); 0 = the simple loss.
    t_sampling: how t is drawn (`objectives.sample_timesteps`).

  Returns:
    (new state, {"loss", "grad_norm", "lr"} float32 scalars).
  """
  key = jax.random.fold_in(key, state.step)
  k_loss, k_dropout, k_label = jax.random.split(key, 3)
  x0 = batch["image"].astype(jnp.float32)
  label = train_labels(k_label, batch, settings)

  def loss_fn(params):
    def model_fn(x_t, t):
      return network.apply({"params": params}, x_t, t, label, train=True,
                           rngs={"dropout": k_dropout})
    return objectives.diffusion_loss(model_fn, schedule, x0, k_loss, objective=objective,
                                     min_snr_gamma=min_snr_gamma, t_sampling=t_sampling)

  return update(state, loss_fn, tx=tx, settings=settings)


def denoiser_train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
                        network: nn.Module, tx: optax.GradientTransformation,
                        denoise_mix: float, settings: TrainSettings
                        ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on mean (net((1 - m) x0 + m eps) - x0)^2; see `train_step`.

  Args:
    denoise_mix: m (0.5 in the course).
    (the others as for `train_step`)
  """
  key = jax.random.fold_in(key, state.step)
  k_eps, k_dropout, k_label = jax.random.split(key, 3)
  x0 = batch["image"].astype(jnp.float32)
  label = train_labels(k_label, batch, settings)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  x_in = (1.0 - denoise_mix) * x0 + denoise_mix * eps

  def loss_fn(params):
    x0_hat = network.apply({"params": params}, x_in, None, label, train=True,
                           rngs={"dropout": k_dropout})
    return jnp.mean(jnp.square(x0_hat - x0))

  return update(state, loss_fn, tx=tx, settings=settings)
