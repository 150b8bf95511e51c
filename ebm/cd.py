"""Training and sampling an EBM by contrastive divergence with a replay buffer.

Pure functions over `ddpm.train_state.TrainState`; the replay buffer is
`state.extras["buffer"]` [N, H, W, C]. Hyperparameters are frozen dataclasses
(`LangevinSettings`, `CDSettings`) passed as keyword arguments and bound by
the task, so every function here jit-compiles with them static.

One training step (`train_step`), as in the UvA tutorial 8:

  1. key ← fold_in(key, step); draw B chains from the buffer, ~5% restarted
     from U[-1, 1];
  2. run the Langevin chain on the current E (gradients w.r.t. x only) and
     stop_gradient the samples x⁻;
  3. x⁺ = clip(data + N(0, data_noise²)) (the tutorial's small noise on data);
  4. L = mean E(x⁺) - mean E(x⁻) + α(mean E(x⁺)² + mean E(x⁻)²), one forward
     pass on [x⁺; x⁻]; one optimiser update (Adam β1 = 0, clipping: the
     optimiser is built by the task);
  5. write x⁻ back into the buffer slots.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core.train_state import TrainState
from ebm import buffer as replay
from ebm import langevin
from ebm import losses
from ebm.networks import energy_fn_of


@dataclasses.dataclass(frozen=True)
class LangevinSettings:
  """Static settings of a Langevin chain (see `ebm.langevin`).

  Attributes:
    num_steps: chain length.
    step_size: α.
    noise_scale: σ.
    grad_clip: elementwise gradient bound; None = off.
    noise_first: the tutorial's order (noise, then the gradient step).
    x_range: clip range of the states; None = off.
  """
  num_steps: int = 60
  step_size: float = 10.0
  noise_scale: float = 0.005
  grad_clip: float | None = 0.03
  noise_first: bool = False
  x_range: tuple[float, float] | None = (-1.0, 1.0)

  def run(self, energy_fn: Callable[[jax.Array], jax.Array], x0: jax.Array,
          key: jax.Array, *, capture_every: int = 0,
          project_fn: Callable[[jax.Array], jax.Array] | None = None
          ) -> langevin.LangevinResult:
    """`langevin.langevin_chain` with these settings."""
    return langevin.langevin_chain(
        energy_fn, x0, key, self.num_steps, self.step_size, self.noise_scale,
        self.grad_clip, self.x_range, noise_first=self.noise_first,
        capture_every=capture_every, project_fn=project_fn)


@dataclasses.dataclass(frozen=True)
class CDSettings:
  """Static settings of a contrastive-divergence step.

  Attributes:
    langevin: the training chain.
    reinit_fraction: fraction of chains restarted from noise each step.
    reg_alpha: α of the squared-energy regulariser.
    data_noise: std of the Gaussian noise added to data (0 = none).
    ema_decay: EMA decay of the parameters.
    ema_warmup: EMA warm-up (see `ddpm.train_state.ema_decay_at`).
  """
  langevin: LangevinSettings = LangevinSettings()
  reinit_fraction: float = 0.05
  reg_alpha: float = 0.1
  data_noise: float = 0.005
  ema_decay: float = 0.999
  ema_warmup: bool = True


def init_state(key: jax.Array, batch: dict[str, jax.Array], *, network: nn.Module,
               tx: optax.GradientTransformation, buffer_size: int) -> TrainState:
  """Parameters, optimiser state and a uniform-noise replay buffer.

  Args:
    key: PRNG key.
    batch: example batch; only the shape of batch["image"] [B, H, W, C] is used.
    network: the energy network.
    tx: the optimiser.
    buffer_size: N, number of buffer slots.

  Returns:
    TrainState with extras = {"buffer": [N, H, W, C] uniform in [-1, 1]}.
  """
  k_params, k_buffer = jax.random.split(key)
  image = jnp.asarray(batch["image"])
  params = network.init(k_params, jnp.zeros((1,) + image.shape[1:], jnp.float32))["params"]
  buf = replay.init_buffer(k_buffer, buffer_size, image.shape[1:])
  return TrainState.create(params, tx, extras={"buffer": buf})


def train_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *,
               network: nn.Module, tx: optax.GradientTransformation,
               settings: CDSettings) -> tuple[TrainState, dict[str, jax.Array]]:
  """One contrastive-divergence update (see the module docstring).

  Args:
    state: the train state; extras["buffer"] [N, H, W, C].
    batch: {"image": [B, H, W, C] in [-1, 1], ...}.
    key: the run's constant train key (folded with state.step here).
    network: the energy network.
    tx: the optimiser (the one `init_state` used).
    settings: the CD hyperparameters.

  Returns:
    (new state, metrics) with float32 scalar metrics: "loss", "cd", "reg",
    "energy_pos", "energy_neg" (means over the batch), "langevin_grad_norm"
    (mean L2 norm of ∇ₓE along the chain), "grad_norm" (global norm of the
    parameter gradient, before clipping).
  """
  key = jax.random.fold_in(key, state.step)
  k_draw, k_chain, k_data = jax.random.split(key, 3)
  x_data = batch["image"].astype(jnp.float32)
  batch_size = x_data.shape[0]

  x0, idx = replay.draw(state.extras["buffer"], k_draw, batch_size,
                        settings.reinit_fraction)
  chain = settings.langevin.run(energy_fn_of(network, state.params), x0, k_chain)
  x_neg = jax.lax.stop_gradient(chain.x)
  x_pos = x_data
  if settings.data_noise > 0:
    x_pos = x_pos + settings.data_noise * jax.random.normal(k_data, x_pos.shape)
    x_pos = jnp.clip(x_pos, -1.0, 1.0)

  def loss_fn(params):
    energies = network.apply({"params": params}, jnp.concatenate([x_pos, x_neg], axis=0))
    return losses.cd_loss(energies[:batch_size], energies[batch_size:], settings.reg_alpha)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_buffer = replay.push(state.extras["buffer"], idx, x_neg)
  extras = dict(state.extras, buffer=new_buffer)
  new_state = state.apply_gradients(grads, tx, settings.ema_decay, settings.ema_warmup,
                                    extras=extras)
  metrics = {"loss": loss, **aux, "langevin_grad_norm": chain.grad_norm,
             "grad_norm": optax.tree.norm(grads)}
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def sample(params: Any, key: jax.Array, num: int, *, network: nn.Module,
           image_shape: Sequence[int], langevin_settings: LangevinSettings,
           init: jax.Array | None = None, capture_every: int = 0):
  """Langevin samples of E_params, from uniform noise or from `init`.

  Args:
    params: network parameters.
    key: PRNG key.
    num: number of samples (static).
    network: the energy network.
    image_shape: (H, W, C).
    langevin_settings: the chain (typically long: e.g. 256 steps).
    init: optional start states [num, H, W, C] (e.g. buffer samples or
      corrupted images); default U[-1, 1].
    capture_every: c > 0 also returns every c-th state.

  Returns:
    images [num, H, W, C] in x_range, or (images, trajectory) with trajectory
    [steps // c + 1, num, H, W, C] (entry 0 = the start) when c > 0.
  """
  k_init, k_chain = jax.random.split(key)
  x0 = replay.uniform_images(k_init, num, image_shape) if init is None else init
  result = langevin_settings.run(energy_fn_of(network, params), x0, k_chain,
                                 capture_every=capture_every)
  if capture_every > 0:
    return result.x, result.trajectory
  return result.x


def sample_from_buffer(state: TrainState, key: jax.Array, num: int, *, network: nn.Module,
                       langevin_settings: LangevinSettings, capture_every: int = 0):
  """`num` distinct buffer entries, each continued for the settings' num_steps.

  The chains use `state.params` (the parameters that produced the buffer);
  num_steps = 0 returns the buffer entries themselves.

  Args:
    state: a train state with extras["buffer"] [N, H, W, C], N >= num.
    key: PRNG key.
    num: number of samples (static).
    network: the energy network.
    langevin_settings: the continuation chain.
    capture_every: as in `sample`.

  Returns:
    As `sample`.
  """
  k_draw, k_chain = jax.random.split(key)
  x0, _ = replay.draw(state.extras["buffer"], k_draw, num, 0.0)
  return sample(state.params, k_chain, num, network=network,
                image_shape=x0.shape[1:], langevin_settings=langevin_settings,
                init=x0, capture_every=capture_every)
