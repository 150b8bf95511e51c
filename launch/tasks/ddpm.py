"""The "ddpm" and "denoiser" tasks.

`build(config)` validates every key it reads (raising `ConfigError` naming
the key) and returns a task object with typed fields:

  DDPMTask      Ho et al.'s DDPM: eps / x0 / v objective, optional class
                conditioning with label dropout for classifier-free guidance,
                ancestral / deterministic / DDIM samplers.
  DenoiserTask  the one-step 50/50 denoiser ("ink blot" baseline): predicts
                x0 from (1 - m) x0 + m eps, m = diffusion.denoise_mix.

With distill.teacher_workdir set, a "ddpm" config builds a `DistillTask`:
a consistency-distilled student of that trained workdir (ddpm/distill.py),
the teacher's network and schedule (checked key by key when the teacher is
loaded, at the start of a distillation run; restoring a student needs only
its own checkpoint), sampled with `sampler=consistency`.

They live in ddpm/task.py (thin adapters over `ddpm.training` and
`ddpm.samplers`, as the EBM's over `ebm.cd`); this module only reads configs.

Config keys read, per network (model.*): unet_ho: ch, ch_mult,
num_res_blocks, attn_resolutions, dropout, num_groups, num_heads;
simple_unet: ch, ch_mult, dropout, num_groups (sinusoid 2 ch, time MLP 8 ch);
unet_small: ch (the width), num_heads, gelu_approximate; denoiser: ch,
ch_mult, bottleneck_dim, dropout, num_groups. All: conditional, dtype.

The tasks themselves (their sample options, labels and return convention)
are `ddpm.task.DDPMTask` and `ddpm.task.DenoiserTask`; config.sample becomes
their `ddpm.samplers.SamplingSpec` (validated here), config.sample.use_ema
their `use_ema`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from ddpm import distill as distill_lib
from ddpm import networks
from ddpm import objectives
from ddpm import samplers
from ddpm import schedules
from ddpm import task as task_lib
from launch import data as data_lib
from launch import posthoc_ema as posthoc_lib
from launch.config_errors import (ConfigError, check_bool, check_choice, check_int,
                                  check_ints, check_range)
from launch.tasks import common as common_lib

NUM_CLASSES = 10
_DTYPES = common_lib.DTYPES


def image_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) of the images `config.data` yields (MNIST family: 32 x 32 with pad_to_32)."""
  return data_lib.image_shape(data_config)


# ---------------------------------------------------------------------------
# Config -> typed network fields (the network never sees the ConfigDict).

_NETWORK_FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "unet_ho": lambda m: dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                              num_groups=m.num_groups, num_heads=m.num_heads),
    "simple_unet": lambda m: dict(ch=m.ch, ch_mult=tuple(m.ch_mult), time_embed_dim=2 * m.ch,
                                  temb_dim=8 * m.ch, num_groups=m.num_groups, dropout=m.dropout),
    "unet_small": lambda m: dict(width=m.ch, num_heads=m.num_heads,
                                 gelu_approximate=bool(m.gelu_approximate)),
    "denoiser": lambda m: dict(ch=m.ch, ch_mult=tuple(m.ch_mult), bottleneck_dim=m.bottleneck_dim,
                               num_groups=m.num_groups, dropout=m.dropout),
}


def make_network(config) -> nn.Module:
  """The network of a validated config, with typed fields."""
  m = config.model
  return networks.get(m.name)(
      out_ch=image_shape(config.data)[-1],
      num_classes=NUM_CLASSES if m.conditional else 0,
      null_label=bool(m.conditional and config.diffusion.class_dropout > 0),
      dtype=_DTYPES[m.dtype],
      **_NETWORK_FIELDS[m.name](m))


# ---------------------------------------------------------------------------
# Validation (before anything is built).

def _validate_model(config, shape: tuple[int, int, int]) -> None:
  m = config.model
  allowed = ("denoiser",) if config.task == "denoiser" else networks.TIME_CONDITIONED
  check_choice("model.name", m.name, allowed)
  check_choice("model.dtype", m.dtype, tuple(_DTYPES))
  ch = check_int("model.ch", m.ch, 1)
  check_range("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)
  heads = check_int("model.num_heads", m.num_heads, 1)
  if m.name == "unet_small":
    for c in (2 * ch, 4 * ch):
      if c % heads:
        raise ConfigError("model.num_heads", heads,
                          reason=f"must divide the attention widths {2 * ch} and {4 * ch}")
    return
  mult = check_ints("model.ch_mult", m.ch_mult)
  groups = check_int("model.num_groups", m.num_groups, 1)
  widths = sorted({ch} | {ch * k for k in mult})
  if any(c % groups for c in widths):
    raise ConfigError("model.num_groups", groups, reason=f"must divide every width {widths}")
  if m.name == "denoiser":
    check_int("model.bottleneck_dim", m.bottleneck_dim, 1)
    return
  downsamplings = len(mult) - 1 if m.name == "unet_ho" else len(mult)
  if shape[0] % 2 ** downsamplings or shape[1] % 2 ** downsamplings:
    raise ConfigError("model.ch_mult", mult,
                      reason=f"{downsamplings} downsamplings need H, W divisible by "
                             f"{2 ** downsamplings}, images are {shape[:2]} "
                             "(see data.pad_to_32)")
  if m.name == "unet_ho":
    check_int("model.num_res_blocks", m.num_res_blocks, 1)
    check_ints("model.attn_resolutions", m.attn_resolutions, allow_empty=True)
    attn_widths = sorted({ch * k for k in mult})
    if any(c % heads for c in attn_widths):
      raise ConfigError("model.num_heads", heads, reason=f"must divide every width {attn_widths}")


def spec_from_config(config, num_classes: int, null_label: bool,
                     num_timesteps: int = 1, distilled: bool = False) -> samplers.SamplingSpec:
  """The validated SamplingSpec of config.sample (ConfigError naming the sample.* key)."""
  s = config.sample
  label = s.label
  if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label == -1:
    label = None
  try:
    return samplers.SamplingSpec(
        sampler=s.sampler, steps=s.steps, eta=s.eta, spacing=s.spacing, variance=s.variance,
        clip_x0=s.clip_x0, guidance=s.guidance, label=label, num_timesteps=num_timesteps,
        num_classes=num_classes, null_label=null_label, distilled=distilled).validate()
  except samplers.SpecError as e:
    value = s.label if e.field == "label" else e.value
    raise ConfigError(f"sample.{e.field}", value, reason=e.reason, allowed=e.allowed) from None


def validate(config) -> samplers.SamplingSpec:
  """Checks every key the task reads; returns the sampling spec, or raises ConfigError
  naming the first bad key."""
  check_choice("task", config.task, ("ddpm", "denoiser"))
  shape = image_shape(config.data)
  _validate_model(config, shape)
  d = config.diffusion
  conditional = bool(config.model.conditional)
  check_range("diffusion.class_dropout", d.class_dropout, 0.0, 1.0, hi_open=True)
  if d.class_dropout > 0 and not conditional:
    raise ConfigError("diffusion.class_dropout", d.class_dropout,
                      reason="label dropout needs model.conditional=True")
  null_label = conditional and d.class_dropout > 0
  num_classes = NUM_CLASSES if conditional else 0
  if config.task == "ddpm":
    check_choice("diffusion.schedule", d.schedule, schedules.names())
    check_int("diffusion.num_timesteps", d.num_timesteps, 1, 100_000)
    check_int("diffusion.beta_reference_timesteps", d.beta_reference_timesteps, 0, 100_000)
    check_range("diffusion.beta_start", d.beta_start, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("diffusion.beta_end", d.beta_end, d.beta_start, 1.0, hi_open=True)
    check_range("diffusion.cosine_s", d.cosine_s, 0.0, None, lo_open=True)
    check_choice("diffusion.objective", d.objective, objectives.OBJECTIVES)
    check_range("diffusion.min_snr_gamma", d.min_snr_gamma, 0.0, None)
    check_choice("diffusion.t_sampling", d.t_sampling, objectives.T_SAMPLINGS)
    distilled = _validate_distill(config)
    spec = spec_from_config(config, num_classes, null_label, d.num_timesteps, distilled)
  else:
    check_range("diffusion.denoise_mix", d.denoise_mix, 0.0, 1.0, lo_open=True)
    if config.distill.teacher_workdir:
      raise ConfigError("distill.teacher_workdir", config.distill.teacher_workdir,
                        reason="only task='ddpm' can be distilled")
    # The denoiser takes one step: of its spec only the label rule applies.
    spec = spec_from_config(config, num_classes, null_label)
  check_bool("sample.use_ema", config.sample.use_ema)
  check_int("train.batch_size", config.train.batch_size, 1)
  return spec


def _validate_distill(config) -> bool:
  """Checks the distill.* keys; True when the config distils a teacher."""
  dc = config.distill
  if not isinstance(dc.teacher_workdir, str):
    raise ConfigError("distill.teacher_workdir", dc.teacher_workdir, reason="must be a path")
  if not dc.teacher_workdir:
    return False
  # Any N in [1, T] gives distinct grid timesteps (ddpm.distill.consistency_grid).
  check_int("distill.num_intervals", dc.num_intervals, 1, config.diffusion.num_timesteps)
  check_choice("distill.distance", dc.distance, distill_lib.DISTANCES)
  check_choice("distill.target", dc.target, distill_lib.TARGETS)
  check_choice("distill.solver", dc.solver, distill_lib.SOLVERS)
  return True


# The keys a student shares with its teacher (the same network on the same images).
_TEACHER_KEYS = ("data.name", "data.pad_to_32", "diffusion.schedule", "diffusion.num_timesteps",
                 "diffusion.beta_start", "diffusion.beta_end",
                 "diffusion.beta_reference_timesteps", "diffusion.cosine_s",
                 "diffusion.objective", "diffusion.class_dropout")


def _teacher_loader(config) -> Callable[[], Any]:
  """() -> the teacher's sampling parameters (host arrays), loaded once, on first call.

  Raises (when called) ConfigError naming distill.teacher_workdir or the first
  key where the teacher's config and the student's differ.
  """
  path = config.distill.teacher_workdir

  @functools.cache
  def load():
    from launch import workdir as workdir_lib   # workdir imports tasks: import on use
    from launch.checkpoint import CheckpointError
    try:
      teacher_config = workdir_lib.load_config(path)
    except CheckpointError as e:
      raise ConfigError("distill.teacher_workdir", path,
                        reason=f"not a trained DDPM workdir ({e})") from None
    if teacher_config.task != "ddpm" or teacher_config.distill.teacher_workdir:
      raise ConfigError("distill.teacher_workdir", path,
                        reason="the teacher must be a DDPM (task 'ddpm', not itself a student)")
    # model.dtype is only the compute dtype: the parameters are float32 either way.
    keys = [f"model.{k}" for k in config.model if k != "dtype"] + list(_TEACHER_KEYS)
    for key in keys:
      section, name = key.split(".")
      mine, theirs = config[section][name], teacher_config[section][name]
      if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != \
         (tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs):
        raise ConfigError(key, mine, reason=f"the teacher {path} has {theirs!r}; a student "
                                            "has its teacher's network and schedule")
    try:
      # Eagerly, also when the first call comes while `init_state` is traced.
      with jax.ensure_compile_time_eval():
        run, state = workdir_lib.load_trained(path, teacher_config,
                                              device=jax.local_devices()[0])
    except CheckpointError as e:
      raise ConfigError("distill.teacher_workdir", path, reason=str(e)) from None
    return jax.device_get(run.task.sample_params(state))

  return load


def build(config) -> task_lib.Task:
  """Validates `config` and builds its DDPMTask, DistillTask or DenoiserTask."""
  spec = validate(config)
  o = config.optim
  conditional = bool(config.model.conditional)
  common = dict(
      network=make_network(config),
      image_shape=image_shape(config.data),
      num_classes=NUM_CLASSES if conditional else 0,
      null_label=bool(conditional and config.diffusion.class_dropout > 0),
      class_dropout=float(config.diffusion.class_dropout),
      tx=common_lib.optimizer(config),
      lr_schedule=common_lib.lr_schedule(config),
      ema_decay=float(o.ema_decay),
      ema_warmup=bool(o.ema_warmup),
      spec=spec,
      use_ema=bool(config.sample.use_ema),
  )
  stds = posthoc_lib.check_stds(config)   # a student has none (launch.posthoc_ema.settings)
  if config.task == "denoiser":
    return task_lib.DenoiserTask(denoise_mix=float(config.diffusion.denoise_mix),
                                 power_ema_stds=stds, **common)
  d = config.diffusion
  schedule = schedules.make_schedule(d.schedule, d.num_timesteps, beta_start=d.beta_start,
                                     beta_end=d.beta_end, cosine_s=d.cosine_s,
                                     beta_reference_timesteps=d.beta_reference_timesteps)
  if config.distill.teacher_workdir:
    dc = config.distill
    return task_lib.DistillTask(
        schedule=schedule, objective=d.objective, min_snr_gamma=float(d.min_snr_gamma),
        teacher_params=_teacher_loader(config),
        distill=distill_lib.DistillSettings(num_intervals=int(dc.num_intervals),
                                            distance=dc.distance, target=dc.target,
                                            solver=dc.solver),
        **common)
  return task_lib.DDPMTask(schedule=schedule, objective=d.objective,
                  min_snr_gamma=float(d.min_snr_gamma), t_sampling=d.t_sampling,
                  power_ema_stds=stds, **common)
