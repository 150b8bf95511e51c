"""The "ebm" task: an energy-based model trained by contrastive divergence.

`build(config)` validates every key the task reads (raising `ConfigError`
that names the key), turns the config into typed objects (the energy network
from `ebm.networks.NETWORKS`, the optimiser, `ebm.cd` settings) and returns an
`EBMTask` implementing the task protocol of `launch.tasks`.

Config keys read: data.name, data.pad_to_32; model.name, model.ch,
model.ch_mult, model.num_res_blocks, model.activation, model.spectral_norm,
model.num_classes, model.dtype; ebm.*; optim.*; train.batch_size;
sample.steps, sample.label, sample.use_ema; eval.restore_num,
eval.inpaint_box, eval.inpaint_steps, eval.denoise_sigma, eval.denoise_steps.

Class-conditional EBMs (JEM, Grathwohl et al. 2020): model.num_classes = K
(the dataset's number of classes; 0 = one scalar energy) makes the network
output E(x, y) = -f(x)[y] [B, K]; training contrasts the marginal
E(x) = -logsumexp_y f(x)[y], with the chains on E(x) or, with
ebm.conditional_sampling, on E(x, y) for the labels of a per-class replay
buffer (`extras["buffer_labels"]`, checkpointed with the state);
ebm.ce_weight > 0 adds JEM's cross-entropy on batch["label"]. The same
network is a classifier, p(y | x) = softmax_y f(x)[y] (`class_logits`).

Labels of `EBMTask.sample` (`label=`), as the conditional DDPM's:
  not given   config.sample.label: -1 = classes in turn (i mod K), k = class k
  -1          classes in turn; an int k: every sample of class k
  int [num]   one class per sample
  None        no label: the marginal E(x) (unconditional networks: always)
An unconditional EBM takes only -1 or None.

Image restoration (`inpaint`, `denoise`, `restoration`): Langevin chains of
`ebm.ood` with the known pixels clamped (inpainting, started from uniform
noise in the unknown ones) or started at the noisy image with no noise
(denoising), on the marginal energy unless a label is given. The step size
is a traced argument everywhere (a new one reuses the compiled program).
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.train_state import TrainState
from ebm import buffer as replay
from ebm import cd
from ebm import langevin
from ebm import ood
from ebm.networks import (ACTIVATIONS, NETWORKS, class_energies_fn_of, class_logits,
                          energy_fn_of, make_network)
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


def _static_chain(chain: cd.LangevinSettings, step_size) -> tuple[cd.LangevinSettings, Any]:
  """(chain without its step size, the step size as a float32 array): the static settings
  select the program, the step size is one of its inputs (a traced value works too)."""
  size = chain.step_size if step_size is None else step_size
  return dataclasses.replace(chain, step_size=0.0), jnp.asarray(size, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Restoration:
  """The inpainting and denoising protocol of `--mode evaluate` and `--mode figures`.

  Attributes:
    num: test images restored (eval.restore_num).
    box: (top, left, height, width) of the inpainted box (eval.inpaint_box).
    inpaint_steps: Langevin steps of inpainting (chain noise as ebm.noise_scale).
    denoise_sigma: σ of the Gaussian noise added to the images (clipped to [-1, 1]).
    denoise_steps: steps of noise-free Langevin descent from the noisy image.
  """
  num: int = 256
  box: tuple[int, int, int, int] = (7, 7, 14, 14)
  inpaint_steps: int = 60
  denoise_sigma: float = 0.3
  denoise_steps: int = 10


# ----------------------------------------------------------------------------
# Compiled programs (static: the network, shapes and chain settings).


@functools.partial(jax.jit, static_argnames=(
    "num", "network", "image_shape", "langevin_settings", "capture_every"))
def _sample_jit(params, key, init, labels, step_size, *, num, network, image_shape,
                langevin_settings, capture_every):
  chain = dataclasses.replace(langevin_settings, step_size=step_size)
  return cd.sample(params, key, num, network=network, image_shape=image_shape,
                   langevin_settings=chain, init=init, capture_every=capture_every,
                   labels=labels)


@functools.partial(jax.jit, static_argnames=(
    "num", "network", "langevin_settings", "capture_every"))
def _sample_from_buffer_jit(state, key, labels, *, num, network, langevin_settings,
                            capture_every):
  return cd.sample_from_buffer(state, key, num, network=network,
                               langevin_settings=langevin_settings,
                               capture_every=capture_every, labels=labels)


def _chain_args(chain: cd.LangevinSettings) -> dict[str, Any]:
  return {"num_steps": chain.num_steps, "noise_scale": chain.noise_scale,
          "grad_clip": chain.grad_clip, "noise_first": chain.noise_first}


@functools.partial(jax.jit, static_argnames=("network", "langevin_settings"))
def _inpaint_jit(params, x_known, mask, key, labels, step_size, *, network, langevin_settings):
  return ood.inpaint(energy_fn_of(network, params, label=labels), x_known, mask, key,
                     step_size=step_size, **_chain_args(langevin_settings))


@functools.partial(jax.jit, static_argnames=("network", "langevin_settings"))
def _denoise_jit(params, x_noisy, key, labels, step_size, *, network, langevin_settings):
  return ood.denoise(energy_fn_of(network, params, label=labels), x_noisy, key,
                     step_size=step_size, **_chain_args(langevin_settings))


@functools.partial(jax.jit, static_argnames=("network",))
def _energy_jit(params, x, labels, *, network):
  return energy_fn_of(network, params, label=labels)(x)


@functools.partial(jax.jit, static_argnames=("network",))
def _logits_jit(params, x, *, network):
  return class_logits(class_energies_fn_of(network, params)(x))


@functools.partial(jax.jit, static_argnames=("network", "batch_size"))
def _ood_jit(params, x_in, key, *, network, batch_size):
  return ood.ood_evaluate(energy_fn_of(network, params), x_in, key, batch_size)


@functools.partial(jax.jit, static_argnames=("network", "batch_size"))
def _ood_energies_jit(params, x_in, key, *, network, batch_size):
  energy_fn = energy_fn_of(network, params)
  sets = {"test": x_in, **ood.make_ood_sets(key, x_in)}
  return {name: ood.ood_score(energy_fn, x, batch_size) for name, x in sets.items()}


@functools.partial(jax.jit, static_argnames=(
    "network", "restoration", "inpaint_chain", "denoise_chain"))
def _restoration_jit(params, x, key, step_size, *, network, restoration, inpaint_chain,
                     denoise_chain):
  energy_fn = energy_fn_of(network, params)
  k_fill, k_inpaint, k_noise, k_denoise = jax.random.split(key, 4)
  mask = jnp.broadcast_to(ood.box_mask(x.shape[1:], *restoration.box), x.shape)
  # The corrupted image is the chain's start: the box filled with U[-1, 1].
  fill = replay.uniform_images(k_fill, x.shape[0], x.shape[1:], x.dtype)
  x_box = jnp.where(mask, x, fill)
  inpainted = ood.inpaint(energy_fn, x, mask, k_inpaint, step_size=step_size, init=fill,
                          **_chain_args(inpaint_chain))
  x_noisy = ood.gaussian_noised_set(k_noise, x, restoration.denoise_sigma)
  denoised = ood.denoise(energy_fn, x_noisy, k_denoise, step_size=step_size,
                         **_chain_args(denoise_chain))
  return {
      "inpaint": {"corrupted": x_box, "restored": inpainted,
                  **ood.restoration_errors(inpainted, x_box, x, mask)},
      "denoise": {"corrupted": x_noisy, "restored": denoised,
                  **ood.restoration_errors(denoised, x_noisy, x)},
  }


# ----------------------------------------------------------------------------
# The task.


@dataclasses.dataclass(frozen=True, eq=False)
class EBMTask:
  """The EBM task protocol over typed fields (see `launch.tasks`).

  Attributes:
    network: the energy network (E low on data); K per-class outputs when
      num_classes = K > 0.
    tx: the optimiser (Adam, β1 = 0 in the EBM configs).
    settings: contrastive-divergence settings, including the training chain
      and JEM's conditional_sampling / ce_weight.
    sample_langevin: default chain of `sample` (sample.steps steps, 0 = the long
      ebm.sample_steps): the task's sampling spec.
    image_shape: (H, W, C).
    buffer_size: replay-buffer slots N.
    use_ema: `sample_params` returns the EMA parameters.
    num_classes: K of a class-conditional (JEM) energy, 0 = unconditional.
    sample_label: config.sample.label: -1 = classes in turn, else one class.
    restoration: the inpainting / denoising protocol (config.eval.*).
  """
  network: nn.Module
  tx: optax.GradientTransformation
  settings: cd.CDSettings
  sample_langevin: cd.LangevinSettings
  image_shape: tuple[int, int, int]
  buffer_size: int
  use_ema: bool = False
  num_classes: int = 0
  sample_label: int = -1
  restoration: Restoration = Restoration()

  def init_state(self, key: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
    """Parameters, optimiser state and the buffer [N, H, W, C] ~ U[-1, 1] (and its
    labels int32 [N], slot i of class i mod K, with ebm.conditional_sampling)."""
    return cd.init_state(key, batch, network=self.network, tx=self.tx,
                         buffer_size=self.buffer_size,
                         per_class_buffer=self.settings.conditional_sampling)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One CD step; metrics: loss, cd, reg, energy_pos, energy_neg,
    langevin_grad_norm, grad_norm (and ce, accuracy for a class-conditional energy)."""
    return cd.train_step(state, batch, key, network=self.network, tx=self.tx,
                         settings=self.settings)

  # -- labels --------------------------------------------------------------

  def sample_labels(self, num: int, label: Any = _FROM_CONFIG) -> jax.Array | None:
    """The int32 [num] labels a `sample(..., label=label)` call samples, None = E(x).

    See the module docstring for the values of `label`.

    Raises:
      ValueError: naming `label`: a class for an unconditional EBM, a class
        outside [0, K), or an array not of shape [num].
    """
    if label is _FROM_CONFIG:
      label = self.sample_label
    if label is None:
      return None
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
      label = int(label)
      if label == -1:
        return (jnp.arange(num, dtype=jnp.int32) % self.num_classes
                if self.num_classes else None)
      if not self.num_classes:
        raise ValueError(f"label={label}: the EBM is unconditional (model.num_classes = 0); "
                         "give no label (or -1)")
      if not 0 <= label < self.num_classes:
        raise ValueError(f"label={label} is not a class: must be in [0, "
                         f"{self.num_classes - 1}] (or -1 for classes in turn)")
      return jnp.full((num,), label, jnp.int32)
    if not self.num_classes:
      raise ValueError("label must be None: the EBM is unconditional (model.num_classes = 0)")
    labels = jnp.asarray(label)
    if labels.shape != (num,) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"label must be an int array of shape ({num},), got "
                       f"{labels.dtype}{list(labels.shape)}")
    return labels.astype(jnp.int32)

  def _labels_of(self, label: Any, num: int) -> jax.Array | None:
    """Labels of the restoration methods: None = the marginal, else as `sample_labels`."""
    return None if label is None else self.sample_labels(num, label)

  # -- sampling ------------------------------------------------------------

  def sample(self, params: Any, key: jax.Array, num: int, *, steps: int | None = None,
             step_size: float | jax.Array | None = None, noise_scale: float | None = None,
             grad_clip: float | None = None, noise_first: bool | None = None,
             capture_every: int = 0, init: jax.Array | None = None,
             label: Any = _FROM_CONFIG, labels: jax.Array | None = None):
    """Langevin samples from uniform noise (or from `init`), one compiled chain.

    Args:
      params: network parameters (`sample_params(state)`).
      key: PRNG key.
      num: number of images.
      steps, step_size, noise_scale, grad_clip, noise_first: override the
        default chain (ebm.sample_steps steps and the ebm.* settings);
        grad_clip = 0 turns clipping off. None = default. step_size may be a
        traced scalar (it is an input of the program, not part of it).
      capture_every: c > 0 also returns every c-th state.
      init: start states [num, H, W, C] instead of U[-1, 1].
      label: the classes to sample (see the module docstring); default
        config.sample.label; None = the marginal E(x).
      labels: int [num] per-image classes (the same as an array `label`).

    Returns:
      images [num, H, W, C] in [-1, 1]; with capture_every = c > 0, the pair
      (images, trajectory [steps // c + 1, num, H, W, C]), trajectory[0] the
      start.
    """
    if labels is not None:
      if label is not _FROM_CONFIG:
        raise ValueError("give either label or labels, not both")
      label = labels
    y = self.sample_labels(num, label)
    chain = _override(self.sample_langevin, steps, None, noise_scale, grad_clip, noise_first)
    chain, size = _static_chain(chain, step_size)
    return _sample_jit(params, key, init, y, size, num=num, network=self.network,
                       image_shape=tuple(self.image_shape), langevin_settings=chain,
                       capture_every=capture_every)

  def sample_from_buffer(self, state: TrainState, key: jax.Array, num: int,
                         steps: int = 0, *, capture_every: int = 0, label: Any = None,
                         **options):
    """`num` distinct replay-buffer entries, continued for `steps` more steps.

    The continuation uses `state.params` (which produced the buffer) and the
    training chain's settings unless overridden by `options` (step_size,
    noise_scale, grad_clip, noise_first). steps = 0 returns the entries as
    they are. `label` (as in `sample`, default None = any entries, the
    marginal) picks entries of those classes from a per-class buffer and
    continues them on E(x, y). Returns as `sample`.
    """
    chain = _override(self.settings.langevin, steps, **options)
    return _sample_from_buffer_jit(state, key, self._labels_of(label, num), num=num,
                                   network=self.network, langevin_settings=chain,
                                   capture_every=capture_every)

  def sample_options(self, config=None) -> dict[str, Any]:
    """The options `sample` uses by default (the task was built from `config`, so the
    argument adds nothing): the chain's steps (config.sample.steps, 0 = ebm.sample_steps),
    and the label when config.sample.label names one class."""
    del config
    options = {"steps": self.sample_langevin.num_steps}
    if self.num_classes and self.sample_label >= 0:
      options["label"] = self.sample_label
    return options

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

  # -- energies, classes, restoration ---------------------------------------

  def energy(self, params: Any, x: jax.Array, label: Any = None) -> jax.Array:
    """Energies [B] of images x [B, H, W, C] (low on data; the OOD score).

    label None gives E(x) (for a class-conditional network the marginal
    -logsumexp_y f(x)[y]); an int or int [B] gives E(x, y) = -f(x)[y].
    """
    return _energy_jit(params, x, self._labels_of(label, x.shape[0]), network=self.network)

  def class_logits(self, params: Any, x: jax.Array) -> jax.Array:
    """Classifier logits f(x) = -E(x, ·) [B, K] of a class-conditional EBM."""
    if not self.num_classes:
      raise ValueError("class_logits needs a class-conditional EBM (model.num_classes > 0)")
    return _logits_jit(params, x, network=self.network)

  def inpaint(self, params: Any, x_known: jax.Array, mask: jax.Array, key: jax.Array, *,
              steps: int, step_size: float | jax.Array | None = None,
              noise_scale: float | None = None, label: Any = None) -> jax.Array:
    """Fills the unknown pixels by Langevin dynamics, the known ones held exactly.

    Args:
      params: network parameters.
      x_known: images [B, H, W, C] in [-1, 1]; only the known pixels are used.
      mask: bool, broadcastable to x_known; True = known.
      key: PRNG key (the unknown pixels start from U[-1, 1]).
      steps: Langevin steps.
      step_size: default ebm.step_size; may be traced.
      noise_scale: default ebm.noise_scale.
      label: None = the marginal E(x), else as in `sample` (per-class energy).

    Returns:
      images [B, H, W, C] with images == x_known where mask.
    """
    chain = _override(self.settings.langevin, steps, None, noise_scale)
    chain, size = _static_chain(chain, step_size)
    return _inpaint_jit(params, x_known, jnp.asarray(mask, bool), key,
                        self._labels_of(label, x_known.shape[0]), size, network=self.network,
                        langevin_settings=chain)

  def denoise(self, params: Any, x_noisy: jax.Array, key: jax.Array, *, steps: int,
              step_size: float | jax.Array | None = None, noise_scale: float = 0.0,
              label: Any = None) -> jax.Array:
    """`steps` Langevin steps on E started at x_noisy [B, H, W, C] (noise-free by default:
    clipped gradient descent towards nearby data-like images); arguments as `inpaint`."""
    chain = _override(self.settings.langevin, steps, None, noise_scale)
    chain, size = _static_chain(chain, step_size)
    return _denoise_jit(params, x_noisy, key, self._labels_of(label, x_noisy.shape[0]), size,
                        network=self.network, langevin_settings=chain)

  def restoration_run(self, params: Any, x: jax.Array, key: jax.Array
                      ) -> dict[str, dict[str, jax.Array]]:
    """Box inpainting and denoising of images x [N, H, W, C] (`restoration`), one program.

    Inpainting fills the box (eval.inpaint_box) from U[-1, 1] with
    eval.inpaint_steps steps of the training chain; denoising adds
    N(0, eval.denoise_sigma²) and descends E for eval.denoise_steps steps
    without noise. Both use the marginal energy.

    Returns:
      {"inpaint", "denoise"} -> {"corrupted", "restored": [N, H, W, C],
      "mse", "psnr", "mse_corrupted", "psnr_corrupted": float32 means over
      the images (inpainting: over the box's pixels)}; the corrupted image
      is the chain's start.
    """
    r = self.restoration
    base = self.settings.langevin
    chain, size = _static_chain(base, None)
    return _restoration_jit(
        params, x, key, size, network=self.network, restoration=r,
        inpaint_chain=dataclasses.replace(chain, num_steps=r.inpaint_steps),
        denoise_chain=dataclasses.replace(chain, num_steps=r.denoise_steps, noise_scale=0.0))

  def ood_evaluate(self, params: Any, x_in: jax.Array, key: jax.Array,
                   batch_size: int = 256) -> dict[str, jax.Array]:
    """AUROC of E as OOD score, test images vs `ebm.ood.make_ood_sets`."""
    return _ood_jit(params, x_in, key, network=self.network, batch_size=batch_size)

  def ood_energies(self, params: Any, x_in: jax.Array, key: jax.Array,
                   batch_size: int = 256) -> dict[str, jax.Array]:
    """E(x) [N] of the test images ("test") and of each `ebm.ood.make_ood_sets` set
    (the same key as `ood_evaluate` gives the same sets), one program."""
    return _ood_energies_jit(params, x_in, key, network=self.network, batch_size=batch_size)


def _restoration(config, image_shape) -> Restoration:
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
  return Restoration(
      num=check_int("eval.restore_num", ev.restore_num, 0),
      box=tuple(int(b) for b in box),
      inpaint_steps=check_int("eval.inpaint_steps", ev.inpaint_steps, 0),
      denoise_sigma=float(check_number("eval.denoise_sigma", ev.denoise_sigma, lo=0,
                                       lo_open=True)),
      denoise_steps=check_int("eval.denoise_steps", ev.denoise_steps, 0))


def build(config) -> EBMTask:
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
  return EBMTask(
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
