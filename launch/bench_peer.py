"""The peer of `--mode bench`: the course's PyTorch code, run like for like.

With bench.peer = the path of the course's torch_peer.py (and torch
importable), `compare_with_peer` runs the peer in a subprocess after our
programs, with the same batch sizes, steps and threads, in each of
bench.peer_modes (eager, torch.compile modes), and returns rows
{"name": "vs_peer.*", "value": ours / peer, "ours", "peer"}. `peer_model`
names the peer's counterpart of a config's network (None: no comparison).
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from absl import logging

from launch import bench_timing as timing

_PEER_TIMEOUT_S = 3 * 3600


def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


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


def _run_peer(bs, letter: str, steps: dict[str, int]) -> list[dict[str, Any]]:
  """Runs torch_peer.py for `letter`; returns its JSON records (errors logged, dropped)."""
  threads = bs.peer_threads or usable_cpus()
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
  return timing.record(f"vs_peer.{name}", ours / peer, "ours/peer", dict(
      settings, compared_unit=unit, higher_is_better=higher_is_better), ours=ours, peer=peer)


def _peer_rows(bs, letter: str, ours: list[dict[str, Any]],
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


def compare_with_peer(config, bs, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Runs the peer (bench.peer) and returns the rows ours/peer; [] when it cannot run.

  A peer that fails or has no counterpart of our model is logged, not raised:
  our own measurements stand without it.
  """
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
  steps = {"langevin": int(config.ebm.langevin_steps)}
  if config.task == "ddpm":
    steps["ancestral"] = bs.sample_steps or int(config.diffusion.num_timesteps)
  try:
    peer = _run_peer(bs, letter, steps)
  except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
    logging.error("bench.peer: %s", e)
    records[0]["settings"]["peer_error"] = str(e)[-2000:]
    return []
  return _peer_rows(bs, letter, records, peer)
