"""Training and sampling an EBM by contrastive divergence with a replay buffer.

Pure functions over `core.train_state.TrainState`; the replay buffer is
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

Class-conditional EBMs (JEM, Grathwohl et al. 2020): a network with
`num_classes` = K > 0 outputs E(x, y) = -f(x)[y] [B, K]. CD then trains the
marginal E(x) = -logsumexp_y f(x)[y] on both sides of the loss, with the
chain either on E(x) (the default) or, with `CDSettings.conditional_sampling`,
on E(x, y) for labels carried by a per-class buffer
(`extras["buffer_labels"]`, see `ebm.buffer`): samples of p(x | y) for
balanced y instead of samples of p(x). `CDSettings.ce_weight` > 0 adds JEM's
classifier term, ce_weight · (-mean log p(y | x)) on the labelled data
batch["label"], making the loss JEM's hybrid -log p(x) - log p(y | x).
A scalar network (K = 0) runs exactly the unconditional step above.

Options against mode collapse, each off by default (the step above is then
unchanged), from IGEBM (Du & Mordatch 2019) and Improved CD (Du et al. 2021):

  - `CDSettings.num_chains`: the number of negative chains per step,
    independent of the data batch (with `LangevinSettings.num_steps`: more,
    shorter chains at the same number of energy gradients);
  - `CDSettings.augmentation`: ICD's data-augmentation transitions, random
    shifts / flips / noise of the buffer states before their chains
    continue (`ebm.buffer.Augmentation`);
  - `LangevinSettings.anneal`: step size and noise annealed over the chain
    (`ebm.langevin.annealed_values`);
  - `CDSettings.kl_weight` and `entropy_weight`: ICD's KL term through the
    last Langevin update and its nearest-neighbour entropy term
    (`ebm.losses.kl_last_step`, `ebm.losses.nearest_neighbour_entropy`);
  - spectral normalisation (IGEBM) is a property of the network
    (`spectral_norm` of the energy networks).
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
from ebm.networks import energy_fn_of, marginal_energy, num_classes_of


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
    anneal: schedule of α and σ over the chain, one of
      `langevin.ANNEALING` ("constant" = off).
    step_size_final_factor: α of the last step / α (1 for "constant").
    noise_final_factor: σ of the last step / σ (1 for "constant").
  """
  num_steps: int = 60
  step_size: float = 10.0
  noise_scale: float = 0.005
  grad_clip: float | None = 0.03
  noise_first: bool = False
  x_range: tuple[float, float] | None = (-1.0, 1.0)
  anneal: str = "constant"
  step_size_final_factor: float = 1.0
  noise_final_factor: float = 1.0

  def run(self, energy_fn: Callable[[jax.Array], jax.Array], x0: jax.Array,
          key: jax.Array, *, capture_every: int = 0,
          project_fn: Callable[[jax.Array], jax.Array] | None = None,
          return_last_step: bool = False) -> langevin.LangevinResult:
    """`langevin.langevin_chain` with these settings."""
    return langevin.langevin_chain(
        energy_fn, x0, key, self.num_steps, self.step_size, self.noise_scale,
        self.grad_clip, self.x_range, noise_first=self.noise_first,
        capture_every=capture_every, project_fn=project_fn, anneal=self.anneal,
        step_size_final_factor=self.step_size_final_factor,
        noise_final_factor=self.noise_final_factor, return_last_step=return_last_step)

  def last_step(self, energy_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                z: jax.Array) -> jax.Array:
    """The chain's last update (step K - 1, its annealed α and σ) from x with noise z.

    `run(..., return_last_step=True)` gives x = x_last_input and z = z_last;
    this recomputes its x, differentiably in whatever `energy_fn` closes over.
    """
    alpha = langevin.annealed_values(self.step_size, self.step_size_final_factor,
                                     self.num_steps, self.anneal)[-1]
    sigma = langevin.annealed_values(self.noise_scale, self.noise_final_factor,
                                     self.num_steps, self.anneal)[-1]
    if self.anneal == "constant":   # the chain's own Python floats
      alpha, sigma = self.step_size, self.noise_scale
    if not isinstance(alpha, jax.Array):
      alpha, sigma = float(alpha), float(sigma)
    x_next, _ = langevin.langevin_update(energy_fn, x, z, alpha, sigma,
                                         self.grad_clip, self.x_range,
                                         noise_first=self.noise_first)
    return x_next


@dataclasses.dataclass(frozen=True)
class CDSettings:
  """Static settings of a contrastive-divergence step.

  Attributes:
    langevin: the training chain.
    reinit_fraction: fraction of chains restarted from noise each step.
    reg_alpha: α of the squared-energy regulariser.
    data_noise: std of the Gaussian noise added to data (0 = none).
    ema_decay: EMA decay of the parameters.
    ema_warmup: EMA warm-up (see `core.train_state.ema_decay_at`).
    conditional_sampling: class-conditional networks only: run the training
      chains on E(x, y) with the labels of a per-class buffer (the state
      must come from `init_state(..., per_class_buffer=True)`).
    ce_weight: class-conditional networks only: weight of JEM's
      cross-entropy term -mean log p(y | x) on batch["label"]; 0 = off.
    num_chains: negative chains per step (drawn from the buffer, which must
      hold at least as many slots); 0 = the data batch size.
    augmentation: ICD's transformation of the buffer states before their
      chains continue (`ebm.buffer.Augmentation`); the default is off.
    kl_weight: weight of ICD's KL term E_θ̄(x_K(θ)), differentiated through
      the last Langevin update (`ebm.losses.kl_last_step`); 0 = off.
    entropy_weight: weight of ICD's entropy term: the loss gets
      -entropy_weight · mean log(nearest-neighbour distance) of x_K(θ) to
      `entropy_reference` random buffer states (ICD: 0.3); 0 = off.
    entropy_reference: M, the buffer states the entropy term compares with
      (ICD: 100); a chain's own start slot is excluded.
    kl_chains: the KL and entropy terms use the first kl_chains chains
      (ICD: 32 on MNIST, 128 on CIFAR-10), the second-order pass being the
      expensive part; 0 = all.
  """
  langevin: LangevinSettings = LangevinSettings()
  reinit_fraction: float = 0.05
  reg_alpha: float = 0.1
  data_noise: float = 0.005
  ema_decay: float = 0.999
  ema_warmup: bool = True
  conditional_sampling: bool = False
  ce_weight: float = 0.0
  num_chains: int = 0
  augmentation: replay.Augmentation = replay.Augmentation()
  kl_weight: float = 0.0
  entropy_weight: float = 0.0
  entropy_reference: int = 100
  kl_chains: int = 0

  def chains(self, batch_size: int) -> int:
    """Number of negative chains per step for a data batch of `batch_size`."""
    return self.num_chains or batch_size

  @property
  def last_step_terms(self) -> bool:
    """Whether the loss differentiates through the last Langevin update."""
    return self.kl_weight > 0 or self.entropy_weight > 0


def init_state(key: jax.Array, batch: dict[str, jax.Array], *, network: nn.Module,
               tx: optax.GradientTransformation, buffer_size: int,
               per_class_buffer: bool = False) -> TrainState:
  """Parameters, optimiser state and a uniform-noise replay buffer.

  Args:
    key: PRNG key.
    batch: example batch; only the shape of batch["image"] [B, H, W, C] is used.
    network: the energy network.
    tx: the optimiser.
    buffer_size: N, number of buffer slots.
    per_class_buffer: also keep the slots' labels (for
      `CDSettings.conditional_sampling`; class-conditional networks only).

  Returns:
    TrainState with extras = {"buffer": [N, H, W, C] uniform in [-1, 1]},
    plus "buffer_labels": int32 [N] (slot i has class i mod K) with a
    per-class buffer.
  """
  if per_class_buffer and not num_classes_of(network):
    raise ValueError("per_class_buffer needs a class-conditional network (num_classes > 0)")
  k_params, k_buffer = jax.random.split(key)
  image = jnp.asarray(batch["image"])
  params = network.init(k_params, jnp.zeros((1,) + image.shape[1:], jnp.float32))["params"]
  buf = replay.init_buffer(k_buffer, buffer_size, image.shape[1:])
  extras = {"buffer": buf}
  if per_class_buffer:
    extras["buffer_labels"] = replay.init_labels(buffer_size, num_classes_of(network))
  return TrainState.create(params, tx, extras=extras)


def _check_settings(network: nn.Module, settings: CDSettings, state: TrainState,
                    batch: dict[str, jax.Array]) -> int:
  """K of the network, after checking the class options fit it and the state."""
  k = num_classes_of(network)
  if not k and (settings.conditional_sampling or settings.ce_weight):
    raise ValueError(f"conditional_sampling / ce_weight need a class-conditional network; "
                     f"{type(network).__name__} has num_classes = 0")
  if settings.conditional_sampling and "buffer_labels" not in state.extras:
    raise ValueError("conditional_sampling needs a per-class buffer: state.extras has no "
                     "'buffer_labels' (init_state(..., per_class_buffer=True))")
  if settings.ce_weight and "label" not in batch:
    raise ValueError(f"ce_weight = {settings.ce_weight} needs batch['label']")
  n_buffer = state.extras["buffer"].shape[0]
  n_chains = settings.chains(batch["image"].shape[0])
  if n_chains > n_buffer:
    raise ValueError(f"num_chains = {n_chains} exceeds the buffer's {n_buffer} slots")
  if settings.last_step_terms and settings.langevin.num_steps < 1:
    raise ValueError("kl_weight / entropy_weight need a chain of >= 1 step")
  if settings.entropy_weight and not 2 <= settings.entropy_reference <= n_buffer:
    raise ValueError(f"entropy_reference = {settings.entropy_reference} must be in "
                     f"[2, {n_buffer}] (the buffer's slots)")
  return k


def _last_step_loss(settings: CDSettings, energy_fn_of_params, params, chain, buffer,
                    idx, key) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Improved CD's KL and entropy terms on the first kl_chains chains.

  Args:
    settings: the CD settings.
    energy_fn_of_params: (θ, n) -> E_θ of the first n chains.
    params: θ.
    chain: the `LangevinResult` of the step's chains (with the last step).
    buffer: the buffer before this step's push [N, ...].
    idx: the chains' slots [num_chains].
    key: PRNG key of the entropy term's reference slots.

  Returns:
    (weighted sum, metrics {"kl": mean E_θ̄(x_K)} plus
    {"entropy_nn": mean log nearest-neighbour distance} when that term is on).
  """
  n = min(settings.kl_chains or chain.x.shape[0], chain.x.shape[0])
  z = chain.z_last[:n]

  def last_step(energy_fn, x):
    return settings.langevin.last_step(energy_fn, x, z)

  kl, x_final = losses.kl_last_step(lambda p: energy_fn_of_params(p, n), params,
                                    chain.x_last_input[:n], last_step)
  loss = settings.kl_weight * kl
  aux = {"kl": kl}
  if settings.entropy_weight:
    ref = jax.random.choice(key, buffer.shape[0], (settings.entropy_reference,),
                            replace=False).astype(jnp.int32)
    # A chain's own start state is one Langevin run away from it, not a
    # neighbour: dropped (the references are distinct, so with M >= 2 every
    # chain keeps at least one).
    own = idx[:n, None] == ref[None, :]
    entropy = losses.nearest_neighbour_entropy(x_final, buffer[ref], exclude=own)
    loss = loss - settings.entropy_weight * entropy
    aux["entropy_nn"] = entropy
  return loss, aux


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
    parameter gradient, before clipping); "kl" (mean E_θ̄(x_K) of ICD's KL
    term) when kl_weight or entropy_weight > 0, "entropy_nn" (mean log
    nearest-neighbour distance) when entropy_weight > 0; "loss" includes
    both weighted terms. For a class-conditional network
    the energies are the marginal E(x), and when batch["label"] is given
    "ce" (-mean log p(y | x) on the data) and "accuracy" are added; "loss"
    includes ce_weight · ce.
  """
  k = _check_settings(network, settings, state, batch)
  key = jax.random.fold_in(key, state.step)
  k_draw, k_chain, k_data = jax.random.split(key, 3)
  x_data = batch["image"].astype(jnp.float32)
  batch_size = x_data.shape[0]
  num_chains = settings.chains(batch_size)

  extras = dict(state.extras)
  if settings.conditional_sampling:
    x0, y_neg, idx = replay.draw_labelled(state.extras["buffer"], state.extras["buffer_labels"],
                                          k_draw, num_chains, settings.reinit_fraction,
                                          settings.augmentation)
  else:
    x0, idx = replay.draw(state.extras["buffer"], k_draw, num_chains,
                          settings.reinit_fraction, settings.augmentation)
    y_neg = None

  def energy_fn_of_params(params, n=num_chains):
    """E_params of the first n chains (their labels with conditional sampling)."""
    return energy_fn_of(network, params, label=None if y_neg is None else y_neg[:n])

  chain = settings.langevin.run(energy_fn_of_params(state.params), x0, k_chain,
                                return_last_step=settings.last_step_terms)
  x_neg = jax.lax.stop_gradient(chain.x)
  x_pos = x_data
  if settings.data_noise > 0:
    x_pos = x_pos + settings.data_noise * jax.random.normal(k_data, x_pos.shape)
    x_pos = jnp.clip(x_pos, -1.0, 1.0)

  def cd_loss_fn(params):
    energies = network.apply({"params": params}, jnp.concatenate([x_pos, x_neg], axis=0))
    if not k:
      return losses.cd_loss(energies[:batch_size], energies[batch_size:], settings.reg_alpha)
    e = marginal_energy(energies)
    loss, aux = losses.cd_loss(e[:batch_size], e[batch_size:], settings.reg_alpha)
    if "label" in batch:
      # On the (noised) data of the CD term: one forward pass serves both.
      ce, accuracy = losses.jem_cross_entropy(energies[:batch_size], batch["label"])
      aux = dict(aux, ce=ce, accuracy=accuracy)
      if settings.ce_weight:
        loss = loss + settings.ce_weight * ce
    return loss, aux

  def loss_fn(params):
    loss, aux = cd_loss_fn(params)
    if settings.last_step_terms:
      # The chains' energy (marginal or per-class, as sampled) is the KL's target.
      extra, extra_aux = _last_step_loss(settings, energy_fn_of_params, params, chain,
                                         state.extras["buffer"], idx,
                                         jax.random.fold_in(k_draw, 7))
      loss = loss + extra
      aux = dict(aux, **extra_aux)
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if settings.conditional_sampling:
    extras["buffer"], extras["buffer_labels"] = replay.push_labelled(
        state.extras["buffer"], state.extras["buffer_labels"], idx, x_neg, y_neg)
  else:
    extras["buffer"] = replay.push(state.extras["buffer"], idx, x_neg)
  new_state = state.apply_gradients(grads, tx, settings.ema_decay, settings.ema_warmup,
                                    extras=extras)
  metrics = {"loss": loss, **aux, "langevin_grad_norm": chain.grad_norm,
             "grad_norm": optax.tree.norm(grads)}
  return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def sample(params: Any, key: jax.Array, num: int, *, network: nn.Module,
           image_shape: Sequence[int], langevin_settings: LangevinSettings,
           init: jax.Array | None = None, capture_every: int = 0,
           labels: jax.Array | None = None):
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
    labels: class-conditional networks: int [num] (or a scalar) classes to
      sample, the chain runs on E(x, y); None = the marginal E(x).

  Returns:
    images [num, H, W, C] in x_range, or (images, trajectory) with trajectory
    [steps // c + 1, num, H, W, C] (entry 0 = the start) when c > 0.
  """
  k_init, k_chain = jax.random.split(key)
  x0 = replay.uniform_images(k_init, num, image_shape) if init is None else init
  result = langevin_settings.run(energy_fn_of(network, params, label=labels), x0, k_chain,
                                 capture_every=capture_every)
  if capture_every > 0:
    return result.x, result.trajectory
  return result.x


def sample_from_buffer(state: TrainState, key: jax.Array, num: int, *, network: nn.Module,
                       langevin_settings: LangevinSettings, capture_every: int = 0,
                       labels: jax.Array | None = None):
  """`num` distinct buffer entries, each continued for the settings' num_steps.

  The chains use `state.params` (the parameters that produced the buffer);
  num_steps = 0 returns the buffer entries themselves. With `labels`, a
  per-class buffer gives entries of the requested classes (distinct while
  a class has enough slots, `ebm.buffer.slots_of_classes`); any other buffer
  gives random entries; either way they are continued on E(x, y).

  Args:
    state: a train state with extras["buffer"] [N, H, W, C], N >= num.
    key: PRNG key.
    num: number of samples (static).
    network: the energy network.
    langevin_settings: the continuation chain.
    capture_every: as in `sample`.
    labels: as in `sample`: int [num] or a scalar.

  Returns:
    As `sample`.
  """
  k_draw, k_chain = jax.random.split(key)
  if labels is not None and "buffer_labels" in state.extras:
    y = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (num,))
    x0 = state.extras["buffer"][replay.slots_of_classes(state.extras["buffer_labels"],
                                                        k_draw, y)]
  else:
    x0, _ = replay.draw(state.extras["buffer"], k_draw, num, 0.0)
  return sample(state.params, k_chain, num, network=network,
                image_shape=x0.shape[1:], langevin_settings=langevin_settings,
                init=x0, capture_every=capture_every, labels=labels)
