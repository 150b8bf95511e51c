"""The "ebm" task: an energy-based model trained by contrastive divergence.

`build(config)` validates every key the task reads (raising `ConfigError`
that names the key), turns the config into typed objects (the energy network
from `ebm.networks.NETWORKS`, the optimiser, `ebm.cd` settings) and returns an
`EBMTask` implementing the task protocol of `launch.tasks`.

Config keys read: data.name, data.pad_to_32; model.name, model.ch,
model.ch_mult, model.num_res_blocks, model.activation, model.spectral_norm,
model.dtype; ebm.*; optim.*; train.batch_size; sample.steps, sample.use_ema.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from core.train_state import TrainState
from ebm import buffer as replay
from ebm import cd
from ebm import langevin
from ebm import ood
from ebm.networks import ACTIVATIONS, NETWORKS, energy_fn_of, make_network
from launch import data as data_lib
from launch.config_errors import (ConfigError, check_bool, check_choice, check_int,
                                  check_number, check_range)
from launch.tasks import common as common_lib

_DTYPES = common_lib.DTYPES


def _cnn_fields(model) -> dict[str, Any]:
  return {"c_hid": check_int("model.ch", model.ch, 2),
          "spectral_norm": check_bool("model.spectral_norm", model.spectral_norm)}


def _resnet_fields(model) -> dict[str, Any]:
  ch_mult = tuple(model.ch_mult)
  if not ch_mult or not all(isinstance(m, numbers.Integral) and m >= 1 for m in ch_mult):
    raise ConfigError("model.ch_mult", model.ch_mult, allowed="a non-empty tuple of integers >= 1")
  return {
      "ch": check_int("model.ch", model.ch, 1),
      "ch_mult": ch_mult,
      "num_res_blocks": check_int("model.num_res_blocks", model.num_res_blocks, 1),
      "spectral_norm": check_bool("model.spectral_norm", model.spectral_norm),
  }


# network name -> typed fields from config.model (beyond activation and dtype).
_NETWORK_FIELDS = {
    "cnn_tutorial": _cnn_fields,
    "resnet_igebm": _resnet_fields,
}


def _network_spec(model) -> tuple[str, dict[str, Any]]:
  """Validated (name, typed fields) of the energy network."""
  name = check_choice("model.name", model.name, tuple(sorted(NETWORKS)))
  fields = _NETWORK_FIELDS[name](model)
  fields["activation"] = check_choice("model.activation", model.activation,
                                      tuple(sorted(ACTIVATIONS)))
  fields["dtype"] = _DTYPES[check_choice("model.dtype", model.dtype, tuple(_DTYPES))]
  return name, fields


def _langevin(ebm_cfg, num_steps: int) -> cd.LangevinSettings:
  grad_clip = check_number("ebm.grad_clip", ebm_cfg.grad_clip, lo=0)
  return cd.LangevinSettings(
      num_steps=num_steps,
      step_size=float(check_number("ebm.step_size", ebm_cfg.step_size, lo=0, lo_open=True)),
      noise_scale=float(check_number("ebm.noise_scale", ebm_cfg.noise_scale, lo=0)),
      grad_clip=float(grad_clip) if grad_clip > 0 else None,
      noise_first=check_bool("ebm.noise_first", ebm_cfg.noise_first),
      **_anneal_fields(ebm_cfg),
  )


# --- IGEBM / Improved CD options (ebm.anneal ... ebm.kl_chains), all off by default. ---

def _anneal_fields(e) -> dict[str, Any]:
  """LangevinSettings fields of ebm.anneal, ebm.step_size_final_factor, ebm.noise_final_factor."""
  anneal = check_choice("ebm.anneal", e.anneal, langevin.ANNEALING)
  step_factor = float(check_number("ebm.step_size_final_factor", e.step_size_final_factor,
                                   lo=0, lo_open=True))
  noise_factor = float(check_number("ebm.noise_final_factor", e.noise_final_factor,
                                    lo=0, lo_open=anneal == "geometric"))
  if anneal == "constant":
    for key, value in (("ebm.step_size_final_factor", step_factor),
                       ("ebm.noise_final_factor", noise_factor)):
      if value != 1.0:
        raise ConfigError(key, value, reason="has no effect with ebm.anneal='constant' "
                          "(set ebm.anneal to 'linear' or 'geometric')")
  return {"anneal": anneal, "step_size_final_factor": step_factor,
          "noise_final_factor": noise_factor}


def _improved_cd_fields(e, batch_size: int, buffer_size: int) -> dict[str, Any]:
  """CDSettings fields of ebm.num_chains, ebm.augment_*, ebm.kl_weight, ebm.entropy_*,
  ebm.kl_chains (see `ebm.cd`)."""
  num_chains = check_int("ebm.num_chains", e.num_chains, 0)
  if (num_chains or batch_size) > buffer_size:
    raise ConfigError("ebm.num_chains", num_chains,
                      allowed=f"0 or an integer <= ebm.buffer_size ({buffer_size})",
                      reason="each step draws that many distinct buffer slots")
  kl_weight = float(check_number("ebm.kl_weight", e.kl_weight, lo=0))
  entropy_weight = float(check_number("ebm.entropy_weight", e.entropy_weight, lo=0))
  entropy_reference = check_int("ebm.entropy_reference", e.entropy_reference, 2)
  if entropy_weight and entropy_reference > buffer_size:
    raise ConfigError("ebm.entropy_reference", entropy_reference,
                      allowed=f"an integer in [2, ebm.buffer_size ({buffer_size})]")
  return {
      "num_chains": num_chains,
      "augmentation": replay.Augmentation(
          max_shift=check_int("ebm.augment_shift", e.augment_shift, 0, 8),
          flip=check_bool("ebm.augment_flip", e.augment_flip),
          noise_std=float(check_number("ebm.augment_noise", e.augment_noise, lo=0, hi=1))),
      "kl_weight": kl_weight,
      "entropy_weight": entropy_weight,
      "entropy_reference": entropy_reference,
      "kl_chains": check_int("ebm.kl_chains", e.kl_chains, 0),
  }


def _override(chain: cd.LangevinSettings, steps: int | None = None,
              step_size: float | None = None, noise_scale: float | None = None,
              grad_clip: float | None = None, noise_first: bool | None = None
              ) -> cd.LangevinSettings:
  """`chain` with the given options replaced (None = keep; grad_clip 0 = off)."""
  changes = {"num_steps": steps, "step_size": step_size, "noise_scale": noise_scale,
             "noise_first": noise_first}
  changes = {k: v for k, v in changes.items() if v is not None}
  if grad_clip is not None:
    changes["grad_clip"] = float(grad_clip) if grad_clip > 0 else None
  return dataclasses.replace(chain, **changes)


@functools.partial(jax.jit, static_argnames=(
    "num", "network", "image_shape", "langevin_settings", "capture_every"))
def _sample_jit(params, key, init, *, num, network, image_shape, langevin_settings,
                capture_every):
  return cd.sample(params, key, num, network=network, image_shape=image_shape,
                   langevin_settings=langevin_settings, init=init,
                   capture_every=capture_every)


@functools.partial(jax.jit, static_argnames=(
    "num", "network", "langevin_settings", "capture_every"))
def _sample_from_buffer_jit(state, key, *, num, network, langevin_settings, capture_every):
  return cd.sample_from_buffer(state, key, num, network=network,
                               langevin_settings=langevin_settings,
                               capture_every=capture_every)


@dataclasses.dataclass(frozen=True, eq=False)
class EBMTask:
  """The EBM task protocol over typed fields (see `launch.tasks`).

  Attributes:
    network: the energy network (E low on data).
    tx: the optimiser (Adam, β1 = 0 in the EBM configs).
    settings: contrastive-divergence settings, including the training chain.
    sample_langevin: default chain of `sample` (sample.steps steps, 0 = the long
      ebm.sample_steps): the task's sampling spec.
    image_shape: (H, W, C).
    buffer_size: replay-buffer slots N.
    use_ema: `sample_params` returns the EMA parameters.
    num_classes: 0 (unconditional).
  """
  network: nn.Module
  tx: optax.GradientTransformation
  settings: cd.CDSettings
  sample_langevin: cd.LangevinSettings
  image_shape: tuple[int, int, int]
  buffer_size: int
  use_ema: bool = False
  num_classes: int = 0

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Parameters, optimiser state and the buffer [N, H, W, C] ~ U[-1, 1]."""
    return cd.init_state(key, batch, network=self.network, tx=self.tx,
                         buffer_size=self.buffer_size)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One CD step; metrics: loss, cd, reg, energy_pos, energy_neg,
    langevin_grad_norm, grad_norm."""
    return cd.train_step(state, batch, key, network=self.network, tx=self.tx,
                         settings=self.settings)

  def sample(self, params: Any, key: jax.Array, num: int, *, steps: int | None = None,
             step_size: float | None = None, noise_scale: float | None = None,
             grad_clip: float | None = None, noise_first: bool | None = None,
             capture_every: int = 0, init: jax.Array | None = None):
    """Langevin samples from uniform noise (or from `init`), one compiled chain.

    Args:
      params: network parameters (`sample_params(state)`).
      key: PRNG key.
      num: number of images.
      steps, step_size, noise_scale, grad_clip, noise_first: override the
        default chain (ebm.sample_steps steps and the ebm.* settings);
        grad_clip = 0 turns clipping off. None = default.
      capture_every: c > 0 also returns every c-th state.
      init: start states [num, H, W, C] instead of U[-1, 1].

    Returns:
      images [num, H, W, C] in [-1, 1]; with capture_every = c > 0, the pair
      (images, trajectory [steps // c + 1, num, H, W, C]), trajectory[0] the
      start.
    """
    chain = _override(self.sample_langevin, steps, step_size, noise_scale, grad_clip,
                      noise_first)
    return _sample_jit(params, key, init, num=num, network=self.network,
                       image_shape=tuple(self.image_shape), langevin_settings=chain,
                       capture_every=capture_every)

  def sample_from_buffer(self, state: TrainState, key: jax.Array, num: int,
                         steps: int = 0, *, capture_every: int = 0, **options):
    """`num` distinct replay-buffer entries, continued for `steps` more steps.

    The continuation uses `state.params` (which produced the buffer) and the
    training chain's settings unless overridden by `options` (step_size,
    noise_scale, grad_clip, noise_first). steps = 0 returns the entries as
    they are. Returns as `sample`.
    """
    chain = _override(self.settings.langevin, steps, **options)
    return _sample_from_buffer_jit(state, key, num=num, network=self.network,
                                   langevin_settings=chain, capture_every=capture_every)

  def sample_options(self, config=None) -> dict[str, Any]:
    """The options `sample` uses by default (the task was built from `config`, so the
    argument adds nothing): the chain's steps (config.sample.steps, 0 = ebm.sample_steps)."""
    del config
    return {"steps": self.sample_langevin.num_steps}

  def describe_sampling(self, options: dict[str, Any]) -> dict[str, Any]:
    """The sampler fields of an evaluation record of `sample(**options)`."""
    chain = _override(self.sample_langevin, options.get("steps"), options.get("step_size"),
                      options.get("noise_scale"))
    record = {"sampler": "langevin", "steps": int(chain.num_steps),
              "step_size": float(chain.step_size), "noise_scale": float(chain.noise_scale)}
    if chain.anneal != "constant":
      record.update(anneal=chain.anneal, step_size_final_factor=chain.step_size_final_factor,
                    noise_final_factor=chain.noise_final_factor)
    return record

  def sample_params(self, state: TrainState) -> Any:
    """EMA parameters if sample.use_ema, else the current ones (as the tutorial)."""
    return state.ema_params if self.use_ema else state.params

  def energy(self, params: Any, x: jax.Array) -> jax.Array:
    """E(x) [B] of images x [B, H, W, C] (low on data; the OOD score)."""
    return self.network.apply({"params": params}, x)

  def ood_evaluate(self, params: Any, x_in: jax.Array, key: jax.Array,
                   batch_size: int = 256) -> dict[str, jax.Array]:
    """AUROC of E as OOD score, test images vs `ebm.ood.make_ood_sets`."""
    return _ood_jit(params, x_in, key, network=self.network, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("network", "batch_size"))
def _ood_jit(params, x_in, key, *, network, batch_size):
  return ood.ood_evaluate(energy_fn_of(network, params), x_in, key, batch_size)


def build(config) -> EBMTask:
  """Validates every key the task reads, then builds the EBM task."""
  image_shape = data_lib.image_shape(config.data)
  net_name, net_fields = _network_spec(config.model)
  e = config.ebm
  batch_size = check_int("train.batch_size", config.train.batch_size, 1)
  buffer_size = check_int("ebm.buffer_size", e.buffer_size, 1)
  if buffer_size < batch_size:
    raise ConfigError("ebm.buffer_size", buffer_size,
                      allowed=f"an integer >= train.batch_size ({batch_size})",
                      reason="each step draws a batch of distinct buffer slots")
  train_steps = check_int("ebm.langevin_steps", e.langevin_steps, 1)
  sample_steps = check_int("ebm.sample_steps", e.sample_steps, 1)
  settings = cd.CDSettings(
      langevin=_langevin(e, train_steps),
      reinit_fraction=float(check_number("ebm.reinit_fraction", e.reinit_fraction, lo=0, hi=1)),
      reg_alpha=float(check_number("ebm.reg_alpha", e.reg_alpha, lo=0)),
      data_noise=float(check_number("ebm.data_noise", e.data_noise, lo=0)),
      ema_decay=float(check_number("optim.ema_decay", config.optim.ema_decay, lo=0, hi=1)),
      ema_warmup=check_bool("optim.ema_warmup", config.optim.ema_warmup),
      **_improved_cd_fields(e, batch_size, buffer_size))
  tx = common_lib.optimizer(config)
  sample_steps = check_int("sample.steps", config.sample.steps, 0) or sample_steps
  use_ema = check_bool("sample.use_ema", config.sample.use_ema)
  return EBMTask(
      network=make_network(net_name, **net_fields),
      tx=tx,
      settings=settings,
      sample_langevin=dataclasses.replace(settings.langevin, num_steps=sample_steps),
      image_shape=image_shape,
      buffer_size=buffer_size,
      use_ema=use_ema)
