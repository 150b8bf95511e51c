"""The summary of scripts/gpu_check.sh: steps/s, MFU and chain times from its bench.json files.

    python -m launch.bench_summary OUT_DIR [--wall_s S]

Reads OUT_DIR/cifar10/bench.json (the 35.7M CIFAR-10 UNet: train step at the
bench batch in fp32 and bf16, the ancestral chain) and, when present,
OUT_DIR/released256/bench.json (a 256x256 released config's train step),
and writes OUT_DIR/gpu_check.json with a table on stdout. MFU is the
achieved FLOP/s (XLA's cost analysis of the compiled step over its median
time) over the chip's spec-sheet dense peak for the step's dtype
(`SPEC_PEAKS`, by device kind; float32 matmuls on NVIDIA GPUs run as TF32
unless disabled, so fp32 is given against both) and over the measured matmul
peak of the same run. The goals of docs/benchmarks.md are checked and
printed (never raised: the script is a measurement).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

# Dense peak FLOP/s from the vendors' spec sheets (SXM parts), by a substring of
# jax's device_kind. H200 has H100's compute (more and faster memory).
SPEC_PEAKS = {
    "H100": {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12},
    "H200": {"bfloat16": 989e12, "tf32": 494e12, "float32": 67e12},
}
GOALS = {"train_bf16_steps_per_s": 100.0, "ancestral_chain_s": 5.0}


def _find(records, name, **settings):
  for r in records:
    if r["name"] == name and all(r["settings"].get(k) == v for k, v in settings.items()):
      return r
  return None


def _peaks(device_kind: str) -> dict[str, float] | None:
  for key, peaks in SPEC_PEAKS.items():
    if key in device_kind:
      return peaks
  return None


def _train_rows(records, label: str) -> list[dict[str, Any]]:
  env = records[0]["settings"]
  spec = _peaks(env.get("device_kind", ""))
  rows = []
  for r in records:
    if r["name"] != "train.images_per_s":
      continue
    s = r["settings"]
    dtype, batch = s["dtype"], s["batch"]
    flops = _find(records, "train.flops_per_s", dtype=dtype)
    row = {"what": f"{label} train step", "dtype": dtype, "batch": batch,
           "steps_per_s": r["value"] / batch, "images_per_s": r["value"],
           "flops_per_s": flops["value"] if flops else None}
    measured = _find(records, f"train.frac_of_matmul_peak_{'bf16' if dtype == 'bfloat16' else 'fp32'}",
                     dtype=dtype)
    row["frac_of_measured_matmul_peak"] = measured["value"] if measured else None
    if spec and row["flops_per_s"]:
      row["mfu_spec"] = row["flops_per_s"] / spec[dtype]
      if dtype == "float32":
        row["mfu_spec_tf32"] = row["flops_per_s"] / spec["tf32"]
    rows.append(row)
  return rows


def summarize(out: pathlib.Path, wall_s: float | None = None) -> dict[str, Any]:
  cifar = json.loads((out / "cifar10" / "bench.json").read_text())
  env = cifar[0]["settings"]
  rows = _train_rows(cifar, "cifar10 35.7M")
  chain = _find(cifar, "sample.ancestral.chain.time")
  if chain:
    s = chain["settings"]
    rows.append({"what": f"ancestral chain, {s['steps']} steps", "batch": s["batch"],
                 "dtype": s["dtype"], "seconds": chain["value"]})
  released = out / "released256" / "bench.json"
  if released.exists():
    rows += _train_rows(json.loads(released.read_text()), "released 256x256")
  bf16 = next((r for r in rows if r["what"].startswith("cifar10") and r["dtype"] == "bfloat16"),
              None)
  goals = {}
  if bf16:
    goals["train_bf16_steps_per_s"] = {"goal": GOALS["train_bf16_steps_per_s"],
                                       "measured": bf16["steps_per_s"], "batch": bf16["batch"]}
  if chain:
    goals["ancestral_chain_s"] = {"goal": GOALS["ancestral_chain_s"], "measured": chain["value"],
                                  "batch": chain["settings"]["batch"],
                                  "steps": chain["settings"]["steps"]}
  summary = {"device_kind": env.get("device_kind"), "backend": env.get("backend"),
             "jax": env.get("jax"), "date": env.get("date"), "wall_s": wall_s,
             "rows": rows, "goals": goals}
  (out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  lines = [f"gpu_check on {summary['device_kind']} ({summary['backend']}, jax {summary['jax']}), "
           f"{summary['wall_s']} s"]
  for r in summary["rows"]:
    if "seconds" in r:
      lines.append(f"  {r['what']:34s} b={r['batch']:<4d} {r['dtype']:9s} {r['seconds']:.3f} s")
      continue
    mfu = f" MFU(spec) {r['mfu_spec']:.3f}" if r.get("mfu_spec") is not None else ""
    if r.get("mfu_spec_tf32") is not None:
      mfu += f" (vs TF32 {r['mfu_spec_tf32']:.3f})"
    frac = r.get("frac_of_measured_matmul_peak")
    lines.append(f"  {r['what']:34s} b={r['batch']:<4d} {r['dtype']:9s} "
                 f"{r['steps_per_s']:.2f} steps/s{mfu}"
                 + (f" of-matmul-peak {frac:.3f}" if frac is not None else ""))
  for name, g in summary["goals"].items():
    ok = (g["measured"] >= g["goal"]) if name.endswith("per_s") else (g["measured"] <= g["goal"])
    lines.append(f"  goal {name}: {g['measured']:.3g} against {g['goal']:g} -> "
                 f"{'met' if ok else 'not met'}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m launch.bench_summary",
                                   description="Summary of scripts/gpu_check.sh's bench runs.")
  parser.add_argument("out", help="the script's OUT_DIR")
  parser.add_argument("--wall_s", type=float, default=None, help="the script's wall time")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  if not (out / "cifar10" / "bench.json").is_file():
    print(f"error: {out}/cifar10/bench.json not found (run scripts/gpu_check.sh first)",
          file=sys.stderr)
    return 1
  print(format_summary(summarize(out, args.wall_s)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
