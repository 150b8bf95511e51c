"""The "ebm" task from a config: an energy-based model trained by contrastive divergence.

`build(config)` validates every key the task reads (raising `ConfigError`
that names the key), turns the config into typed objects (the energy network
from `ebm.networks.NETWORKS`, the optimiser, `ebm.cd` settings, the
restoration protocol) and returns an `ebm.task.EBMTask`, which implements
the task protocol of `launch.tasks` (training, sampling by label, energies,
inpainting, denoising: see ebm/task.py).

Config keys read: data.name, data.pad_to_32; model.name, model.ch,
model.ch_mult, model.num_res_blocks, model.activation, model.spectral_norm,
model.num_classes, model.dtype; ebm.*; optim.*; train.batch_size;
sample.steps, sample.label, sample.use_ema; eval.restore_num,
eval.inpaint_box, eval.inpaint_steps, eval.denoise_sigma, eval.denoise_steps.

Class-conditional EBMs (JEM): model.num_classes = K (the dataset's number of
classes; 0 = one scalar energy), ebm.conditional_sampling (chains on
E(x, y) from a per-class buffer), ebm.ce_weight (JEM's cross-entropy);
sample.label: -1 = classes in turn, k = class k.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from ebm import buffer as replay
from ebm import cd
from ebm import langevin
from ebm import ood
from ebm import task as task_lib
from ebm.networks import ACTIVATIONS, NETWORKS, make_network
from launch import data as data_lib
from launch.config_errors import (ConfigError, check_bool, check_choice, check_int,
                                  check_ints, check_number)
from launch.tasks import common as common_lib

_DTYPES = common_lib.DTYPES
_FROM_CONFIG = object()   # `sample(label=...)` not given: config.sample.label


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


# network name -> typed fields from config.model (beyond activation, classes and dtype).
_NETWORK_FIELDS = {
    "cnn_tutorial": _cnn_fields,
    "resnet_igebm": _resnet_fields,
}


def _num_classes(config) -> int:
  """model.num_classes: 0, or the dataset's number of classes."""
  k = check_int("model.num_classes", config.model.num_classes, 0)
  dataset_k = len(data_lib.class_names(config.data.name))
  if k and k != dataset_k:
    raise ConfigError("model.num_classes", k,
                      allowed=f"0 (unconditional) or {dataset_k}, the classes of "
                              f"{config.data.name}" if dataset_k else "0",
                      reason="a class-conditional energy has one output per class of the data")
  return k


def _network_spec(config) -> tuple[str, dict[str, Any]]:
  """Validated (name, typed fields) of the energy network."""
  model = config.model
  name = check_choice("model.name", model.name, tuple(sorted(NETWORKS)))
  fields = _NETWORK_FIELDS[name](model)
  fields["activation"] = check_choice("model.activation", model.activation,
                                      tuple(sorted(ACTIVATIONS)))
  fields["num_classes"] = _num_classes(config)
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


def _restoration(config, image_shape) -> task_lib.Restoration:
  ev = config.eval
  h, w = image_shape[:2]
  box = check_ints("eval.inpaint_box", ev.inpaint_box, lo=0, allow_empty=True)
  if not box:   # the centred box of half the side
    box = (h // 4, w // 4, h // 2, w // 2)
  if len(box) != 4:
    raise ConfigError("eval.inpaint_box", ev.inpaint_box,
                      allowed="() (the centred half-side box) or (top, left, height, width)")
  try:
    ood.box_mask(image_shape, *box)
  except ValueError as e:
    raise ConfigError("eval.inpaint_box", ev.inpaint_box, reason=str(e)) from None
  return task_lib.Restoration(
      num=check_int("eval.restore_num", ev.restore_num, 0),
      box=tuple(int(b) for b in box),
      inpaint_steps=check_int("eval.inpaint_steps", ev.inpaint_steps, 0),
      denoise_sigma=float(check_number("eval.denoise_sigma", ev.denoise_sigma, lo=0,
                                       lo_open=True)),
      denoise_steps=check_int("eval.denoise_steps", ev.denoise_steps, 0))


def build(config) -> task_lib.EBMTask:
  """Validates every key the task reads, then builds the EBM task."""
  image_shape = data_lib.image_shape(config.data)
  net_name, net_fields = _network_spec(config)
  k = net_fields["num_classes"]
  e = config.ebm
  batch_size = check_int("train.batch_size", config.train.batch_size, 1)
  buffer_size = check_int("ebm.buffer_size", e.buffer_size, 1)
  if buffer_size < batch_size:
    raise ConfigError("ebm.buffer_size", buffer_size,
                      allowed=f"an integer >= train.batch_size ({batch_size})",
                      reason="each step draws a batch of distinct buffer slots")
  conditional_sampling = check_bool("ebm.conditional_sampling", e.conditional_sampling)
  if conditional_sampling and not k:
    raise ConfigError("ebm.conditional_sampling", e.conditional_sampling,
                      reason="chains on E(x, y) need a class-conditional energy "
                             "(model.num_classes > 0)")
  if conditional_sampling and buffer_size < k:
    raise ConfigError("ebm.buffer_size", buffer_size, allowed=f"an integer >= {k}",
                      reason="the per-class buffer holds at least one slot per class")
  ce_weight = float(check_number("ebm.ce_weight", e.ce_weight, lo=0))
  if ce_weight and not k:
    raise ConfigError("ebm.ce_weight", e.ce_weight,
                      reason="the cross-entropy term needs a class-conditional energy "
                             "(model.num_classes > 0)")
  train_steps = check_int("ebm.langevin_steps", e.langevin_steps, 1)
  sample_steps = check_int("ebm.sample_steps", e.sample_steps, 1)
  settings = cd.CDSettings(
      langevin=_langevin(e, train_steps),
      reinit_fraction=float(check_number("ebm.reinit_fraction", e.reinit_fraction, lo=0, hi=1)),
      reg_alpha=float(check_number("ebm.reg_alpha", e.reg_alpha, lo=0)),
      data_noise=float(check_number("ebm.data_noise", e.data_noise, lo=0)),
      ema_decay=float(check_number("optim.ema_decay", config.optim.ema_decay, lo=0, hi=1)),
      ema_warmup=check_bool("optim.ema_warmup", config.optim.ema_warmup),
      conditional_sampling=conditional_sampling,
      ce_weight=ce_weight,
      **_improved_cd_fields(e, batch_size, buffer_size))
  tx = common_lib.optimizer(config)
  sample_steps = check_int("sample.steps", config.sample.steps, 0) or sample_steps
  use_ema = check_bool("sample.use_ema", config.sample.use_ema)
  if k:
    label = check_int("sample.label", config.sample.label, -1, k - 1)
  else:
    label = config.sample.label
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label != -1:
      raise ConfigError("sample.label", label, allowed=(-1,),
                        reason="the EBM is unconditional (model.num_classes = 0)")
  return task_lib.EBMTask(
      network=make_network(net_name, **net_fields),
      tx=tx,
      settings=settings,
      sample_langevin=dataclasses.replace(settings.langevin, num_steps=sample_steps),
      image_shape=image_shape,
      buffer_size=buffer_size,
      use_ema=use_ema,
      num_classes=k,
      sample_label=int(label),
      restoration=_restoration(config, image_shape))
