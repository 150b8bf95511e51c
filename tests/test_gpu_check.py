"""scripts/gpu_check.sh (the GPU checks of docs/benchmarks.md) run on this CPU with TINY=1:
the :smoke configs at tiny sizes. Checks that every figure of its summary is there; the
figures themselves are measurements (docs/benchmarks.md), not asserted."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from launch import bench_summary

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two --mode bench runs of the smoke configs (~2 min on 2 cores)
def test_gpu_check_script_on_tiny_configs(tmp_path):
  env = dict(os.environ, TINY="1", PY=sys.executable)
  out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / "gpu_check.json").read_text())
  assert summary["backend"] == "cpu" and summary["wall_s"] > 0
  train = [r for r in summary["rows"] if "steps_per_s" in r]
  assert {(r["what"].split()[0], r["dtype"]) for r in train} == {
      ("cifar10", "float32"), ("cifar10", "bfloat16"), ("released", "bfloat16")}
  for r in train:
    assert r["steps_per_s"] > 0 and r["flops_per_s"] > 0
    assert r["steps_per_s"] == pytest.approx(r["images_per_s"] / r["batch"])
    assert "mfu_spec" not in r            # a CPU has no spec-sheet peak here
  (chain,) = [r for r in summary["rows"] if "seconds" in r]
  assert chain["seconds"] > 0 and chain["batch"] == 4
  assert set(summary["goals"]) == {"train_bf16_steps_per_s", "ancestral_chain_s"}
  assert "goal train_bf16_steps_per_s" in out.stdout


def test_summary_mfu_against_the_spec_peak(tmp_path):
  """MFU = FLOP/s over the spec-sheet peak of the step's dtype (a hand-made bench.json)."""
  def train(dtype, images_per_s, flops_per_s):
    s = {"dtype": dtype, "batch": 128}
    return [{"name": "train.images_per_s", "value": images_per_s, "unit": "images/s",
             "settings": s},
            {"name": "train.flops_per_s", "value": flops_per_s, "unit": "FLOP/s", "settings": s}]
  records = ([{"name": "env.devices", "value": 1, "unit": "devices",
               "settings": {"device_kind": "NVIDIA H100 80GB HBM3", "backend": "gpu",
                            "jax": "x", "date": "d"}}]
             + train("float32", 1280.0, 33.5e12) + train("bfloat16", 12800.0, 494.5e12)
             + [{"name": "sample.ancestral.chain.time", "value": 4.0, "unit": "s",
                 "settings": {"steps": 1000, "batch": 256, "dtype": "float32"}}])
  (tmp_path / "cifar10").mkdir()
  (tmp_path / "cifar10" / "bench.json").write_text(json.dumps(records))
  summary = bench_summary.summarize(tmp_path, 1.0)
  fp32, bf16 = summary["rows"][:2]
  assert fp32["steps_per_s"] == 10.0 and bf16["steps_per_s"] == 100.0
  assert fp32["mfu_spec"] == pytest.approx(0.5) and fp32["mfu_spec_tf32"] == pytest.approx(33.5 / 494)
  assert bf16["mfu_spec"] == pytest.approx(0.5)
  text = bench_summary.format_summary(summary)
  assert "goal train_bf16_steps_per_s: 100 against 100 -> met" in text
  assert "goal ancestral_chain_s: 4 against 5 -> met" in text
