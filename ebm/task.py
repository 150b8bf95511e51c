"""The EBM task: training, sampling, energies and image restoration as one object.

`EBMTask` implements the task protocol (see launch/tasks/__init__.py) over
typed fields: the energy network, the optimiser, `ebm.cd` settings and the
default sampling chain. `launch.tasks.ebm.build(config)` validates a config
and builds one; nothing here reads a config.

Class-conditional EBMs (JEM, Grathwohl et al. 2020): num_classes = K makes
the network output E(x, y) = -f(x)[y] [B, K]; training contrasts the
marginal E(x) = -logsumexp_y f(x)[y], with the chains on E(x) or, with
conditional_sampling, on E(x, y) for the labels of a per-class replay buffer
(`extras["buffer_labels"]`, checkpointed with the state); ce_weight > 0 adds
JEM's cross-entropy on batch["label"]. The same network is a classifier,
p(y | x) = softmax_y f(x)[y] (`class_logits`).

Labels of `EBMTask.sample` (`label=`), as the conditional DDPM's:
  not given   the task's sample_label: -1 = classes in turn (i mod K), k = class k
  -1          classes in turn; an int k: every sample of class k
  int [num]   one class per sample
  None        no label: the marginal E(x) (unconditional networks: always)
An unconditional EBM takes only -1 or None.

Image restoration (`inpaint`, `denoise`, `restoration_run`): Langevin chains
of `ebm.ood` with the known pixels clamped (inpainting, started from uniform
noise in the unknown ones) or started at the noisy image with no noise
(denoising), on the marginal energy unless a label is given. The step size
is a traced argument everywhere (a new one reuses the compiled program).
Every method is one compiled program, cached by its static settings.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from core.train_state import TrainState
from ebm import buffer as replay
from ebm import cd
from ebm import ood
from ebm.networks import class_energies_fn_of, class_logits, energy_fn_of

CONFIG_LABEL = object()   # `sample(label=...)` not given: the task's sample_label


def override_chain(chain: cd.LangevinSettings, steps: int | None = None,
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


def static_chain(chain: cd.LangevinSettings, step_size) -> tuple[cd.LangevinSettings, Any]:
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
  """The EBM task protocol over typed fields (the protocol: launch/tasks/__init__.py).

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
    sample_label: the default label: -1 = classes in turn, else one class.
    restoration: the inpainting / denoising protocol.
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

  def sample_labels(self, num: int, label: Any = CONFIG_LABEL) -> jax.Array | None:
    """The int32 [num] labels a `sample(..., label=label)` call samples, None = E(x).

    See the module docstring for the values of `label`.

    Raises:
      ValueError: naming `label`: a class for an unconditional EBM, a class
        outside [0, K), or an array not of shape [num].
    """
    if label is CONFIG_LABEL:
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
             label: Any = CONFIG_LABEL, labels: jax.Array | None = None):
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
      if label is not CONFIG_LABEL:
        raise ValueError("give either label or labels, not both")
      label = labels
    y = self.sample_labels(num, label)
    chain = override_chain(self.sample_langevin, steps, None, noise_scale, grad_clip, noise_first)
    chain, size = static_chain(chain, step_size)
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
    chain = override_chain(self.settings.langevin, steps, **options)
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
    chain = override_chain(self.sample_langevin, options.get("steps"), options.get("step_size"),
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
    chain = override_chain(self.settings.langevin, steps, None, noise_scale)
    chain, size = static_chain(chain, step_size)
    return _inpaint_jit(params, x_known, jnp.asarray(mask, bool), key,
                        self._labels_of(label, x_known.shape[0]), size, network=self.network,
                        langevin_settings=chain)

  def denoise(self, params: Any, x_noisy: jax.Array, key: jax.Array, *, steps: int,
              step_size: float | jax.Array | None = None, noise_scale: float = 0.0,
              label: Any = None) -> jax.Array:
    """`steps` Langevin steps on E started at x_noisy [B, H, W, C] (noise-free by default:
    clipped gradient descent towards nearby data-like images); arguments as `inpaint`."""
    chain = override_chain(self.settings.langevin, steps, None, noise_scale)
    chain, size = static_chain(chain, step_size)
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
    chain, size = static_chain(base, None)
    return _restoration_jit(
        params, x, key, size, network=self.network, restoration=r,
        inpaint_chain=dataclasses.replace(chain, num_steps=r.inpaint_steps),
        denoise_chain=dataclasses.replace(chain, num_steps=r.denoise_steps, noise_scale=0.0))

  def image_program(self, op: str, steps: int = 0, labelled: bool = False):
    """The per-image program of a served operation: (params, key, inputs) -> output.

    `inputs` holds one image's per-request values (so any value reuses the
    compiled program): "step_size" [] and "label" [] for the chains, "x"
    [H, W, C] for the image operations, "known" [H, W, 1] (inpaint), "sigma"
    [] (denoise). What selects the program is `op`, `steps` and `labelled`
    (the chain runs on E(x, label), else on E(x)).

    Args:
      op: "langevin" (a chain from uniform noise, `sample`), "inpaint"
        (`inpaint`: the known pixels clamped, the others from uniform noise),
        "denoise" (`denoise` after adding N(0, sigma²)), "energy".
      steps: the chain's steps (not for "energy").
      labelled: the chain runs on E(x, label).

    Returns:
      A function of one image: "langevin" -> the image [H, W, C];
      "inpaint" / "denoise" -> [2, H, W, C], the chain's start (the
      corrupted input) and its end; "energy" -> [1 + K]: E(x), then
      E(x, y) = -f(x)[y] for y = 0..K-1 (K = num_classes, 0 when
      unconditional).
    """
    if op == "energy":
      def energy(params, key, ex):
        del key
        x = ex["x"][None]
        e = self.energy(params, x)
        if not self.num_classes:
          return e
        return jnp.concatenate([e, -self.class_logits(params, x)[0]])
      return energy

    def label_of(ex):
      return ex["label"][None] if labelled else None

    if op == "langevin":
      def one(params, key, ex):
        # The step size is an input of the program (a new one compiles nothing).
        return self.sample(params, key, 1, steps=steps, step_size=ex["step_size"],
                           labels=label_of(ex))[0]
      return one
    if op == "inpaint":
      def inpaint(params, key, ex):
        x, known = ex["x"][None], ex["known"][None]
        # The chain's start, as `ood.inpaint` draws it from this key: uniform
        # noise in the unknown pixels.
        noise = replay.uniform_images(jax.random.split(key)[0], 1, x.shape[1:])
        start = jnp.where(known, x, noise)
        out = self.inpaint(params, x, known, key, steps=steps, step_size=ex["step_size"],
                           label=label_of(ex))
        return jnp.concatenate([start, out])
      return inpaint
    if op == "denoise":
      def denoise(params, key, ex):
        k_noise, k_chain = jax.random.split(key)
        noisy = ood.gaussian_noised_set(k_noise, ex["x"][None], ex["sigma"])
        out = self.denoise(params, noisy, k_chain, steps=steps, step_size=ex["step_size"],
                           label=label_of(ex))
        return jnp.concatenate([noisy, out])
      return denoise
    raise ValueError(f"op must be langevin, inpaint, denoise or energy, got {op!r}")

  def ood_evaluate(self, params: Any, x_in: jax.Array, key: jax.Array,
                   batch_size: int = 256) -> dict[str, jax.Array]:
    """AUROC of E as OOD score, test images vs `ebm.ood.make_ood_sets`."""
    return _ood_jit(params, x_in, key, network=self.network, batch_size=batch_size)

  def ood_energies(self, params: Any, x_in: jax.Array, key: jax.Array,
                   batch_size: int = 256) -> dict[str, jax.Array]:
    """E(x) [N] of the test images ("test") and of each `ebm.ood.make_ood_sets` set
    (the same key as `ood_evaluate` gives the same sets), one program."""
    return _ood_energies_jit(params, x_in, key, network=self.network, batch_size=batch_size)
