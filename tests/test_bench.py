"""`--mode bench` (launch/bench.py) on the smoke configs: the records of bench.json.

No timed assertions: only that every measurement is there, positive and
finite, and that derived numbers agree with the ones they derive from.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from launch import bench
from launch import bench_peer
from launch import config as config_lib
from launch import tasks
from launch.config_errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peer" / "torch_peer.py"
CACHE = os.environ.get("JAX_TEST_CACHE", str(ROOT / ".jax_cache"))
# The peer runs when torch is installed (the tests of its rows skip otherwise); one
# torch thread: two spin-waiting threads crawl on a busy 2-core machine.
PEER_OVERRIDE = [f"bench.peer={PEER}", "bench.peer_threads=1"] if PEER.is_file() else []


def _by_name(records, name, **settings):
  found = [r for r in records if r["name"] == name
           and all(r["settings"].get(k) == v for k, v in settings.items())]
  assert found, f"no record {name} {settings}; names: {sorted({r['name'] for r in records})}"
  return found[0]


def _check_records(records):
  for r in records:
    assert isinstance(r["name"], str) and isinstance(r["unit"], str), r
    assert isinstance(r["settings"], dict), r
    assert math.isfinite(r["value"]) and r["value"] > 0, r
    if "median" in r:
      assert r["min"] <= r["median"] <= r["max"], r
      assert r["value"] == pytest.approx(r["median"]), r
      assert r["n"] >= 2, r


@pytest.fixture(scope="module")
def ddpm_cli(tmp_path_factory):
  """The CLI on ddpm_fashion_mnist:smoke (with the peer when torch is installed)."""
  workdir = tmp_path_factory.mktemp("bench_ddpm")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE)
  args = ["--config", "configs/ddpm_fashion_mnist.py:smoke", "--workdir", str(workdir),
          "--mode", "bench", "--cpu_devices=2", "--config.bench.dtypes=float32"]
  args += [f"--config.{o}" for o in PEER_OVERRIDE]
  result = subprocess.run([sys.executable, "-m", "launch", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  records = json.loads((workdir / "bench.json").read_text())
  return records, result.stdout


@pytest.fixture(scope="module")
def ebm_records(tmp_path_factory):
  """The library call on ebm_fashion_mnist:smoke: fp32 + bf16, and at the peer's shape."""
  config = config_lib.load("configs/ebm_fashion_mnist.py:smoke",
                           ["bench.batch_size=2"] + PEER_OVERRIDE)
  workdir = tmp_path_factory.mktemp("bench_ebm")
  records = bench.bench_workdir(config, str(workdir))
  assert json.loads((workdir / "bench.json").read_text()) == records
  return records


@pytest.mark.parametrize("overrides, ancestral_steps", [([], 1000), (["bench.sample_steps=50"], 50)])
def test_sampling_chains_name_their_sampler(overrides, ancestral_steps):
  """The default samples with a 20-step solver: the bench's ancestral and DDIM
  chains must still be those samplers with the step counts they report."""
  config = config_lib.load("configs/ddpm_fashion_mnist.py", overrides)
  assert config.sample.sampler == "dpmpp_2m_sde" and config.sample.steps == 20
  task = tasks.build(config)
  chains = bench.sampling_chains(config, task, bench.bench_settings(config))
  assert [(name, n) for name, _, n, _ in chains] == [("ancestral", ancestral_steps),
                                                     ("ddim", 50)]
  for name, chain_task, n, options in chains:
    described = chain_task.describe_sampling(options)
    assert (described["sampler"], described["steps"]) == (name, n)
    assert chain_task.schedule.num_timesteps == (ancestral_steps if name == "ancestral" else 1000)


@pytest.mark.slow  # a --mode bench run (~1-1.5 min on 2 cores); .ci/run runs it
def test_ddpm_cli_records(ddpm_cli):
  records, stdout = ddpm_cli
  _check_records(records)
  assert "train.images_per_s" in stdout and "bench.json" in stdout
  env = _by_name(records, "env.devices")
  assert env["settings"]["backend"] and env["value"] == 2
  peaks = {d: _by_name(records, f"matmul.{d}.flops_per_s")["value"] for d in ("fp32", "bf16")}

  step = _by_name(records, "train.time", dtype="float32")
  assert step["settings"]["batch"] == 8 and step["n"] == 2
  images = _by_name(records, "train.images_per_s", dtype="float32")
  assert images["value"] == pytest.approx(8 / step["value"])
  flops = _by_name(records, "train.flops", dtype="float32")["value"]
  assert flops > 1e6
  achieved = _by_name(records, "train.flops_per_s", dtype="float32")["value"]
  assert achieved == pytest.approx(flops / step["value"])
  for d in ("fp32", "bf16"):
    frac = _by_name(records, f"train.frac_of_matmul_peak_{d}", dtype="float32")["value"]
    assert frac == pytest.approx(achieved / peaks[d])
  assert _by_name(records, "train.compile_time")["value"] > 0
  assert not [r for r in records if r["settings"].get("dtype") == "bfloat16"
              and r["name"].startswith("train")]  # bench.dtypes=float32

  forward = _by_name(records, "sample.forward.time")
  assert forward["settings"]["batch"] == 4
  for sampler, steps in (("ancestral", 20), ("ddim", 5)):
    chain = _by_name(records, f"sample.{sampler}.chain.time")
    assert chain["settings"]["steps"] == steps
    per_step = _by_name(records, f"sample.{sampler}.step_time")["value"]
    assert per_step * steps == pytest.approx(chain["value"])
    ratio = _by_name(records, f"sample.{sampler}.step_over_forward")["value"]
    assert ratio == pytest.approx(per_step / forward["value"])
    assert _by_name(records, f"sample.{sampler}.chain.compile_time")["value"] > 0
  assert _by_name(records, "memory.peak")["unit"] == "bytes"


@pytest.mark.slow  # a --mode bench run (~1-1.5 min on 2 cores); .ci/run runs it
def test_ebm_records(ebm_records):
  records = ebm_records
  _check_records(records)
  for dtype in ("float32", "bfloat16"):
    step = _by_name(records, "train.time", dtype=dtype)
    assert step["settings"]["image_shape"] == [28, 28, 1]
    assert step["settings"]["langevin_steps"] == 5
    assert _by_name(records, "train.flops", dtype=dtype)["value"] > 0
  for tag, shape in (("", [28, 28, 1]), (".peer_shape", [32, 32, 3])):
    chain = _by_name(records, f"ebm{tag}.langevin.chain.time")
    assert chain["settings"]["image_shape"] == shape and chain["settings"]["batch"] == 2
    rate = _by_name(records, f"ebm{tag}.langevin.steps_per_s")["value"]
    assert rate == pytest.approx(5 / chain["value"])
    assert _by_name(records, f"ebm{tag}.energy_grad.flops")["value"] > 0
  assert _by_name(records, "train.peer_shape.time")["settings"]["image_shape"] == [32, 32, 3]


@pytest.mark.slow  # a --mode bench run (~1-1.5 min on 2 cores); .ci/run runs it
@pytest.mark.skipif(not PEER.is_file(), reason="the peer's torch_peer.py is not here")
def test_peer_rows(ddpm_cli, ebm_records):
  pytest.importorskip("torch")
  records, _ = ddpm_cli
  rows = [r for r in records + ebm_records if r["name"].startswith("vs_peer.")]
  names = {r["name"] for r in rows}
  assert {"vs_peer.matmul.fp32.flops_per_s", "vs_peer.train.images_per_s.eager",
          "vs_peer.sample.ancestral.step_time.eager", "vs_peer.sample.ancestral.chain_time.eager",
          "vs_peer.ebm.langevin.steps_per_s", "vs_peer.ebm.cd_step.time"} <= names
  for r in rows:
    assert r["unit"] == "ours/peer"
    assert r["ours"] > 0 and r["peer"] > 0
    assert r["value"] == pytest.approx(r["ours"] / r["peer"])
  train = _by_name(records, "vs_peer.train.images_per_s.eager")
  assert train["ours"] == _by_name(records, "train.images_per_s", dtype="float32")["value"]
  assert train["settings"]["peer_model"] == "b" and train["settings"]["peer_batch"] == 8
  assert not train["settings"]["like_for_like"]  # smoke width 8, the peer's 16
  chain = _by_name(records, "vs_peer.sample.ancestral.chain_time.eager")
  assert chain["ours"] == _by_name(records, "sample.ancestral.chain.time")["value"]
  assert chain["settings"]["steps"] == 20
  langevin = _by_name(ebm_records, "vs_peer.ebm.langevin.steps_per_s")
  assert langevin["ours"] == _by_name(ebm_records, "ebm.peer_shape.langevin.steps_per_s")["value"]
  assert langevin["settings"]["ours_image_shape"] == [32, 32, 3]
  assert langevin["settings"]["peer_batch"] == 2


def test_peer_model_mapping():
  def model(spec, *overrides):
    return bench_peer.peer_model(config_lib.load(spec, list(overrides)))
  assert model("configs/ddpm_mnist.py:smoke") == "b"
  assert model("configs/ddpm_mnist_conditional.py:smoke") == "b_cond"
  assert model("configs/ebm_cifar10.py:cnn") == "c"
  assert model("configs/ebm_cifar10.py:smoke") is None       # the IGEBM ResNet


def test_bad_bench_keys_name_the_key():
  config = config_lib.load("configs/ddpm_fashion_mnist.py:smoke", ["bench.dtypes=float16"])
  with pytest.raises(ConfigError, match="bench.dtypes"):
    bench.bench_settings(config)
  config = config_lib.load("configs/ddpm_fashion_mnist.py:smoke", ["bench.peer_modes=jit"])
  with pytest.raises(ConfigError, match="bench.peer_modes"):
    bench.bench_settings(config)
  settings = bench.bench_settings(config_lib.load("configs/ddpm_fashion_mnist.py:smoke"))
  assert settings.batch_size == 8 and settings.sample_batch == 4
  with pytest.raises(ConfigError, match="bench.peer"):
    bench.bench_settings(config_lib.load("configs/ddpm_fashion_mnist.py:smoke",
                                         ["bench.peer=/nonexistent/torch_peer.py"]))
  with pytest.raises(ConfigError, match="bench.sample_batch"):
    bench.run_bench(config_lib.load("configs/ddpm_fashion_mnist.py:smoke",
                                    ["bench.sample_batch=3"]))  # 2 devices
