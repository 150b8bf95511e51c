"""Converts released DDPM checkpoints (diffusers format) into ordinary workdirs.

  python -m launch.convert diffusers SRC --workdir DIR [--allow_pickle]
      [--model_config FILE] [--scheduler_config FILE] [--config SPEC]

SRC is a directory as `huggingface_hub.snapshot_download("google/ddpm-cifar10-32")`
leaves it (config.json + diffusion_pytorch_model.safetensors or .bin, the
scheduler's config in scheduler/scheduler_config.json or alongside; a
pipeline layout with unet/ and scheduler/ subdirectories works too), or one
weights file (.safetensors or .bin) with --model_config (and optionally
--scheduler_config).

What it does (the tables and the mapping are `ddpm.diffusers_format`):
  1. Reads the UNet2DModel config and turns it into `unet_ho` fields (ch,
     ch_mult, num_res_blocks, attn_resolutions, num_groups, num_heads); every
     setting `unet_ho` cannot represent (another time embedding, GroupNorm
     eps, padding, ...) is listed in one error.
  2. Reads the scheduler config into `diffusion.*` and `sample.*` (betas,
     T, variance fixed_small -> beta_tilde / fixed_large -> beta, clipping,
     prediction type).
  3. Maps every tensor by name through an explicit table (`name_table`) to
     the Flax parameter tree: convolutions OIHW -> HWIO, linear layers
     transposed, the attention's q/k/v fused into our one qkv projection,
     GroupNorm weight/bias -> scale/bias. A missing, extra or mis-shaped
     tensor stops the conversion with one error listing all of them.
  4. Writes an ordinary workdir: config.json and an Orbax checkpoint at step
     0 with params = ema_params = the released weights (fresh Adam state),
     so every `--mode` runs on it. Everything is written into a temporary
     directory next to DIR and renamed at the end: a failed conversion
     leaves nothing behind.

Safetensors files are read with `safetensors.numpy` (no torch). A .bin file
is a Python pickle, and unpickling a file can run arbitrary code; it is only
read with --allow_pickle, and then through `torch.load(weights_only=True)`
(torch's restricted unpickler). Prefer the .safetensors file the hub offers.

The config of the workdir starts from --config (default: the matching
variant of configs/ddpm_released.py, recognised from the hub name in SRC, or
:cifar10 for a 32x32 model) with the checkpoint's own settings on top; the
converter prints the `python -m launch` command (with any overrides the
config file needs to match) that runs the modes on the workdir.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from launch import config as config_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RELEASED_CONFIG = REPO_ROOT / "configs" / "ddpm_released.py"


from ddpm import diffusers_format as fmt

# Reading the files.

@dataclasses.dataclass(frozen=True)
class Source:
  """The files of a checkpoint: weights, model config, scheduler config (or None)."""
  weights: pathlib.Path
  model_config: pathlib.Path
  scheduler_config: pathlib.Path | None


_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def find_source(src: str | os.PathLike, model_config: str | None = None,
                scheduler_config: str | None = None) -> Source:
  """Locates the weights and configs of SRC (a hub snapshot directory or a file)."""
  src = pathlib.Path(src).expanduser()
  if src.is_file():
    if src.suffix not in (".safetensors", ".bin"):
      raise fmt.ConversionError(f"{src}: weights must be a .safetensors or .bin file")
    if model_config is None:
      raise fmt.ConversionError(f"{src} is a weights file: pass its config with --model_config")
    weights, model_dir = src, src.parent
  elif src.is_dir():
    model_dir = src / "unet" if (src / "unet" / "config.json").is_file() else src
    found = [model_dir / n for n in _WEIGHT_NAMES if (model_dir / n).is_file()]
    if not found:
      raise fmt.ConversionError(f"no {' or '.join(_WEIGHT_NAMES)} in {model_dir}")
    weights = found[0]          # safetensors first
  else:
    raise fmt.ConversionError(f"{src} does not exist")
  model_config = pathlib.Path(model_config) if model_config else model_dir / "config.json"
  if not model_config.is_file():
    raise fmt.ConversionError(f"model config {model_config} not found (pass --model_config)")
  if scheduler_config is None:
    for root in ((src,) if src.is_dir() else ()) + (model_dir,):
      for candidate in (root / "scheduler" / "scheduler_config.json",
                        root / "scheduler_config.json"):
        if candidate.is_file() and scheduler_config is None:
          scheduler_config = candidate
  elif not pathlib.Path(scheduler_config).is_file():
    raise fmt.ConversionError(f"scheduler config {scheduler_config} not found")
  return Source(weights, model_config,
                pathlib.Path(scheduler_config) if scheduler_config else None)


PICKLE_REFUSED = (
    "{path} is a PyTorch pickle (.bin): unpickling runs whatever code the file contains, so "
    "it is refused. Use the repository's diffusion_pytorch_model.safetensors instead, or, "
    "if you trust the file, pass --allow_pickle (read with torch.load(weights_only=True), "
    "which needs torch)")


def read_tensors(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """{name: float32 array} of a .safetensors file (no torch) or, if allowed, a .bin."""
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file
    try:
      tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad files
      raise fmt.ConversionError(f"{path} cannot be read as safetensors "
                            f"({type(e).__name__}: {e})") from e
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  if path.suffix == ".bin":
    if not allow_pickle:
      raise fmt.ConversionError(PICKLE_REFUSED.format(path=path))
    try:
      import torch
    except ImportError as e:
      raise fmt.ConversionError(f"{path}: reading a .bin file needs torch "
                            "(pip install '.[torch]')") from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}
  raise fmt.ConversionError(f"{path}: weights must be a .safetensors or .bin file")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise fmt.ConversionError(f"{path} is not a readable JSON file ({e})") from e


# ---------------------------------------------------------------------------
# The conversion.

_HUB_NAME = re.compile(r"ddpm-(?:ema-)?(cifar10|celebahq|church|bedroom|cat)-(?:32|256)")


def default_config_spec(src: str | os.PathLike, spec: fmt.UNetSpec) -> str:
  """configs/ddpm_released.py:<variant> for SRC (by its hub name, else its size)."""
  found = _HUB_NAME.findall(str(pathlib.Path(src).expanduser().resolve()))
  if found:
    return f"{RELEASED_CONFIG}:{found[-1]}"
  if spec.image_shape == (32, 32, 3):
    return f"{RELEASED_CONFIG}:cifar10"
  raise fmt.ConversionError(
      f"cannot tell which dataset the {spec.image_shape} model of {src} belongs to: pass "
      f"--config {RELEASED_CONFIG.relative_to(REPO_ROOT)}:VARIANT "
      f"(VARIANT one of {', '.join(fmt.RELEASED)})")


@dataclasses.dataclass
class Converted:
  """A converted checkpoint.

  Attributes:
    config: the project config (locked, validated).
    params: our parameter tree (float32 NumPy leaves).
    config_spec: the config file it started from.
    overrides: the `key=value` overrides that file needs to equal `config`.
    num_tensors: tensors read.
    notes: things the user should know (ignored scheduler keys, ...).
  """
  config: Any
  params: dict[str, Any]
  config_spec: str
  overrides: dict[str, Any]
  num_tensors: int
  notes: list[str]


def _abstract_params(config) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  from launch import tasks
  task = tasks.build(config)
  x = jnp.zeros((1, *task.image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(
      lambda: task.network.init(jax.random.key(0), x, t, None, train=False))["params"]


def convert_diffusers(src: str | os.PathLike, *, model_config: str | None = None,
                      scheduler_config: str | None = None, config_spec: str | None = None,
                      allow_pickle: bool = False) -> Converted:
  """Reads a diffusers UNet2DModel checkpoint into a project config and parameters.

  Args:
    src: a hub snapshot directory, or a .safetensors/.bin file.
    model_config: the UNet2DModel config.json (default: found next to the weights).
    scheduler_config: the DDPMScheduler config (default: found in SRC).
    config_spec: the config file to start from (default: `default_config_spec`).
    allow_pickle: allow reading a .bin (pickle) file.

  Raises:
    fmt.ConversionError: naming every problem of the configs, or listing every
      missing, extra and mis-shaped tensor.
  """
  source = find_source(src, model_config, scheduler_config)
  spec = fmt.unet_spec(_read_json(source.model_config))
  overrides = fmt.model_overrides(spec)
  notes = []
  if source.scheduler_config is not None:
    scheduler = _read_json(source.scheduler_config)
    overrides.update(fmt.scheduler_overrides(scheduler))
    ignored = fmt.scheduler_ignored_keys(scheduler)
    if ignored:
      notes.append(f"scheduler keys not used: {', '.join(ignored)}")
  else:
    notes.append("no scheduler config found: diffusion.* and sample.* are the config file's")
  config_spec = config_spec or default_config_spec(src, spec)
  base = config_lib.load(config_spec)
  config = config_lib.load(config_spec, overrides)
  from launch import tasks
  shape = tuple(tasks.build(config).image_shape)
  if shape != spec.image_shape:
    raise fmt.ConversionError(f"the checkpoint's model takes {spec.image_shape} images but "
                          f"{config_spec} has data.name={config.data.name!r} with {shape}")
  needed = {k: v for k, v in overrides.items() if _get(base, k) != _get(config, k)}
  tensors = read_tensors(source.weights, allow_pickle)
  abstract = _abstract_params(config)
  params = fmt.map_tensors(tensors, fmt.name_table(spec.model, abstract), abstract)
  return Converted(config=config, params=params, config_spec=config_spec, overrides=needed,
                   num_tensors=len(tensors), notes=notes)


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return tuple(node) if isinstance(node, list) else node


def write_workdir(config, state_or_params, workdir: str | os.PathLike) -> None:
  """Writes config.json and the Orbax checkpoint of a workdir, as training does.

  Args:
    config: the project config.
    state_or_params: a `TrainState`, or a parameter tree that becomes one at
      step 0 with params = ema_params and a fresh optimiser state.
    workdir: the directory to write into.
  """
  import jax
  from core.train_state import TrainState
  from launch import checkpoint as checkpoint_lib
  from launch import tasks
  state = state_or_params
  if not isinstance(state, TrainState):
    state = TrainState.create(jax.tree.map(jax.numpy.asarray, state_or_params),
                              tasks.build(config).tx)
  config_json = config_lib.to_json(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config_json)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=config.train.keep_ckpts, async_save=False)
  try:
    ckpt.save(int(state.step), state, config_json, force=True)
    ckpt.wait()
  finally:
    ckpt.close()


def convert_to_workdir(src: str | os.PathLike, workdir: str | os.PathLike,
                       **options) -> Converted:
  """`convert_diffusers` + `write_workdir`, all or nothing.

  The workdir is written under a temporary name next to it and renamed when
  complete; on any error nothing is left behind.

  Raises:
    fmt.ConversionError: as `convert_diffusers`, or when `workdir` exists and is
      not empty.
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise fmt.ConversionError(f"workdir {workdir} exists and is not empty")
  converted = convert_diffusers(src, **options)
  workdir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{workdir.name}.converting-", dir=workdir.parent))
  try:
    write_workdir(converted.config, converted.params, tmp)
    if workdir.exists():
      workdir.rmdir()          # empty (checked above)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return converted


def run_command(converted: Converted, workdir: str | os.PathLike) -> str:
  """The `python -m launch` command that samples from the converted workdir."""
  spec = converted.config_spec
  path, _, variant = spec.partition(":")
  try:
    path = str(pathlib.Path(path).resolve().relative_to(pathlib.Path.cwd()))
  except ValueError:
    pass
  flags = [f"--config {shlex.quote(path + (':' + variant if variant else ''))}",
           f"--workdir {shlex.quote(str(workdir))}",
           "--mode sample"]
  for key, value in converted.overrides.items():
    flags.append(shlex.quote(f"--config.{key}={value!r}" if isinstance(value, tuple)
                             else f"--config.{key}={value}"))
  return "python -m launch " + " ".join(flags)


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m launch.convert diffusers SRC --workdir DIR`; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m launch.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="format", required=True)
  p = commands.add_parser("diffusers", help="a diffusers UNet2DModel checkpoint")
  p.add_argument("src", help="hub snapshot directory, or a .safetensors/.bin file")
  p.add_argument("--workdir", required=True, help="the workdir to create (must not exist)")
  p.add_argument("--model_config", help="UNet2DModel config.json (default: next to the weights)")
  p.add_argument("--scheduler_config", help="DDPMScheduler config (default: found in SRC)")
  p.add_argument("--config", help="config file[:variant] to start from "
                                  "(default: the matching configs/ddpm_released.py variant)")
  p.add_argument("--allow_pickle", action="store_true",
                 help="allow a .bin file (a pickle: unpickling can run code; trusted files only)")
  args = parser.parse_args(argv)
  try:
    converted = convert_to_workdir(args.src, args.workdir, model_config=args.model_config,
                                   scheduler_config=args.scheduler_config,
                                   config_spec=args.config, allow_pickle=args.allow_pickle)
  except config_lib.ConfigError as e:
    print(f"error: the converted config is invalid: {e}", file=sys.stderr)
    return 1
  except (fmt.ConversionError, FileNotFoundError, ValueError) as e:  # e.g. a bad --config variant
    print(f"error: {e}", file=sys.stderr)
    return 1
  count = sum(int(np.prod(v.shape)) for v in _leaves(converted.params))
  print(f"converted {converted.num_tensors} tensors ({count:,} parameters) into {args.workdir}")
  for note in converted.notes:
    print(f"note: {note}")
  print(f"sample with: {run_command(converted, args.workdir)}")
  return 0


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
