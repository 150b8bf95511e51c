"""The timers and records of `--mode bench`.

`measure` compiles a jitted program (`jit(f).lower(...).compile()`, timed:
the compile time), runs it `warmup` times untimed, then times `repeats`
calls with `block_until_ready`, and reads XLA's cost (FLOPs) and memory
analyses of the compiled program and the CPU other processes used
meanwhile. The record helpers turn a `Measured` into the records of
bench.json ({"name", "value", "unit", "settings"}, timings also "median",
"min", "max", "n"); `format_table` prints them.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any

import jax
from absl import logging

@dataclasses.dataclass
class Measured:
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


def cpu_busy_s() -> float | None:
  """Machine-wide busy CPU seconds so far (Linux /proc/stat), else None."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def cost_flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def program_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def measure(label: str, jitted, args: tuple, *, repeats: int, warmup: int, num_devices: int,
             donate_first: bool = False) -> Measured:
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
  busy0, own0, wall0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  busy1, own1, wall1 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
  other = None
  if busy0 is not None and busy1 is not None:
    other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))
  flops = cost_flops(compiled)
  logging.info("bench: %s compiled in %.1f s, median %.4g s of %d", label, t2 - t0,
               statistics.median(times), len(times))
  return Measured(compile_s=t2 - t0, lower_s=t1 - t0, times=times,
                   flops=flops * num_devices if flops else None,
                   program_bytes=program_bytes(compiled), other_cpu=other)


def record(name: str, value: float, unit: str, settings: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
  return {"name": name, "value": float(value), "unit": unit, **extra, "settings": settings}


def time_records(name: str, m: Measured, settings: dict[str, Any]) -> list[dict[str, Any]]:
  """`name`.time, .compile_time and .program_bytes records."""
  times = m.times
  timed = settings
  if m.other_cpu is not None:
    timed = dict(settings, other_procs_cpu_cores=round(m.other_cpu, 2))
  out = [record(f"{name}.time", statistics.median(times), "s", timed,
                 median=statistics.median(times), min=min(times), max=max(times),
                 n=len(times)),
         record(f"{name}.compile_time", m.compile_s, "s",
                 dict(settings, lower_s=round(m.lower_s, 4)))]
  if m.program_bytes is not None:
    out.append(record(f"{name}.program_bytes", m.program_bytes, "bytes/device", settings))
  return out


def rate_record(name: str, amount: float, m: Measured, unit: str,
                 settings: dict[str, Any]) -> dict[str, Any]:
  """amount / time: value from the median time, min/max from the max/min time."""
  rates = [amount / t for t in m.times]
  if m.other_cpu is not None:
    settings = dict(settings, other_procs_cpu_cores=round(m.other_cpu, 2))
  return record(name, amount / m.median, unit, settings, median=amount / m.median,
                 min=min(rates), max=max(rates), n=len(rates))


def flops_records(name: str, m: Measured, peaks: dict[str, float],
                   settings: dict[str, Any], flops: float | None = None) -> list[dict[str, Any]]:
  flops = flops if flops is not None else m.flops
  if not flops:
    return []
  out = [record(f"{name}.flops", flops, "FLOP/call", settings),
         rate_record(f"{name}.flops_per_s", flops, m, "FLOP/s", settings)]
  for dtype, peak in peaks.items():
    out.append(record(f"{name}.frac_of_matmul_peak_{short(dtype)}", flops / m.median / peak,
                       "fraction", dict(settings, matmul_peak_flops_per_s=peak)))
  return out


def _fmt(value: float, unit: str) -> str:
  if unit in ("FLOP/s", "FLOP/call"):
    return f"{value / 1e9:.3g} G{unit}"
  if unit.startswith("bytes"):
    return f"{value / 2 ** 20:.4g} MiB{unit[5:]}"
  if unit == "s":
    return f"{value * 1e3:.4g} ms" if value < 1 else f"{value:.4g} s"
  return f"{value:.4g} {unit}"


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


def short(dtype: str) -> str:
  """fp32 / bf16 for float32 / bfloat16, in record names."""
  return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)
