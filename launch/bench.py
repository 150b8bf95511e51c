"""`--mode bench`: speed, FLOP utilisation, compile time and memory of a config.

    python -m launch --mode bench --config configs/ddpm_mnist.py --workdir /tmp/bench_mnist \
        [--config.bench.peer=../shared/peer/torch_peer.py]

`bench_workdir(config, workdir)` benchmarks the programs of the config's task
and network at the `bench` section's sizes, with freshly initialised
parameters (the workdir needs no checkpoint). Every program is compiled
first (`jit(f).lower(...).compile()`, timed: the compile time), run
`bench.warmup` times untimed (whole sampling chains: once), then timed
`bench.repeats` times with `block_until_ready` (the timers:
`launch.bench_timing`); records give the median (the value) and the min and
max. Programs run data-parallel over every device of
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
  serve       with bench.serve_images = N > 0 and a trained workdir: POST
              /generate of N images with the config's sampler through the
              server's app and batcher in process (`bench_serve`).
  peer        (launch.bench_peer) with bench.peer = path of the course's torch_peer.py (and torch
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
import json
import os
import pathlib
import platform
import resource
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from ebm.networks import energy_fn_of
from launch import bench_peer
from launch import bench_timing as timing
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
DISTILLED_STEPS = (1, 2, 4)        # the consistency chains of a distilled student
DISTILLED_SOLVER_STEPS = 20        # ... and the teacher's default solver, for comparison


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
  serve_images: int = 0


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
      peer_threads=_int("bench.peer_threads", b.peer_threads, 0),
      serve_images=_int("bench.serve_images", b.get("serve_images", 0), 0))


def _variant(config, overrides: dict[str, Any]):
  """A copy of `config` with dotted keys replaced."""
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    config_lib.set_value(c, key, value)
  return c


# ---------------------------------------------------------------------------
# Measuring one program.













# ---------------------------------------------------------------------------
# Records.









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
    m = timing.measure(f"matmul {dtype}", fn, (a, b), repeats=bs.repeats, warmup=max(bs.warmup, 1),
                 num_devices=nd)
    flops = 2.0 * n ** 3 * nd
    settings = {"dtype": dtype, "n": n, "devices": nd}
    rec = timing.rate_record(f"matmul.{timing.short(dtype)}.flops_per_s", flops, m, "FLOP/s", settings)
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
  m = timing.measure(f"train{tag} {config.model.dtype}", fn, (state, batch, run.keys["train"]),
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
  records = timing.time_records(name, m, settings)
  records.append(timing.rate_record(f"{name}.images_per_s", bs.batch_size, m, "images/s", settings))
  records += timing.flops_records(name, m, peaks, settings, flops)
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
  flops = timing.cost_flops(fn.lower(run.abstract_state.params, x).compile())
  return flops * run.mesh.devices.size if flops else None


def sampling_chains(config, task, bs: BenchSettings) -> list[tuple[str, Any, int, dict[str, Any]]]:
  """The chains `--mode bench` times: (name, task, network calls, `task.sample` options).

  The ancestral chain runs bench.sample_steps steps (0 = all T; fewer steps
  build a task whose schedule has that many) and DDIM bench.ddim_steps
  (capped at T). Each names its sampler explicitly: the config's own sampler
  (e.g. a 20-step solver) must not stand in for them. A distilled student
  (`ddpm.distill`) instead times its consistency chains (DISTILLED_STEPS),
  the teacher's 20-step SDE-DPM-Solver++(2M) and DDIM, on the same network.
  """
  num_timesteps = task.schedule.num_timesteps
  if task.spec.distilled:   # a student: its few-step chains against the teacher's solvers
    chains = [(f"consistency{k}", task, k, {"sampler": "consistency", "steps": k})
              for k in DISTILLED_STEPS]
    solver = min(DISTILLED_SOLVER_STEPS, num_timesteps - 1)
    chains.append((f"dpmpp_2m_sde{solver}", task, solver,
                   {"sampler": "dpmpp_2m_sde", "steps": solver}))
    if bs.ddim_steps:
      ddim = min(bs.ddim_steps, num_timesteps)
      chains.append((f"ddim{ddim}", task, ddim, {"sampler": "ddim", "steps": ddim}))
    return chains
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
    m = timing.measure("denoiser sample", fn, (params, key, noise), repeats=bs.repeats,
                 warmup=bs.warmup, num_devices=nd)
    records += timing.time_records("sample.denoiser", m, settings)
    records += timing.flops_records("sample.denoiser", m, {config.model.dtype: peaks[config.model.dtype]},
                              settings)
    return records

  num_timesteps = task.schedule.num_timesteps
  labels = (jnp.arange(batch, dtype=jnp.int32) % task.num_classes) if task.num_classes else None
  t = _sharded(data, np.full((batch,), num_timesteps - 1, np.int32))
  forward = jax.jit(lambda p, x, t: task.eps_fn(p, labels)(x, t),
                    in_shardings=(repl, data, data), out_shardings=data)
  fwd = timing.measure("forward", forward, (params, noise, t), repeats=bs.repeats, warmup=bs.warmup,
                 num_devices=nd)
  records += timing.time_records("sample.forward", fwd, settings)
  records += timing.flops_records("sample.forward", fwd,
                            {config.model.dtype: peaks[config.model.dtype]}, settings)

  for sampler, chain_task_, n, options in sampling_chains(config, task, bs):
    fn = jax.jit(lambda p, k, x, ct=chain_task_, o=options: ct.sample(p, k, batch, noise=x, **o),
                 in_shardings=(repl, repl, data), out_shardings=data)
    m = timing.measure(f"{sampler} chain", fn, (params, key, noise), repeats=bs.repeats,
                 warmup=min(bs.warmup, 1), num_devices=nd)
    s = dict(settings, sampler=sampler, steps=n, num_timesteps=chain_task_.schedule.num_timesteps)
    name = f"sample.{sampler}"
    records += timing.time_records(f"{name}.chain", m, s)
    step_time = m.median / n
    records.append(timing.record(f"{name}.step_time", step_time, "s", s,
                           median=step_time, min=min(m.times) / n, max=max(m.times) / n,
                           n=len(m.times)))
    records.append(timing.record(f"{name}.step_over_forward", step_time / fwd.median, "ratio",
                           dict(s, forward_s=fwd.median)))
    records.append(timing.rate_record(f"{name}.images_per_s", batch, m, "images/s", s))
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
  m = timing.measure(f"langevin{tag}", chain, (params, jax.random.key(5), x0), repeats=bs.repeats,
               warmup=min(bs.warmup, 1), num_devices=nd)
  name = f"ebm{tag}.langevin"
  records = timing.time_records(f"{name}.chain", m, settings)
  records.append(timing.rate_record(f"{name}.steps_per_s", steps, m, "steps/s", settings))
  records.append(timing.rate_record(f"{name}.image_steps_per_s", steps * batch, m, "image-steps/s",
                              settings))
  grad, x = _energy_grad_program(run, batch)
  g = timing.measure(f"energy grad{tag}", grad, (params, x), repeats=bs.repeats, warmup=bs.warmup,
               num_devices=nd)
  records += timing.time_records(f"ebm{tag}.energy_grad", g, settings)
  step_time = m.median / steps
  records.append(timing.record(f"{name}.step_over_energy_grad", step_time / g.median, "ratio",
                         dict(settings, energy_grad_s=g.median)))
  records += timing.flops_records(f"ebm{tag}.energy_grad", g,
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
    return timing.record("memory.peak", max(peaks), "bytes",
                   {"source": "device memory_stats peak_bytes_in_use (max over local devices)"})
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss *= 1 if sys.platform == "darwin" else 1024
  return timing.record("memory.peak", rss, "bytes", {"source": "process peak RSS (getrusage)"})


def _env_record(config, mesh) -> dict[str, Any]:
  devices = mesh.devices.flatten()
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  return timing.record("env.devices", len(devices), "devices", {
      "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
      "process_count": jax.process_count(), "jax": jax.__version__,
      "python": platform.python_version(), "cpu": cpu, "os_cpus": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "usable_cpus": bench_peer.usable_cpus(),
      "loadavg_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "task": config.task, "network": config.model.name})




# ---------------------------------------------------------------------------
# The PyTorch peer.













# ---------------------------------------------------------------------------
# Output.



# settings shown in the table: key -> label






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




def _set_loadavg_end(records: list[dict[str, Any]]) -> None:
  if hasattr(os, "getloadavg"):
    records[0]["settings"]["loadavg_end"] = round(os.getloadavg()[0], 2)


def _write(records: list[dict[str, Any]], workdir: str) -> epath.Path:
  out = epath.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "bench.json").write_text(json.dumps(records, indent=1) + "\n")
  return out / "bench.json"


def bench_serve(config, workdir: str, bs: BenchSettings) -> list[dict[str, Any]]:
  """POST /generate of bench.serve_images images with the config's sampler, served from
  `workdir`'s checkpoint by the server's own app and batcher, in process (FastAPI's
  TestClient: the route, the batcher, the PNG grid; no socket). Warm-up: every default
  program compiled, then `bench.warmup` untimed requests; `bench.repeats` timed.

  Raises:
    ConfigError: bench.serve_images above the server's largest bucket, or no checkpoint.
  """
  import time

  from fastapi.testclient import TestClient

  from launch.serve import app as serve_app
  if not (epath.Path(workdir) / "checkpoints").exists():
    raise ConfigError("bench.serve_images", bs.serve_images,
                      reason=f"serving needs a trained workdir; {workdir} holds no checkpoints/")
  serve_config = serve_app.serve_config_for_workdir(config, workdir)
  serve_config.warmup = "default"
  if bs.serve_images > max(serve_config.limits.buckets):
    raise ConfigError("bench.serve_images", bs.serve_images,
                      reason=f"the server answers at most {max(serve_config.limits.buckets)} "
                             "images per request (serve.limits.buckets)")
  batcher = serve_app.build(serve_config).start()
  try:
    if not batcher.wait_ready(900):
      raise RuntimeError(f"the server did not start: {batcher.error}")
    client = TestClient(serve_app.create_app(batcher, manage=False))
    name = next(iter(serve_config.models))
    body = {"model": name, "num_images": bs.serve_images, "seed": 0}
    times = []
    for i in range(bs.warmup + bs.repeats):
      start = time.perf_counter()
      r = client.post("/generate", json=body)
      elapsed = time.perf_counter() - start
      if r.status_code != 200:
        raise RuntimeError(f"POST /generate answered {r.status_code}: {r.text[:200]}")
      if i >= bs.warmup:
        times.append(elapsed)
  finally:
    batcher.stop()
  spec = batcher.models[name].task.spec
  settings = {"task": config.task, "network": config.model.name, "num_images": bs.serve_images,
              "sampler": spec.sampler, "steps": spec.num_steps, "response": "png grid",
              "transport": "in-process ASGI (fastapi TestClient)"}
  median = float(np.median(times))
  return [timing.record("serve.generate.time", median, "s", settings, median=median,
                        min=min(times), max=max(times), n=len(times)),
          timing.record("serve.generate.ms_per_image", 1e3 * median / bs.serve_images, "ms",
                        settings)]


def bench_workdir(config, workdir: str) -> list[dict[str, Any]]:
  """`--mode bench`: runs the benchmark, prints a table, writes WORKDIR/bench.json.

  bench.json is written after our measurements and again with the peer's rows.
  """
  records = run_bench(config)
  if jax.process_index() != 0:
    return records
  bs = bench_settings(config)
  if bs.serve_images:
    records += bench_serve(config, workdir, bs)
  path = _write(records, workdir)
  rows = bench_peer.compare_with_peer(config, bench_settings(config), records)
  if rows:
    records += rows
    _set_loadavg_end(records)
    _write(records, workdir)
  env = records[0]["settings"]
  print(f"bench: {config.task}/{config.model.name} on {records[0]['value']:g} "
        f"{env['backend']} device(s) ({env['device_kind']}), load average "
        f"{env['loadavg_start']} -> {env.get('loadavg_end')}")
  print(timing.format_table(records))
  print(f"wrote {path}")
  return records
