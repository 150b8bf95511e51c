"""`--mode bench`: speed, FLOP utilisation, compile time and memory of a config.

    python -m launch --mode bench --config configs/ddpm_mnist.py --workdir /tmp/bench_mnist \
        [--config.bench.peer=../shared/peer/torch_peer.py]

`bench_workdir(config, workdir)` benchmarks the programs of the config's task
and network at the `bench` section's sizes, with freshly initialised
parameters (the workdir needs no checkpoint). Every program is compiled
first (`jit(f).lower(...).compile()`, timed: the compile time), run
`bench.warmup` times untimed (whole sampling chains: once), then timed
`bench.repeats` times with `block_until_ready`; records give the median (the
value) and the min and max. Programs run data-parallel over every device of
the 1-D mesh, as in training.

Measured:
  matmul      the peak: FLOP/s of an N x N matmul on every device at once
              (N = bench.matmul_size), float32 and bfloat16.
  train       the task's train step (fp32, and bf16 compute where the task
              reads model.dtype): images/s, FLOPs per step from XLA's cost
              analysis of the compiled step (over all devices; XLA counts a
              loop body once, so the EBM's adds K - 1 energy gradients for
              its K-step Langevin chain), achieved FLOP/s and its fraction
              of both matmul peaks (meaningful for a large matmul_size).
  sample      DDPM: one forward pass (eps prediction) at bench.sample_batch;
              the ancestral chain of bench.sample_steps steps (0 = T) and
              DDIM with bench.ddim_steps: whole-chain time, time per step,
              and per step / forward pass (the chain's overhead). Denoiser:
              its one-step sample.
  ebm         the training Langevin chain (ebm.langevin_steps at the bench
              batch): steps/s; one energy gradient; the CD step is the
              task's train step. With bench.ebm_peer_shape, the same again at
              the peer's 32x32x3 when the data differ (tutorial CNN only).
  compile     seconds to trace, lower and compile each program, and its
              per-device memory (XLA's memory analysis).
  memory      the peak: device `peak_bytes_in_use` where the backend has
              memory stats, else the process's peak RSS.
  load        timed records carry `other_procs_cpu_cores`, the CPU other
              processes used meanwhile (Linux), to flag a busy machine.
  peer        with bench.peer = path of the course's torch_peer.py (and torch
              importable): the peer runs in a subprocess after our programs,
              with the same batch sizes and steps, in bench.peer_modes; rows
              give ours, the peer's and the ratio ours/peer.

Output: a table on stdout and WORKDIR/bench.json, a list of records
{"name", "value", "unit", "settings"} (timings also "median", "min", "max",
"n"; peer comparisons also "ours" and "peer", with value = ours / peer).
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from ebm.networks import energy_fn_of
from launch import config as config_lib
from launch import sharding
from launch import tasks
from launch import train as train_lib
from launch import workdir as workdir_lib
from launch.config_errors import ConfigError, check_range

_DTYPES = ("float32", "bfloat16")
_JNP_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Tasks whose network computes in config.model.dtype (parameters stay float32).
_DTYPE_TASKS = ("ddpm", "denoiser", "ebm")
_PEER_SHAPE_EBM = (32, 32, 3)
_PEER_TIMEOUT_S = 3 * 3600


# ---------------------------------------------------------------------------
# Settings.

@dataclasses.dataclass(frozen=True)
class BenchSettings:
  """The validated `bench` section (see configs/base.py)."""
  batch_size: int
  repeats: int
  warmup: int
  matmul_size: int
  dtypes: tuple[str, ...]
  sample_batch: int
  sample_steps: int
  ddim_steps: int
  ebm_peer_shape: bool
  peer: str
  peer_modes: tuple[str, ...]
  peer_threads: int


def _int(key: str, value: Any, lo: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ConfigError(key, value, reason="must be an integer")
  return int(check_range(key, int(value), lo))


def _names(key: str, value: Any, allowed: Callable[[str], bool], hint: str) -> tuple[str, ...]:
  if not isinstance(value, str):
    raise ConfigError(key, value, reason="must be a comma-separated string")
  names = tuple(n.strip() for n in value.split(",") if n.strip())
  if not names:
    raise ConfigError(key, value, reason="must name at least one")
  for name in names:
    if not allowed(name):
      raise ConfigError(key, value, allowed=hint)
  return names


def bench_settings(config) -> BenchSettings:
  """The `bench` section, validated (ConfigError naming the key)."""
  b = config.bench
  if not isinstance(b.peer, str):
    raise ConfigError("bench.peer", b.peer, reason="must be a path or \"\"")
  if b.peer and not pathlib.Path(b.peer).expanduser().is_file():
    raise ConfigError("bench.peer", b.peer, reason=f"no such file (from {os.getcwd()})")
  if not isinstance(b.ebm_peer_shape, bool):
    raise ConfigError("bench.ebm_peer_shape", b.ebm_peer_shape, allowed=(True, False))
  return BenchSettings(
      batch_size=_int("bench.batch_size", b.batch_size, 0) or int(config.train.batch_size),
      repeats=_int("bench.repeats", b.repeats, 1),
      warmup=_int("bench.warmup", b.warmup, 0),
      matmul_size=_int("bench.matmul_size", b.matmul_size, 1),
      dtypes=_names("bench.dtypes", b.dtypes, lambda n: n in _DTYPES, "float32,bfloat16"),
      sample_batch=_int("bench.sample_batch", b.sample_batch, 1),
      sample_steps=_int("bench.sample_steps", b.sample_steps, 0),
      ddim_steps=_int("bench.ddim_steps", b.ddim_steps, 0),
      ebm_peer_shape=b.ebm_peer_shape,
      peer=b.peer,
      peer_modes=_names("bench.peer_modes", b.peer_modes,
                        lambda n: n in ("eager", "compile") or n.startswith("compile-"),
                        "eager, compile, compile-<torch.compile mode>"),
      peer_threads=_int("bench.peer_threads", b.peer_threads, 0))


def _variant(config, overrides: dict[str, Any]):
  """A copy of `config` with dotted keys replaced."""
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    config_lib.set_value(c, key, value)
  return c


# ---------------------------------------------------------------------------
# Measuring one program.

@dataclasses.dataclass
class _Measured:
  """A compiled, timed program."""
  compile_s: float
  lower_s: float
  times: list[float]
  flops: float | None          # per call, over all devices (cost analysis; loop bodies once)
  program_bytes: int | None    # per device (arguments + outputs + temporaries)
  other_cpu: float | None      # cores other processes kept busy during the timed calls

  @property
  def median(self) -> float:
    return statistics.median(self.times)


def _cpu_busy_s() -> float | None:
  """Machine-wide busy CPU seconds so far (Linux /proc/stat), else None."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def _cost_flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _program_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _measure(label: str, jitted, args: tuple, *, repeats: int, warmup: int, num_devices: int,
             donate_first: bool = False) -> _Measured:
  """Compiles `jitted` for `args`, runs it `warmup` times, then times `repeats` calls.

  With `donate_first`, each call's first output replaces the first argument
  (a train step whose state is donated).
  """
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  args = list(args)

  def call():
    out = compiled(*args)
    if donate_first:
      args[0] = out[0]
    return out

  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  busy0, own0, wall0 = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  busy1, own1, wall1 = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
  other = None
  if busy0 is not None and busy1 is not None:
    other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))
  flops = _cost_flops(compiled)
  logging.info("bench: %s compiled in %.1f s, median %.4g s of %d", label, t2 - t0,
               statistics.median(times), len(times))
  return _Measured(compile_s=t2 - t0, lower_s=t1 - t0, times=times,
                   flops=flops * num_devices if flops else None,
                   program_bytes=_program_bytes(compiled), other_cpu=other)


# ---------------------------------------------------------------------------
# Records.

def _record(name: str, value: float, unit: str, settings: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
  return {"name": name, "value": float(value), "unit": unit, **extra, "settings": settings}


def _time_records(name: str, m: _Measured, settings: dict[str, Any]) -> list[dict[str, Any]]:
  """`name`.time, .compile_time and .program_bytes records."""
  times = m.times
  timed = settings
  if m.other_cpu is not None:
    timed = dict(settings, other_procs_cpu_cores=round(m.other_cpu, 2))
  out = [_record(f"{name}.time", statistics.median(times), "s", timed,
                 median=statistics.median(times), min=min(times), max=max(times),
                 n=len(times)),
         _record(f"{name}.compile_time", m.compile_s, "s",
                 dict(settings, lower_s=round(m.lower_s, 4)))]
  if m.program_bytes is not None:
    out.append(_record(f"{name}.program_bytes", m.program_bytes, "bytes/device", settings))
  return out


def _rate_record(name: str, amount: float, m: _Measured, unit: str,
                 settings: dict[str, Any]) -> dict[str, Any]:
  """amount / time: value from the median time, min/max from the max/min time."""
  rates = [amount / t for t in m.times]
  if m.other_cpu is not None:
    settings = dict(settings, other_procs_cpu_cores=round(m.other_cpu, 2))
  return _record(name, amount / m.median, unit, settings, median=amount / m.median,
                 min=min(rates), max=max(rates), n=len(rates))


def _flops_records(name: str, m: _Measured, peaks: dict[str, float],
                   settings: dict[str, Any], flops: float | None = None) -> list[dict[str, Any]]:
  flops = flops if flops is not None else m.flops
  if not flops:
    return []
  out = [_record(f"{name}.flops", flops, "FLOP/call", settings),
         _rate_record(f"{name}.flops_per_s", flops, m, "FLOP/s", settings)]
  for dtype, peak in peaks.items():
    out.append(_record(f"{name}.frac_of_matmul_peak_{_short(dtype)}", flops / m.median / peak,
                       "fraction", dict(settings, matmul_peak_flops_per_s=peak)))
  return out


def _short(dtype: str) -> str:
  return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


# ---------------------------------------------------------------------------
# Inputs, sharded over the mesh like the training batches.

def _sharded(sharding_: NamedSharding, host: np.ndarray) -> jax.Array:
  return jax.make_array_from_callback(host.shape, sharding_, lambda idx: host[idx])


def _uniform(rng: np.random.Generator, shape, sharding_: NamedSharding) -> jax.Array:
  return _sharded(sharding_, rng.uniform(-1, 1, shape).astype(np.float32))


def _check_divisible(key: str, value: int, mesh) -> None:
  n = mesh.devices.size
  if value % n:
    raise ConfigError(key, value, reason=f"must be divisible by the number of devices ({n})")


# ---------------------------------------------------------------------------
# The benchmarks.

def _matmul_peaks(mesh, bs: BenchSettings) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """FLOP/s of one N x N matmul per device, all devices at once, per dtype."""
  nd = mesh.devices.size
  n = bs.matmul_size
  spec = NamedSharding(mesh, P(mesh.axis_names[0]))
  peaks, records = {}, []
  for dtype in _DTYPES:
    dt = _JNP_DTYPES[dtype]
    make = jax.jit(lambda k, dt=dt: jax.random.normal(k, (nd, n, n), dt), out_shardings=spec)
    a = make(jax.random.key(1))
    b = make(jax.random.key(2))
    fn = jax.jit(lambda a, b, dt=dt: jnp.einsum("bij,bjk->bik", a, b, preferred_element_type=dt),
                 in_shardings=(spec, spec), out_shardings=spec)
    m = _measure(f"matmul {dtype}", fn, (a, b), repeats=bs.repeats, warmup=max(bs.warmup, 1),
                 num_devices=nd)
    flops = 2.0 * n ** 3 * nd
    settings = {"dtype": dtype, "n": n, "devices": nd}
    rec = _rate_record(f"matmul.{_short(dtype)}.flops_per_s", flops, m, "FLOP/s", settings)
    peaks[dtype] = rec["value"]
    records.append(rec)
    del a, b
  return peaks, records


def _base_settings(config, task, batch: int, dtype: str, mesh) -> dict[str, Any]:
  return {"task": config.task, "network": config.model.name, "width": int(config.model.ch),
          "conditional": bool(config.model.conditional),
          "dtype": dtype, "batch": batch, "image_shape": list(task.image_shape),
          "devices": mesh.devices.size}


def _train_batch(run, batch: int, rng: np.random.Generator) -> dict[str, jax.Array]:
  stacked = train_lib._stack_sharding(run.batch_sharding)  # pylint: disable=protected-access
  shape = (1, batch, *run.task.image_shape)
  labels = rng.integers(0, 10, (1, batch)).astype(np.int32)
  return {"image": _uniform(rng, shape, stacked), "label": _sharded(stacked, labels)}


def _bench_train(config, bs: BenchSettings, peaks: dict[str, float], tag: str = ""
                 ) -> list[dict[str, Any]]:
  """The task's train step (a CD step for the EBM) at the bench batch."""
  run = workdir_lib.prepare(config)
  state = workdir_lib.init_state(run)
  fn = train_lib.make_train_fn(run.task, run.state_shardings, run.batch_sharding, 1)
  batch = _train_batch(run, bs.batch_size, np.random.default_rng(0))
  nd = run.mesh.devices.size
  m = _measure(f"train{tag} {config.model.dtype}", fn, (state, batch, run.keys["train"]),
               repeats=bs.repeats, warmup=bs.warmup, num_devices=nd, donate_first=True)
  settings = _base_settings(config, run.task, bs.batch_size, config.model.dtype, run.mesh)
  flops = m.flops
  if hasattr(run.task, "energy") and flops:   # an energy model: its step runs a chain
    # XLA's cost analysis counts a loop body once: add the other K - 1 Langevin steps.
    steps = run.task.settings.langevin.num_steps
    grad_flops = _energy_grad_flops(run, bs.batch_size)
    if grad_flops:
      flops += (steps - 1) * grad_flops
      settings = dict(settings, langevin_steps=steps,
                      flops_note="cost analysis + (langevin_steps - 1) x one energy gradient")
  name = f"train{tag}"
  records = _time_records(name, m, settings)
  records.append(_rate_record(f"{name}.images_per_s", bs.batch_size, m, "images/s", settings))
  records += _flops_records(name, m, peaks, settings, flops)
  return records


def _energy_grad_program(run, batch: int):
  repl = sharding.replicated(run.mesh)
  data = run.batch_sharding
  network = run.task.network

  def grad(params, x):
    return jax.grad(lambda x: jnp.sum(energy_fn_of(network, params)(x)))(x)

  x = _uniform(np.random.default_rng(1), (batch, *run.task.image_shape), data)
  return jax.jit(grad, in_shardings=(repl, data), out_shardings=data), x


def _energy_grad_flops(run, batch: int) -> float | None:
  fn, x = _energy_grad_program(run, batch)
  flops = _cost_flops(fn.lower(run.abstract_state.params, x).compile())
  return flops * run.mesh.devices.size if flops else None


def sampling_chains(config, task, bs: BenchSettings) -> list[tuple[str, Any, int, dict[str, Any]]]:
  """The chains `--mode bench` times: (name, task, network calls, `task.sample` options).

  The ancestral chain runs bench.sample_steps steps (0 = all T; fewer steps
  build a task whose schedule has that many) and DDIM bench.ddim_steps
  (capped at T). Each names its sampler explicitly: the config's own sampler
  (e.g. a 20-step solver) must not stand in for them.
  """
  num_timesteps = task.schedule.num_timesteps
  steps = bs.sample_steps or num_timesteps
  chain_task = task if steps == num_timesteps else tasks.build(_variant(config, {
      "diffusion.num_timesteps": steps, "sample.sampler": "ancestral", "sample.steps": 0}))
  chains = [("ancestral", chain_task, steps, {"sampler": "ancestral", "steps": 0})]
  if bs.ddim_steps:
    ddim = min(bs.ddim_steps, num_timesteps)
    chains.append(("ddim", task, ddim, {"sampler": "ddim", "steps": ddim}))
  return chains


def _bench_ddpm_sampling(config, bs: BenchSettings, peaks: dict[str, float]
                         ) -> list[dict[str, Any]]:
  """Forward pass, ancestral chain and DDIM chain at bench.sample_batch."""
  run = workdir_lib.prepare(config)
  task, mesh = run.task, run.mesh
  batch = bs.sample_batch
  nd = mesh.devices.size
  repl, data = sharding.replicated(mesh), run.batch_sharding
  params = workdir_lib.init_state(run).params
  rng = np.random.default_rng(2)
  shape = (batch, *task.image_shape)
  noise = _sharded(data, rng.standard_normal(shape).astype(np.float32))
  key = jax.random.key(3)
  settings = _base_settings(config, task, batch, config.model.dtype, mesh)
  records = []

  if "sampler" not in task.sample_options():   # one step (the denoiser): no chain
    fn = jax.jit(lambda p, k, x: task.sample(p, k, batch, noise=x),
                 in_shardings=(repl, repl, data), out_shardings=data)
    m = _measure("denoiser sample", fn, (params, key, noise), repeats=bs.repeats,
                 warmup=bs.warmup, num_devices=nd)
    records += _time_records("sample.denoiser", m, settings)
    records += _flops_records("sample.denoiser", m, {config.model.dtype: peaks[config.model.dtype]},
                              settings)
    return records

  num_timesteps = task.schedule.num_timesteps
  labels = (jnp.arange(batch, dtype=jnp.int32) % task.num_classes) if task.num_classes else None
  t = _sharded(data, np.full((batch,), num_timesteps - 1, np.int32))
  forward = jax.jit(lambda p, x, t: task.eps_fn(p, labels)(x, t),
                    in_shardings=(repl, data, data), out_shardings=data)
  fwd = _measure("forward", forward, (params, noise, t), repeats=bs.repeats, warmup=bs.warmup,
                 num_devices=nd)
  records += _time_records("sample.forward", fwd, settings)
  records += _flops_records("sample.forward", fwd,
                            {config.model.dtype: peaks[config.model.dtype]}, settings)

  for sampler, chain_task_, n, options in sampling_chains(config, task, bs):
    fn = jax.jit(lambda p, k, x, ct=chain_task_, o=options: ct.sample(p, k, batch, noise=x, **o),
                 in_shardings=(repl, repl, data), out_shardings=data)
    m = _measure(f"{sampler} chain", fn, (params, key, noise), repeats=bs.repeats,
                 warmup=min(bs.warmup, 1), num_devices=nd)
    s = dict(settings, sampler=sampler, steps=n, num_timesteps=chain_task_.schedule.num_timesteps)
    name = f"sample.{sampler}"
    records += _time_records(f"{name}.chain", m, s)
    step_time = m.median / n
    records.append(_record(f"{name}.step_time", step_time, "s", s,
                           median=step_time, min=min(m.times) / n, max=max(m.times) / n,
                           n=len(m.times)))
    records.append(_record(f"{name}.step_over_forward", step_time / fwd.median, "ratio",
                           dict(s, forward_s=fwd.median)))
    records.append(_rate_record(f"{name}.images_per_s", batch, m, "images/s", s))
  return records


def _bench_langevin(config, bs: BenchSettings, peaks: dict[str, float], tag: str = ""
                    ) -> list[dict[str, Any]]:
  """The training Langevin chain and one energy gradient at the bench batch."""
  run = workdir_lib.prepare(config)
  task, mesh = run.task, run.mesh
  batch = bs.batch_size
  nd = mesh.devices.size
  repl, data = sharding.replicated(mesh), run.batch_sharding
  params = workdir_lib.init_state(run).params
  chain_settings = task.settings.langevin
  steps = chain_settings.num_steps
  x0 = _uniform(np.random.default_rng(4), (batch, *task.image_shape), data)
  settings = dict(_base_settings(config, task, batch, config.model.dtype, mesh),
                  langevin_steps=steps, noise_first=chain_settings.noise_first)
  chain = jax.jit(lambda p, k, x: chain_settings.run(energy_fn_of(task.network, p), x, k).x,
                  in_shardings=(repl, repl, data), out_shardings=data)
  m = _measure(f"langevin{tag}", chain, (params, jax.random.key(5), x0), repeats=bs.repeats,
               warmup=min(bs.warmup, 1), num_devices=nd)
  name = f"ebm{tag}.langevin"
  records = _time_records(f"{name}.chain", m, settings)
  records.append(_rate_record(f"{name}.steps_per_s", steps, m, "steps/s", settings))
  records.append(_rate_record(f"{name}.image_steps_per_s", steps * batch, m, "image-steps/s",
                              settings))
  grad, x = _energy_grad_program(run, batch)
  g = _measure(f"energy grad{tag}", grad, (params, x), repeats=bs.repeats, warmup=bs.warmup,
               num_devices=nd)
  records += _time_records(f"ebm{tag}.energy_grad", g, settings)
  step_time = m.median / steps
  records.append(_record(f"{name}.step_over_energy_grad", step_time / g.median, "ratio",
                         dict(settings, energy_grad_s=g.median)))
  records += _flops_records(f"ebm{tag}.energy_grad", g,
                            {config.model.dtype: peaks[config.model.dtype]}, settings)
  return records


def _peak_memory() -> dict[str, Any]:
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  if peaks:
    return _record("memory.peak", max(peaks), "bytes",
                   {"source": "device memory_stats peak_bytes_in_use (max over local devices)"})
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024
  return _record("memory.peak", rss, "bytes", {"source": "process peak RSS (getrusage)"})


def _env_record(config, mesh) -> dict[str, Any]:
  devices = mesh.devices.flatten()
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  return _record("env.devices", len(devices), "devices", {
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "process_count": jax.process_count(), "jax": jax.__version__,
      "python": platform.python_version(), "cpu": cpu, "os_cpus": os.cpu_count(),
      "usable_cpus": _usable_cpus(),
      "loadavg_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "task": config.task, "network": config.model.name})


def _usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# The PyTorch peer.

def peer_model(config) -> str | None:
  """The peer's model letter for our network, or None when it has no counterpart."""
  name = config.model.name
  if config.task == "ddpm" and name == "simple_unet":
    return "a"
  if config.task == "ddpm" and name == "unet_small":
    return "b_cond" if config.model.conditional else "b"
  if config.task == "ebm" and name == "cnn_tutorial":
    return "c"
  return None


_PEER_SHAPES = {"a": (32, 32, 3), "b": (32, 32, 1), "b_cond": (32, 32, 1), "c": (32, 32, 3)}
_PEER_WIDTHS = {"a": 64, "b": 16, "b_cond": 16, "c": 32}


def _run_peer(bs: BenchSettings, letter: str, steps: dict[str, int]) -> list[dict[str, Any]]:
  """Runs torch_peer.py for `letter`; returns its JSON records (errors logged, dropped)."""
  threads = bs.peer_threads or _usable_cpus()
  cmd = [sys.executable, str(pathlib.Path(bs.peer).expanduser()), "--models", letter,
         "--modes", ",".join(bs.peer_modes), "--threads", str(threads),
         "--warmup", str(bs.warmup), "--matmul-n", str(bs.matmul_size),
         "--matmul-reps", str(bs.repeats)]
  if letter == "c":
    cmd += ["--bench", "matmul", "ebm", "--ebm-batch", str(bs.batch_size),
            "--ebm-steps", str(bs.repeats), "--langevin-steps", str(steps["langevin"])]
  else:
    ab = "a" if letter == "a" else "b"
    cmd += ["--bench", "matmul", "train", "sample", "--train-steps", str(bs.repeats),
            f"--batch-{ab}", str(bs.batch_size), f"--sample-batch-{ab}", str(bs.sample_batch),
            f"--sample-steps-{ab}", str(steps["ancestral"])]
  logging.info("Peer: %s", " ".join(cmd))
  print("running the peer: " + " ".join(cmd), flush=True)
  # The peer's progress (stderr) shows as it runs; its records come on stdout.
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=_PEER_TIMEOUT_S,
                        check=False)
  if proc.returncode:
    raise RuntimeError(f"the peer failed (exit {proc.returncode}); its log is above")
  records = []
  for line in proc.stdout.splitlines():
    line = line.strip()
    if not line.startswith("{"):
      continue
    rec = json.loads(line)
    if rec.get("error"):
      logging.warning("Peer record %s failed: %s", rec.get("name"), rec["error"])
      continue
    records.append(rec)
  return records


def _find(records: list[dict[str, Any]], name: str, **match) -> dict[str, Any] | None:
  for r in records:
    if r.get("name") == name and all(r.get(k) == v for k, v in match.items()):
      return r
  return None


def _ratio(name: str, ours: float, peer: float, unit: str, higher_is_better: bool,
           settings: dict[str, Any]) -> dict[str, Any]:
  return _record(f"vs_peer.{name}", ours / peer, "ours/peer", dict(
      settings, compared_unit=unit, higher_is_better=higher_is_better), ours=ours, peer=peer)


def _peer_rows(bs: BenchSettings, letter: str, ours: list[dict[str, Any]],
               peer: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Ratio rows ours/peer for every measurement both sides have."""
  rows = []

  def our(name: str, **match) -> dict[str, Any] | None:
    return next((r for r in ours if r["name"] == name
                 and all(r["settings"].get(k) == v for k, v in match.items())), None)

  def common(ours_rec: dict[str, Any], peer_rec: dict[str, Any]) -> dict[str, Any]:
    s = ours_rec["settings"]
    shape = s.get("image_shape")
    like = (shape == list(_PEER_SHAPES[letter]) and s.get("width") == _PEER_WIDTHS[letter])
    return {"peer_model": letter, "peer_desc": peer_rec.get("desc"),
            "peer_mode": peer_rec.get("mode"), "peer_threads": peer_rec.get("threads"),
            "peer_batch": peer_rec.get("batch"), "peer_image_shape": list(_PEER_SHAPES[letter]),
            "ours_image_shape": shape, "ours_width": s.get("width"), "batch": s.get("batch"),
            "ours_dtype": s.get("dtype"), "ours_devices": s.get("devices"),
            "ours_other_procs_cpu_cores": s.get("other_procs_cpu_cores"),
            "peer_other_procs_cpu_cores": peer_rec.get("other_procs_cpu_cores"),
            "peer_contaminated": peer_rec.get("contaminated"),
            "like_for_like": bool(like and s.get("batch") == peer_rec.get("batch"))}

  mm_ours, mm_peer = our("matmul.fp32.flops_per_s"), _find(peer, "matmul_fp32")
  if mm_ours and mm_peer:
    rows.append(_ratio("matmul.fp32.flops_per_s", mm_ours["value"],
                       mm_peer["gflops_median"] * 1e9, "FLOP/s", True,
                       {"n": bs.matmul_size, "peer_threads": mm_peer.get("threads"),
                        "ours_devices": mm_ours["settings"]["devices"]}))
  for mode in bs.peer_modes:
    if letter == "c":
      if mode != "eager":
        continue  # the peer's EBM runs eagerly only
      tag = ".peer_shape" if our("ebm.peer_shape.langevin.steps_per_s") else ""
      chain, p_chain = our(f"ebm{tag}.langevin.steps_per_s"), _find(peer, "ebm_langevin_chain")
      if chain and p_chain:
        rows.append(_ratio("ebm.langevin.steps_per_s", chain["value"],
                           p_chain["langevin_steps_per_s"], "steps/s", True,
                           dict(common(chain, p_chain),
                                langevin_steps=chain["settings"]["langevin_steps"])))
      cd, p_cd = our(f"train{tag}.time", dtype="float32"), _find(peer, "ebm_cd_step")
      if cd and p_cd:
        rows.append(_ratio("ebm.cd_step.time", cd["value"], p_cd["median_s"], "s", False,
                           dict(common(cd, p_cd), langevin_steps=p_cd.get("langevin_steps"))))
      continue
    train, p_train = (our("train.images_per_s", dtype="float32"),
                      _find(peer, "ddpm_train_step", mode=mode))
    if train and p_train:
      rows.append(_ratio(f"train.images_per_s.{mode}", train["value"], p_train["imgs_per_s"],
                         "images/s", True, common(train, p_train)))
    step, chain = our("sample.ancestral.step_time"), our("sample.ancestral.chain.time")
    p_sample = _find(peer, "ddpm_sample_step", mode=mode)
    if step and chain and p_sample:
      n = int(p_sample["n"])
      s = dict(common(step, p_sample), steps=n,
               peer_chain="sum of its timed steps (mean_s x n)")
      rows.append(_ratio(f"sample.ancestral.step_time.{mode}", step["value"],
                         p_sample["median_s"], "s", False, s))
      if n == chain["settings"]["steps"]:
        rows.append(_ratio(f"sample.ancestral.chain_time.{mode}", chain["value"],
                           p_sample["mean_s"] * n, "s", False, s))
  return rows


# ---------------------------------------------------------------------------
# Output.

def _fmt(value: float, unit: str) -> str:
  if unit in ("FLOP/s", "FLOP/call"):
    return f"{value / 1e9:.3g} G{unit}"
  if unit.startswith("bytes"):
    return f"{value / 2 ** 20:.4g} MiB{unit[5:]}"
  if unit == "s":
    return f"{value * 1e3:.4g} ms" if value < 1 else f"{value:.4g} s"
  return f"{value:.4g} {unit}"


# settings shown in the table: key -> label
_SHOWN_SETTINGS = {"dtype": "", "batch": "b", "steps": "steps", "langevin_steps": "langevin",
                   "image_shape": "", "peer_mode": "peer", "other_procs_cpu_cores": "others_cpu",
                   "ours_other_procs_cpu_cores": "others_cpu",
                   "peer_other_procs_cpu_cores": "peer_others_cpu"}


def _show(key: str, value: Any) -> str:
  if key == "image_shape":
    value = "x".join(str(v) for v in value)
  label = _SHOWN_SETTINGS[key]
  return f"{label}={value}" if label else str(value)


def format_table(records: list[dict[str, Any]]) -> str:
  """One line per record: name, value, [min .. max] and the main settings."""
  lines = []
  for r in records:
    if r["name"].startswith("env."):
      continue
    value = _fmt(r["value"], r["unit"])
    if "ours" in r:
      value += f"  (ours {r['ours']:.4g}, peer {r['peer']:.4g} {r['settings']['compared_unit']})"
    elif "min" in r and r.get("n", 0) > 1:
      value += f"  [{_fmt(r['min'], r['unit'])} .. {_fmt(r['max'], r['unit'])}]"
    shown = " ".join(_show(k, r["settings"][k]) for k in _SHOWN_SETTINGS
                     if r["settings"].get(k) is not None)
    lines.append(f"{r['name']:<44} {value:<52} {shown}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# The mode.

def run_bench(config) -> list[dict[str, Any]]:
  """Our measurements of `config` (see the module docstring); returns the records."""
  bs = bench_settings(config)
  cfg = _variant(config, {"train.batch_size": bs.batch_size})
  mesh = sharding.make_mesh(config.mesh.data_axis)
  _check_divisible("bench.batch_size", bs.batch_size, mesh)
  task = tasks.build(cfg)
  is_energy = hasattr(task, "energy")             # sampled by a Langevin chain
  is_diffusion = task.sample is not None and not is_energy
  if is_diffusion:
    _check_divisible("bench.sample_batch", bs.sample_batch, mesh)
  if "sampler" in task.sample_options() and bs.sample_steps > config.diffusion.num_timesteps:
    raise ConfigError("bench.sample_steps", bs.sample_steps,
                      reason=f"must be <= diffusion.num_timesteps "
                             f"({config.diffusion.num_timesteps})")
  records = [_env_record(config, mesh)]
  peaks, mm = _matmul_peaks(mesh, bs)
  records += mm
  dtypes = bs.dtypes if config.task in _DTYPE_TASKS else ("float32",)
  for dtype in dtypes:
    records += _bench_train(_variant(cfg, {"model.dtype": dtype}), bs, peaks)
  if is_diffusion:
    records += _bench_ddpm_sampling(cfg, bs, peaks)
  elif is_energy:
    records += _bench_langevin(cfg, bs, peaks)
    shape = task.image_shape
    if (bs.ebm_peer_shape and config.model.name == "cnn_tutorial"
        and tuple(shape) != _PEER_SHAPE_EBM):
      peer_cfg = _variant(cfg, {"data.name": "cifar10", "data.pad_to_32": False,
                                "model.dtype": "float32"})
      records += _bench_train(peer_cfg, bs, peaks, tag=".peer_shape")
      records += _bench_langevin(peer_cfg, bs, peaks, tag=".peer_shape")
  records.append(_peak_memory())
  _set_loadavg_end(records)
  return records


def compare_with_peer(config, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Runs the peer (bench.peer) and returns the rows ours/peer; [] when it cannot run.

  A peer that fails or has no counterpart of our model is logged, not raised:
  our own measurements stand without it.
  """
  bs = bench_settings(config)
  if not bs.peer:
    return []
  letter = peer_model(config)
  if letter is None:
    logging.warning("bench.peer: the peer has no model like %s/%s; no comparison.",
                    config.task, config.model.name)
    return []
  if importlib.util.find_spec("torch") is None:
    logging.warning("bench.peer: torch is not installed; no comparison.")
    return []
  cfg = _variant(config, {"train.batch_size": bs.batch_size})
  steps = {"langevin": int(cfg.ebm.langevin_steps)}
  if config.task == "ddpm":
    steps["ancestral"] = bs.sample_steps or int(cfg.diffusion.num_timesteps)
  try:
    peer = _run_peer(bs, letter, steps)
  except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
    logging.error("bench.peer: %s", e)
    records[0]["settings"]["peer_error"] = str(e)[-2000:]
    return []
  return _peer_rows(bs, letter, records, peer)


def _set_loadavg_end(records: list[dict[str, Any]]) -> None:
  if hasattr(os, "getloadavg"):
    records[0]["settings"]["loadavg_end"] = round(os.getloadavg()[0], 2)


def _write(records: list[dict[str, Any]], workdir: str) -> epath.Path:
  out = epath.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "bench.json").write_text(json.dumps(records, indent=1) + "\n")
  return out / "bench.json"


def bench_workdir(config, workdir: str) -> list[dict[str, Any]]:
  """`--mode bench`: runs the benchmark, prints a table, writes WORKDIR/bench.json.

  bench.json is written after our measurements and again with the peer's rows.
  """
  records = run_bench(config)
  if jax.process_index() != 0:
    return records
  path = _write(records, workdir)
  rows = compare_with_peer(config, records)
  if rows:
    records += rows
    _set_loadavg_end(records)
    _write(records, workdir)
  env = records[0]["settings"]
  print(f"bench: {config.task}/{config.model.name} on {records[0]['value']:g} "
        f"{env['backend']} device(s) ({env['device_kind']}), load average "
        f"{env['loadavg_start']} -> {env.get('loadavg_end')}")
  print(format_table(records))
  print(f"wrote {path}")
  return records
