"""The "ddpm" and "denoiser" tasks.

`build(config)` validates every key it reads (raising `ConfigError` naming
the key) and returns a task object with typed fields:

  DDPMTask      Ho et al.'s DDPM: eps / x0 / v objective, optional class
                conditioning with label dropout for classifier-free guidance,
                ancestral / deterministic / DDIM samplers.
  DenoiserTask  the one-step 50/50 denoiser ("ink blot" baseline): predicts
                x0 from (1 - m) x0 + m eps, m = diffusion.denoise_mix.

Both are thin adapters: the init and train steps are `ddpm.training`'s (as
the EBM's are `ebm.cd`'s), the samplers `ddpm.samplers`'.

Config keys read, per network (model.*): unet_ho: ch, ch_mult,
num_res_blocks, attn_resolutions, dropout, num_groups, num_heads;
simple_unet: ch, ch_mult, dropout, num_groups (sinusoid 2 ch, time MLP 8 ch);
unet_small: ch (the width), num_heads, gelu_approximate; denoiser: ch,
ch_mult, bottleneck_dim, dropout, num_groups. All: conditional, dtype.

Each task owns its `ddpm.samplers.SamplingSpec` (`task.spec`, built from
config.sample and validated there) and `use_ema` (config.sample.use_ema):
`task.sample_params(state)` is the one place that picks the weights to
sample with, and `task.sample(params, key, num)` samples with the spec.
Options given to `sample` replace the spec's fields for that call:
  sampler        "ancestral" (Algorithm 2), "deterministic" (Algorithm 2
                 with z = 0), "ddim", "dpmpp_2m" (DPM-Solver++(2M)),
                 "dpmpp_2m_sde" (SDE-DPM-Solver++(2M)) or "heun" (EDM's
                 Heun): the names of `ddpm.samplers.SAMPLERS`.
  steps          the chain length of DDIM and the solvers (0 = their
                 default); ancestral and deterministic take all T steps.
  eta            DDIM stochasticity in [0, 1].
  spacing        DDIM timestep spacing, "uniform" or "quadratic".
  variance       sigma_t^2 of the ancestral samplers: "beta" or "beta_tilde".
  clip_x0        clip the predicted x0 to [-1, 1] at every step.
  label          the spec's label when not given; None or -1 (conditional
                 models: classes in turn, i mod 10), an int for every sample,
                 or an int array [num]; must be None for unconditional
                 models. num_classes is the null label.
  guidance       classifier-free guidance scale s (1 = the conditional model
                 exactly, 0 = the unconditional one).
  (see `ddpm.samplers.SamplingSpec` for the rules; eta and guidance may be
  traced values, the others select the compiled program)
  capture_every  0, or k > 0 to also return the chain every k steps.
  noise          optional [num, H, W, C] starting noise x_T (default: drawn
                 from `key`), so figures can start several models from the
                 same noise.

Return convention (both tasks): images float32 [num, H, W, C] clipped to
[-1, 1]; with capture_every = k > 0 a tuple (images, trajectory) where
trajectory [ceil(n_steps / k), num, H, W, C] holds the raw (unclipped) chain
after every k steps, its last entry being the final x_0.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm import networks
from ddpm import objectives
from ddpm import samplers
from ddpm import schedules
from ddpm import training
from core.train_state import TrainState
from launch import data as data_lib
from launch.config_errors import (ConfigError, check_bool, check_choice, check_int,
                                  check_ints, check_range)
from launch.tasks import common as common_lib

NUM_CLASSES = 10
_DTYPES = common_lib.DTYPES
# The options of `DDPMTask.sample` that replace fields of its spec.
_SPEC_OPTIONS = ("sampler", "steps", "eta", "spacing", "variance", "clip_x0", "guidance")
_FROM_SPEC = object()  # `sample(label=...)` not given: the spec's label


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
                     num_timesteps: int = 1) -> samplers.SamplingSpec:
  """The validated SamplingSpec of config.sample (ConfigError naming the sample.* key)."""
  s = config.sample
  label = s.label
  if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label == -1:
    label = None
  try:
    return samplers.SamplingSpec(
        sampler=s.sampler, steps=s.steps, eta=s.eta, spacing=s.spacing, variance=s.variance,
        clip_x0=s.clip_x0, guidance=s.guidance, label=label, num_timesteps=num_timesteps,
        num_classes=num_classes, null_label=null_label).validate()
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
    spec = spec_from_config(config, num_classes, null_label, d.num_timesteps)
  else:
    check_range("diffusion.denoise_mix", d.denoise_mix, 0.0, 1.0, lo_open=True)
    # The denoiser takes one step: of its spec only the label rule applies.
    spec = spec_from_config(config, num_classes, null_label)
  check_bool("sample.use_ema", config.sample.use_ema)
  check_int("train.batch_size", config.train.batch_size, 1)
  return spec


# ---------------------------------------------------------------------------
# Tasks.

@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class _Task:
  """What both tasks share: network, optimiser, EMA, labels.

  Attributes:
    network: the flax module.
    image_shape: (H, W, C).
    num_classes: 10 for class-conditional models, 0 otherwise.
    null_label: the network has a null-label embedding (index num_classes).
    class_dropout: probability of replacing a training label by the null one.
    tx: the optax optimiser.
    lr_schedule: the optimiser's learning rate at each update (for the metric).
    ema_decay, ema_warmup: see `core.train_state.ema_decay_at`.
    spec: the sampling spec (config.sample, validated; the denoiser uses
      only its label rule).
    use_ema: sample with the EMA parameters (else the trained ones).
  """
  network: nn.Module
  image_shape: tuple[int, int, int]
  num_classes: int
  null_label: bool
  class_dropout: float
  tx: optax.GradientTransformation
  lr_schedule: Callable[[jax.Array], jax.Array]
  ema_decay: float
  ema_warmup: bool
  spec: samplers.SamplingSpec
  use_ema: bool = True

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Fresh parameters (from one example of `batch`), optimiser state and EMA."""
    return training.init_state(key, batch, network=self.network, tx=self.tx,
                               num_classes=self.num_classes)

  @property
  def train_settings(self) -> training.TrainSettings:
    return training.TrainSettings(num_classes=self.num_classes, class_dropout=self.class_dropout,
                                  ema_decay=self.ema_decay, ema_warmup=self.ema_warmup,
                                  lr_schedule=self.lr_schedule)

  def sample_params(self, state: TrainState) -> Any:
    """The parameters to sample with: EMA ones if `use_ema`, else the trained ones."""
    return state.ema_params if self.use_ema else state.params

  def sample_labels(self, num: int, label: Any = _FROM_SPEC) -> jax.Array | None:
    """The int32 [num] labels a `sample(..., label=label)` call samples (None:
    unconditional); by default the spec's rule (label -1: i mod num_classes)."""
    return self._sample_labels(label, num)

  def _sample_labels(self, label: Any, num: int, spec: samplers.SamplingSpec | None = None
                     ) -> jax.Array | None:
    """The [num] int32 labels of a sample call (see the module docstring)."""
    spec = self.spec if spec is None else spec
    if label is _FROM_SPEC:
      return _as_labels(spec.labels(num))
    if label is None or (isinstance(label, (int, np.integer)) and label == -1):
      label = None
    elif not isinstance(label, (int, np.integer)):   # an array [num]
      if not self.num_classes:
        raise ValueError("label must be None: the model is unconditional")
      label = jnp.asarray(label, jnp.int32)
      if label.shape != (num,):
        raise ValueError(f"label must have shape ({num},), got {label.shape}")
      return label
    try:
      spec = dataclasses.replace(spec, label=label).validate()
    except samplers.SpecError as e:
      raise ValueError(f"label: {e}") from None
    return _as_labels(spec.labels(num))

  def sample_options(self, config=None) -> dict[str, Any]:
    """The options `sample` uses by default (those of `spec`; the task was built
    from `config`, so the argument adds nothing)."""
    del config
    if not self.num_classes:
      return {}
    return {"label": self.spec.label}


def _as_labels(labels: np.ndarray | None) -> jax.Array | None:
  return None if labels is None else jnp.asarray(labels, jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DDPMTask(_Task):
  """Ho et al.'s DDPM. See the module docstring for the sample options.

  Attributes (besides `_Task`'s):
    schedule: the noise schedule (T = schedule.num_timesteps).
    objective: "eps", "x0" or "v".
    min_snr_gamma: min-SNR-gamma loss weighting (0 = the simple loss).
  """
  schedule: schedules.Schedule
  objective: str
  min_snr_gamma: float = 0.0

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on the simple loss (Algorithm 1): `ddpm.training.train_step`."""
    return training.train_step(state, batch, key, network=self.network, tx=self.tx,
                               schedule=self.schedule, objective=self.objective,
                               settings=self.train_settings, min_snr_gamma=self.min_snr_gamma)

  def eps_fn(self, params: Any, label: jax.Array | None = None,
             guidance: float | jax.Array = 1.0) -> samplers.EpsFn:
    """The (guided) eps prediction (x_t, t) -> eps_hat of the network at `params`."""
    def model_fn(x_t, t, lab):
      out = self.network.apply({"params": params}, x_t, t, lab, train=False)
      return objectives.output_to_eps(self.objective, self.schedule, x_t, t, out)
    if label is None:
      return lambda x_t, t: model_fn(x_t, t, None)
    return samplers.guided_eps_fn(model_fn, label, self.num_classes, guidance)

  def sample(self, params: Any, key: jax.Array, num: int, *, label: Any = _FROM_SPEC,
             capture_every: int = 0, noise: jax.Array | None = None, **options):
    """`num` samples with `spec` (fields replaced by `options`); see the module docstring.

    Raises:
      ValueError: an option breaks a rule of the spec (naming it).
    """
    unknown = set(options) - set(_SPEC_OPTIONS)
    if unknown:
      raise TypeError(f"unknown sample options {sorted(unknown)}; allowed: {_SPEC_OPTIONS}")
    spec = dataclasses.replace(self.spec, **options).validate()
    labels = self._sample_labels(label, num, spec)
    guided = isinstance(spec.guidance, jax.core.Tracer) or spec.guidance != 1.0
    return _sample_ddpm(self, params, key, labels, spec, noise, num=num, guided=guided,
                        capture_every=int(capture_every))

  def describe_sampling(self, options: dict[str, Any]) -> dict[str, Any]:
    """The sampler fields of an evaluation record of `sample(**options)`: the spec's
    fields that the sampler reads (eta None for samplers without one)."""
    options = {k: v for k, v in options.items() if k != "label"}
    spec = dataclasses.replace(self.spec, **options).validate()
    fields = {"sampler": spec.sampler, "steps": spec.num_steps, "clip_x0": bool(spec.clip_x0),
              "eta": None}
    for name in spec.rule.options:
      if name != "steps":
        fields[name] = getattr(spec, name)
    if self.num_classes:
      fields["guidance"] = float(spec.guidance)
    return fields

  def sample_options(self, config=None) -> dict[str, Any]:
    """The options `sample` uses by default: the fields of `spec` (the task was built
    from `config`, so the argument adds nothing)."""
    del config
    spec = self.spec
    return dict(sampler=spec.sampler, steps=spec.steps, eta=spec.eta, spacing=spec.spacing,
                variance=spec.variance, clip_x0=spec.clip_x0, label=spec.label,
                guidance=spec.guidance)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num", "guided", "capture_every"))
def _sample_ddpm(task: DDPMTask, params, key, labels, spec, noise, *, num, guided,
                 capture_every):
  k_init, k_chain = jax.random.split(key)
  if noise is None:
    x_T = jax.random.normal(k_init, (num,) + tuple(task.image_shape), jnp.float32)
  else:
    x_T = jnp.asarray(noise, jnp.float32)
  eps_fn = task.eps_fn(params, labels, spec.guidance if guided else 1.0)
  out = samplers.sample(spec, eps_fn, task.schedule, x_T, k_chain, capture_every=capture_every)
  if capture_every:
    return jnp.clip(out[0], -1.0, 1.0), out[1]
  return jnp.clip(out, -1.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DenoiserTask(_Task):
  """The one-step denoiser: x0_hat = net((1 - m) x0 + m eps), MSE to x0.

  Attributes (besides `_Task`'s):
    denoise_mix: m (0.5 in the course).
  """
  denoise_mix: float

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on mean (net((1 - m) x0 + m eps) - x0)^2: `ddpm.training`."""
    return training.denoiser_train_step(state, batch, key, network=self.network, tx=self.tx,
                                        denoise_mix=self.denoise_mix,
                                        settings=self.train_settings)

  def sample(self, params: Any, key: jax.Array, num: int, *, noise: jax.Array | None = None,
             x0: jax.Array | None = None, label: Any = _FROM_SPEC) -> jax.Array:
    """One denoising step from pure noise: the "ink blots".

    Args:
      params: network parameters.
      key: PRNG key of the noise (unused when `noise` is given).
      num: number of images.
      noise: optional [num, H, W, C] eps, e.g. the x_T given to a DDPM, so
        both start from the same noise.
      x0: optional [num, H, W, C] clean images: then the input is the
        training mix (1 - m) x0 + m eps (a denoising demo) instead of eps.
      label: as for `DDPMTask.sample` (default: the spec's label).

    Returns:
      [num, H, W, C] x0_hat clipped to [-1, 1].
    """
    eps = (jax.random.normal(key, (num,) + tuple(self.image_shape), jnp.float32)
           if noise is None else jnp.asarray(noise, jnp.float32))
    x_in = eps if x0 is None else (1.0 - self.denoise_mix) * x0 + self.denoise_mix * eps
    labels = self._sample_labels(label, num)
    out = self.network.apply({"params": params}, x_in, None, labels, train=False)
    return jnp.clip(out, -1.0, 1.0)

  def describe_sampling(self, options: dict[str, Any]) -> dict[str, Any]:
    """The sampler fields of an evaluation record: one denoising step."""
    del options
    return {"sampler": "one_step", "steps": 1}



def build(config) -> _Task:
  """Validates `config` and builds its DDPMTask or DenoiserTask."""
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
  if config.task == "denoiser":
    return DenoiserTask(denoise_mix=float(config.diffusion.denoise_mix), **common)
  d = config.diffusion
  schedule = schedules.make_schedule(d.schedule, d.num_timesteps, beta_start=d.beta_start,
                                     beta_end=d.beta_end, cosine_s=d.cosine_s,
                                     beta_reference_timesteps=d.beta_reference_timesteps)
  return DDPMTask(schedule=schedule, objective=d.objective,
                  min_snr_gamma=float(d.min_snr_gamma), **common)
