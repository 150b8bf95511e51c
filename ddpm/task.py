"""The DDPM and one-step denoiser tasks: training and sampling as one object.

  DDPMTask      Ho et al.'s DDPM: eps / x0 / v objective, optional class
                conditioning with label dropout for classifier-free guidance,
                ancestral / deterministic / DDIM / DPM-Solver samplers.
  DistillTask   a DDPMTask whose training is consistency distillation of a
                trained teacher (`ddpm.distill`); it alone can run the
                "consistency" sampler.
  DenoiserTask  the one-step 50/50 denoiser ("ink blot" baseline): predicts
                x0 from (1 - m) x0 + m eps, m = denoise_mix.

Both implement the task protocol (launch/tasks/__init__.py) over typed
fields; the init and train steps are `ddpm.training`'s, the samplers
`ddpm.samplers`'. `launch.tasks.ddpm.build(config)` validates a config and
builds one; nothing here reads a config.

Each task owns its `ddpm.samplers.SamplingSpec` (`task.spec`) and `use_ema`:
`task.sample_params(state)` is the one place that picks the weights to
sample with, and `task.sample(params, key, num)` samples with the spec.
Options given to `sample` replace the spec's fields for that call:
  sampler        "ancestral" (Algorithm 2), "deterministic" (Algorithm 2
                 with z = 0), "ddim", "dpmpp_2m" (DPM-Solver++(2M)),
                 "dpmpp_2m_sde" (SDE-DPM-Solver++(2M)), "heun" (EDM's
                 Heun) or, for a distilled student, "consistency" (1-8
                 steps): the names of `ddpm.samplers.SAMPLERS`.
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

from core import posthoc_ema
from core.train_state import TrainState
from ddpm import distill as distill_lib
from ddpm import objectives
from ddpm import samplers
from ddpm import schedules
from ddpm import training

# The options of `DDPMTask.sample` that replace fields of its spec.
SPEC_OPTIONS = ("sampler", "steps", "eta", "spacing", "variance", "clip_x0", "guidance")
SPEC_LABEL = object()  # `sample(label=...)` not given: the spec's label


# ---------------------------------------------------------------------------
# Tasks.

@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Task:
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
    spec: the sampling spec (validated; the denoiser uses only its label rule).
    use_ema: sample with the EMA parameters (else the trained ones).
    power_ema_stds: sigma_rel of the power-function EMAs tracked for post-hoc
      reconstruction (`core.posthoc_ema`; the paper's (0.05, 0.10)), () = none.
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
  power_ema_stds: tuple[float, ...] = ()

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Fresh parameters (from one example of `batch`), optimiser state and EMA."""
    return training.init_state(key, batch, network=self.network, tx=self.tx,
                               num_classes=self.num_classes,
                               power_emas=len(self.power_ema_stds))

  @property
  def power_ema_gammas(self) -> tuple[float, ...]:
    """The exponents of the tracked power-function EMAs (`core.posthoc_ema`)."""
    return tuple(posthoc_ema.sigma_rel_to_gamma(s) for s in self.power_ema_stds)

  def ema_snapshot(self, state: TrainState) -> tuple[Any, ...] | None:
    """The power-function EMAs to save as a post-hoc snapshot (None: not tracked)."""
    return state.extras["power_ema"] if self.power_ema_stds else None

  @property
  def train_settings(self) -> training.TrainSettings:
    return training.TrainSettings(num_classes=self.num_classes, class_dropout=self.class_dropout,
                                  ema_decay=self.ema_decay, ema_warmup=self.ema_warmup,
                                  lr_schedule=self.lr_schedule,
                                  power_ema_gammas=self.power_ema_gammas)

  def sample_params(self, state: TrainState) -> Any:
    """The parameters to sample with: EMA ones if `use_ema`, else the trained ones."""
    return state.ema_params if self.use_ema else state.params

  def sample_labels(self, num: int, label: Any = SPEC_LABEL) -> jax.Array | None:
    """The int32 [num] labels a `sample(..., label=label)` call samples (None:
    unconditional); by default the spec's rule (label -1: i mod num_classes)."""
    return self._sample_labels(label, num)

  def _sample_labels(self, label: Any, num: int, spec: samplers.SamplingSpec | None = None
                     ) -> jax.Array | None:
    """The [num] int32 labels of a sample call (see the module docstring)."""
    spec = self.spec if spec is None else spec
    if label is SPEC_LABEL:
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
class DDPMTask(Task):
  """Ho et al.'s DDPM. See the module docstring for the sample options.

  Attributes (besides `Task`'s):
    schedule: the noise schedule (T = schedule.num_timesteps).
    objective: "eps", "x0" or "v".
    min_snr_gamma: min-SNR-gamma loss weighting (0 = the simple loss).
    t_sampling: "uniform" or "importance" (`objectives.sample_timesteps`).
  """
  schedule: schedules.Schedule
  objective: str
  min_snr_gamma: float = 0.0
  t_sampling: str = "uniform"

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on the simple loss (Algorithm 1): `ddpm.training.train_step`."""
    return training.train_step(state, batch, key, network=self.network, tx=self.tx,
                               schedule=self.schedule, objective=self.objective,
                               settings=self.train_settings, min_snr_gamma=self.min_snr_gamma,
                               t_sampling=self.t_sampling)

  def eps_fn(self, params: Any, label: jax.Array | None = None,
             guidance: float | jax.Array = 1.0) -> samplers.EpsFn:
    """The (guided) eps prediction (x_t, t) -> eps_hat of the network at `params`."""
    def model_fn(x_t, t, lab):
      out = self.network.apply({"params": params}, x_t, t, lab, train=False)
      return objectives.output_to_eps(self.objective, self.schedule, x_t, t, out)
    if label is None:
      return lambda x_t, t: model_fn(x_t, t, None)
    return samplers.guided_eps_fn(model_fn, label, self.num_classes, guidance)

  def sample(self, params: Any, key: jax.Array, num: int, *, label: Any = SPEC_LABEL,
             capture_every: int = 0, noise: jax.Array | None = None, **options):
    """`num` samples with `spec` (fields replaced by `options`); see the module docstring.

    Raises:
      ValueError: an option breaks a rule of the spec (naming it).
    """
    unknown = set(options) - set(SPEC_OPTIONS)
    if unknown:
      raise TypeError(f"unknown sample options {sorted(unknown)}; allowed: {SPEC_OPTIONS}")
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


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class DistillTask(DDPMTask):
  """A consistency-distilled student of a trained DDPM (`ddpm.distill`).

  The same network, schedule and objective as its teacher, so it samples
  like any DDPMTask (its spec has distilled=True, which the "consistency"
  sampler needs). Training is consistency distillation: the student starts
  from the teacher's weights, which stay in `state.extras["teacher"]` (a
  checkpoint alone resumes the run; sampling never needs the teacher's
  workdir).

  Attributes (besides `DDPMTask`'s):
    teacher_params: () -> the teacher's parameters; called only to build a
      fresh state (the start of a distillation run).
    distill: the distillation hyperparameters.
  """
  teacher_params: Callable[[], Any]
  distill: distill_lib.DistillSettings

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """The student's first state: the teacher's weights (`ddpm.distill.init_student`)."""
    del key, batch
    return distill_lib.init_student(self.teacher_params(), self.tx)

  def abstract_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """The shapes of `init_state` without loading the teacher (restoring a student)."""
    def shapes(key, batch):   # the teacher's network initialised afresh: the same shapes
      return distill_lib.init_student(DDPMTask.init_state(self, key, batch).params, self.tx)
    return jax.eval_shape(shapes, key, batch)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One consistency-distillation update: `ddpm.distill.distill_step`."""
    return distill_lib.distill_step(state, batch, key, network=self.network, tx=self.tx,
                                    schedule=self.schedule, objective=self.objective,
                                    settings=self.train_settings, distill=self.distill)


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
class DenoiserTask(Task):
  """The one-step denoiser: x0_hat = net((1 - m) x0 + m eps), MSE to x0.

  Attributes (besides `Task`'s):
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
             x0: jax.Array | None = None, label: Any = SPEC_LABEL) -> jax.Array:
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
