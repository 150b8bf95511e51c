"""The trained models behind the HTTP server: a workdir loaded, its programs compiled.

A served model is a trained workdir (its newest checkpoint; EMA parameters by
default) and the sampling adapter of its task (launch/serve/programs.py,
which also says what a program computes and how many a client can cause).
`ServedModel` owns the compiled programs of one model: `plan` turns a
request into a `Plan`, `program` compiles (or finds in its LRU of
`limits.max_programs`) the program of a plan's static part and a bucket, and
`run` makes the images of a batch of requests in one device call.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from core import images as image_lib
from launch import checkpoint as checkpoint_lib
from launch import config as config_lib
from launch import figures
from launch import workdir as workdir_lib
from launch.config_errors import ConfigError
from launch.serve import programs
from launch.serve.schema import (NAME, ImageOptions, Limits, Options, Plan, RequestError,
                                 SamplerInfo)

def _chunked(sample_one: Callable, chunk: int) -> Callable:
  """(params, seeds [B], index [B], extras [B]) -> images [B, H, W, C]; see module doc.

  B is a multiple of `chunk`: a loop (`lax.map`) over B / chunk chunks, each
  `chunk` images vmapped, so every bucket runs the same chunk computation.
  """
  def run(params, seeds, index, extras):
    def one(seed, i, ex):
      return sample_one(params, jax.random.fold_in(jax.random.key(seed), i), ex)

    def in_chunks(a):
      return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])
    images = jax.lax.map(lambda xs: jax.vmap(one)(*xs),
                         jax.tree.map(in_chunks, (seeds, index, extras)))
    return images.reshape((-1,) + images.shape[2:])
  return run


class ServedModel:
  """A trained model, its parameters (on one device; replicated on `devices` for the
  programs that split a batch across them), and its compiled programs.

  `plan` is called from any thread; `run`, `program` and `warm` only from the
  server's worker thread (they are not meant to run concurrently).
  """

  def __init__(self, name: str, task_name: str, task, config, params, *, step: int,
               use_ema: bool, workdir: str, limits: Limits):
    self.name = name
    self.task_name = task_name
    self.task = task
    self.dataset = str(config.data.name)
    self.image_shape = tuple(int(d) for d in task.image_shape)
    self.sampling = programs.SAMPLING[task_name](task, config, limits)
    self.num_classes = int(self.sampling.num_classes)
    self.classes = tuple(figures.CLASS_NAMES.get(self.dataset, ())) if self.num_classes else ()
    if self.num_classes and len(self.classes) != self.num_classes:
      self.classes = tuple(str(i) for i in range(self.num_classes))
    self.params = params
    self.step = step
    self.use_ema = use_ema
    self.workdir = workdir
    self.limits = limits
    devices = jax.local_devices()
    self.devices = devices[:limits.devices] if limits.devices else devices
    self._mesh = jax.sharding.Mesh(np.array(self.devices), ("serve",))
    self._programs: collections.OrderedDict = collections.OrderedDict()
    self._pinned: set = set()
    self._lock = threading.Lock()
    self.compiles = 0
    self.data_config = config.data
    self._examples = None
    self._examples_lock = threading.Lock()

  @property
  def default_sampler(self) -> str:
    return self.sampling.default_sampler

  @property
  def guidance(self) -> bool:
    return self.sampling.guidance_ok

  def samplers(self) -> list[SamplerInfo]:
    return self.sampling.samplers()

  def plan(self, options: Options) -> Plan:
    """The plan of a request (RequestError naming the field it cannot serve)."""
    return self.sampling.plan(options)

  @property
  def image_ops(self) -> tuple[str, ...]:
    """The image operations (/inpaint, /denoise, /energy) the model serves."""
    return self.sampling.image_ops

  def plan_image(self, options: ImageOptions) -> Plan:
    """The plan of an image request (RequestError naming the field it cannot serve)."""
    if options.op not in self.image_ops:
      return programs.Sampling.plan_image(self.sampling, options)
    if tuple(options.image.shape) != self.image_shape:  # the app checks the upload first
      raise RequestError("image", f"shape {tuple(options.image.shape)}, expected "
                                  f"{self.image_shape}")
    return self.sampling.plan_image(options)

  def output_shape(self, static: tuple) -> tuple[int, ...]:
    """The per-image output of the program `static` (an image, or energies)."""
    return self.sampling.output_shape(static)

  def examples(self) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to `limits.max_examples` test images, uint8 [N, H, W, C], and labels [N].

    Read once from the run's dataset (config.data, test split), if it is on
    this machine; None when it is not (the page then offers upload and
    drawing only).
    """
    with self._examples_lock:
      if self._examples is None:
        self._examples = self._read_examples()
      return self._examples or None

  def _read_examples(self):
    from launch import data as data_lib  # pylint: disable=import-outside-toplevel
    if not self.limits.max_examples:
      return ()
    try:
      images, labels = data_lib.load_arrays(self.data_config, "test")
    except (data_lib.DatasetNotFoundError, data_lib.DatasetCorruptError, ValueError,
            OSError) as e:
      logging.info("serve: %s: no test images to offer (%s)", self.name, type(e).__name__)
      return ()
    n = min(self.limits.max_examples, len(images))
    x = image_lib.to_uint8(data_lib.preprocess(images[:n], self.data_config))
    if tuple(x.shape[1:]) != self.image_shape:
      return ()
    return x, np.asarray(labels[:n], np.int32)

  @property
  def params(self):
    return self._params

  @params.setter
  def params(self, value) -> None:
    self._params = value
    self._replicated = None

  def split(self, bucket: int) -> int:
    """How many devices compute a batch of `bucket` places: all of `self.devices` when the
    bucket's chunks divide evenly among them, else one."""
    n = len(self.devices)
    return n if n > 1 and (bucket // self.limits.chunk) % n == 0 else 1

  def _params_for(self, bucket: int):
    if self.split(bucket) == 1:
      return self.params
    if self._replicated is None:
      self._replicated = jax.device_put(
          self.params, jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec()))
    return self._replicated

  def _example_inputs(self, static: tuple, bucket: int):
    return (self._params_for(bucket), np.zeros((bucket,), np.uint32),
            np.zeros((bucket,), np.int32), self.sampling.extras_like(static, bucket))

  def program(self, static: tuple, bucket: int, pin: bool = False):
    """The compiled program of (static, bucket), compiling it if needed."""
    key = (static, bucket)
    with self._lock:
      compiled = self._programs.get(key)
      if compiled is not None:
        self._programs.move_to_end(key)
        if pin:
          self._pinned.add(key)
        return compiled
    fn = _chunked(self.sampling.sample_one(static), self.limits.chunk)
    if self.split(bucket) > 1:   # each device runs the same chunk loop on its share
      spec = jax.sharding.PartitionSpec("serve")
      fn = jax.shard_map(fn, mesh=self._mesh, in_specs=(jax.sharding.PartitionSpec(), spec,
                                                        spec, spec), out_specs=spec)
    fn = jax.jit(fn)
    compiled = fn.lower(*self._example_inputs(static, bucket)).compile()
    with self._lock:
      self.compiles += 1
      self._programs[key] = compiled
      if pin:
        self._pinned.add(key)
      unpinned = [k for k in self._programs if k not in self._pinned]
      for old in unpinned[:max(0, len(unpinned) - self.limits.max_programs)]:
        del self._programs[old]
    logging.info("serve: compiled %s %s bucket %d", self.name, static, bucket)
    return compiled

  @property
  def num_programs(self) -> int:
    return len(self._programs)

  def run(self, static: tuple, bucket: int, seeds: np.ndarray, index: np.ndarray,
          extras: Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 [bucket, *output_shape(static)]: images in [-1, 1] (or energies) on the host."""
    out = self.program(static, bucket)(self._params_for(bucket), seeds, index, dict(extras))
    return np.asarray(jax.device_get(out))

  def warm(self, which: str, buckets: tuple[int, ...]) -> int:
    """Compiles and runs once the warm-up programs; returns how many."""
    if which == "none":
      return 0
    count = 0
    for static in self.sampling.warm_statics(which):
      for bucket in self.sampling.warm_buckets(static, buckets):
        compiled = self.program(static, bucket, pin=True)
        jax.block_until_ready(compiled(*self._example_inputs(static, bucket)))
        count += 1
    return count

  def describe(self) -> dict[str, Any]:
    return {
        "name": self.name,
        "task": self.task_name,
        "dataset": self.dataset,
        "image_shape": list(self.image_shape),
        "conditional": self.num_classes > 0,
        "num_classes": self.num_classes,
        "classes": list(self.classes),
        "guidance": self.guidance,
        "guidance_default": self.sampling.guidance if self.guidance else None,
        "default_sampler": self.default_sampler,
        "samplers": [dataclasses.asdict(s) for s in self.samplers()],
        "checkpoint_step": self.step,
        "use_ema": self.use_ema,
        "image_ops": list(self.image_ops),
        "image_options": self.sampling.image_options(),
    }


def _experiment_config(name: str, entry, workdir: str):
  """The experiment config of a model entry: a ConfigDict, a spec, or WORKDIR/config.json."""
  spec = entry.config if "config" in entry else ""
  if isinstance(spec, ml_collections.ConfigDict):
    return spec
  if not isinstance(spec, str):
    raise ConfigError(f"models.{name}.config", spec, reason="must be a config spec string")
  if spec:
    return config_lib.load(spec)
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"config.models.{name}.config is empty and {path} does not exist: "
                            "give the experiment config spec")
  config = workdir_lib.load_config(workdir)   # keys added since the run get their defaults
  config_lib.validate(config)
  return config


def load_model(name: str, entry, limits: Limits) -> ServedModel:
  """Loads the newest checkpoint of one `models` entry of a serve config.

  Args:
    name: the model's name in requests.
    entry: {config, workdir, use_ema} (see configs/serve.py); `config` may also
      be an experiment ConfigDict.
    limits: the server's limits.

  Returns:
    The served model, parameters on the first local device (not yet compiled).

  Raises:
    ConfigError: naming the bad `models.<name>.*` key.
    CheckpointError: the workdir has no (readable) checkpoint.
  """
  if not NAME.match(name):
    raise ConfigError(f"models.{name}", name,
                      reason="model names are letters, digits, '_', '.', '-' (at most 64)")
  workdir = entry.workdir if "workdir" in entry else ""
  if not isinstance(workdir, str) or not workdir:
    raise ConfigError(f"models.{name}.workdir", workdir, reason="must name a trained workdir")
  use_ema = entry.use_ema if "use_ema" in entry else True
  if not isinstance(use_ema, bool):
    raise ConfigError(f"models.{name}.use_ema", use_ema, allowed=(True, False))
  config = _experiment_config(name, entry, workdir)
  if config.task not in programs.SAMPLING:
    raise ConfigError(f"models.{name}.config", f"task {config.task!r}", allowed=programs.servable_tasks(),
                      reason="this task does not generate images")
  if not (epath.Path(workdir) / "checkpoints").exists():  # before Orbax creates the folder
    raise checkpoint_lib.CheckpointError(
        f"no checkpoint in {epath.Path(workdir) / 'checkpoints'} (model {name!r}): train first "
        "with --mode train, or fix config.models.{name}.workdir".replace("{name}", name))
  run, state = workdir_lib.load_trained(workdir, config, device=jax.local_devices()[0])
  params = state.ema_params if use_ema else state.params
  step = int(jax.device_get(state.step))
  del state
  logging.info("serve: loaded %s (%s, step %d) from %s", name, config.task, step, workdir)
  return ServedModel(name, config.task, run.task, config, params, step=step, use_ema=use_ema,
                     workdir=str(workdir), limits=limits)
