"""Converts released DDPM checkpoints (diffusers format) into ordinary workdirs.

  python -m launch.convert diffusers SRC --workdir DIR [--allow_pickle]
      [--model_config FILE] [--scheduler_config FILE] [--config SPEC]

SRC is a directory as `huggingface_hub.snapshot_download("google/ddpm-cifar10-32")`
leaves it (config.json + diffusion_pytorch_model.safetensors or .bin, the
scheduler's config in scheduler/scheduler_config.json or alongside; a
pipeline layout with unet/ and scheduler/ subdirectories works too), or one
weights file (.safetensors or .bin) with --model_config (and optionally
--scheduler_config).

What it does:
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


class ConversionError(ValueError):
  """The checkpoint cannot be converted; the message lists every reason."""


# ---------------------------------------------------------------------------
# The released checkpoints (from the files on the hub, written down here
# because nothing can be downloaded where the tests run). The converter reads
# the real files; these tables are what the tests and configs are checked
# against.

_UNET_32 = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
_UNET_256 = dict(
    _UNET_32,
    block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D",
                      "AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D",
                    "UpBlock2D"],
    sample_size=256,
)


def _scheduler(variance_type: str) -> dict[str, Any]:
  return {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
          "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
          "trained_betas": None, "variance_type": variance_type}


@dataclasses.dataclass(frozen=True)
class Released:
  """A released checkpoint: hub name, its configs, our config variant."""
  repo: str
  unet: Mapping[str, Any]
  scheduler: Mapping[str, Any]
  variant: str                       # configs/ddpm_released.py:<variant>


RELEASED = {
    r.variant: r for r in (
        Released("google/ddpm-cifar10-32", _UNET_32, _scheduler("fixed_large"), "cifar10"),
        Released("google/ddpm-celebahq-256", _UNET_256, _scheduler("fixed_small"), "celebahq"),
        Released("google/ddpm-church-256", _UNET_256, _scheduler("fixed_small"), "church"),
        Released("google/ddpm-bedroom-256", _UNET_256, _scheduler("fixed_small"), "bedroom"),
        Released("google/ddpm-cat-256", _UNET_256, _scheduler("fixed_small"), "cat"),
    )
}


# ---------------------------------------------------------------------------
# UNet2DModel config -> unet_ho fields.

# diffusers' UNet2DModel defaults (0.42), for keys a config file leaves out.
_UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2,
    "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv",
    "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu", "attention_head_dim": 8,
    "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

# Settings that `unet_ho` has fixed: (required value, what it means there).
_UNET_FIXED = {
    "center_input_sample": (False, "inputs already in [-1, 1]"),
    "time_embedding_type": ("positional", "the DDPM sinusoid"),
    "time_embedding_dim": (None, "time MLP width 4 ch"),
    "freq_shift": (1, "the DDPM code's frequencies"),
    "flip_sin_to_cos": (False, "[sin, cos] order"),
    "mid_block_type": ("UNetMidBlock2D", "resblock-attention-resblock middle"),
    "mid_block_scale_factor": (1, "unscaled residuals"),
    "downsample_padding": (0, "TF-'SAME' stride-2 convs"),
    "downsample_type": ("conv", "stride-2 conv downsampling"),
    "upsample_type": ("conv", "nearest + conv upsampling"),
    "act_fn": ("silu", "swish"),
    "attn_norm_num_groups": (None, "attention GroupNorm groups = norm_num_groups"),
    "norm_eps": (1e-6, "GroupNorm eps 1e-6"),
    "resnet_time_scale_shift": ("default", "additive time injection"),
    "add_attention": (True, "attention in the middle"),
    "class_embed_type": (None, "unconditional"),
    "num_class_embeds": (None, "unconditional"),
    "num_train_timesteps": (None, "integer timesteps"),
}
_UNET_READ = {"sample_size", "in_channels", "out_channels", "down_block_types",
              "up_block_types", "block_out_channels", "layers_per_block", "dropout",
              "attention_head_dim", "norm_num_groups"}
_UP_OF = {"DownBlock2D": "UpBlock2D", "AttnDownBlock2D": "AttnUpBlock2D"}


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """What a UNet2DModel config means for `unet_ho` and the data.

  Attributes:
    model: config.model keys -> values (ch, ch_mult, ...).
    image_shape: (H, W, C) the model takes.
  """
  model: dict[str, Any]
  image_shape: tuple[int, int, int]


def unet_spec(unet_config: Mapping[str, Any]) -> UNetSpec:
  """The `unet_ho` fields of a diffusers UNet2DModel config.

  Raises:
    ConversionError: listing every setting `unet_ho` cannot represent.
  """
  problems = []
  if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
    problems.append(f"_class_name={unet_config['_class_name']!r} (only UNet2DModel)")
  unknown = sorted(k for k in unet_config if not k.startswith("_") and k not in _UNET_DEFAULTS)
  if unknown:
    problems.append(f"unknown keys {unknown}")
  c = {k: unet_config.get(k, default) for k, default in _UNET_DEFAULTS.items()}
  for key, (want, meaning) in _UNET_FIXED.items():
    value = c[key]
    same = (value == want if not isinstance(want, float)
            else isinstance(value, (int, float)) and np.isclose(value, want, rtol=1e-9, atol=0))
    if not same or (want is None) != (value is None):
      problems.append(f"{key}={value!r} (unet_ho has {want!r}: {meaning})")

  widths = [int(w) for w in c["block_out_channels"]]
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  ch = widths[0] if widths else 0
  if not widths or any(w % ch for w in widths):
    problems.append(f"block_out_channels={widths} (each must be a multiple of the first)")
  if len(down) != len(widths):
    problems.append(f"down_block_types has {len(down)} entries for {len(widths)} widths")
  bad = [b for b in down if b not in _UP_OF]
  if bad:
    problems.append(f"down_block_types {bad} (allowed: {sorted(_UP_OF)})")
  elif up != [_UP_OF[b] for b in reversed(down)]:
    problems.append(f"up_block_types={up} do not mirror down_block_types={down}")
  size = c["sample_size"]
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      problems.append(f"sample_size={size} (square images only)")
    size = size[0]
  if not isinstance(size, int) or size <= 0 or size % 2 ** max(len(widths) - 1, 0):
    problems.append(f"sample_size={size!r} (must be divisible by 2^{len(widths) - 1})")
  if c["in_channels"] != c["out_channels"]:
    problems.append(f"in_channels={c['in_channels']} != out_channels={c['out_channels']}")
  attn_levels = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"]
  head_dim = c["attention_head_dim"]
  heads = 1
  if head_dim is not None and widths:
    # diffusers: heads = width // head_dim at each attention level and in the middle.
    per_level = {widths[i] // head_dim for i in attn_levels} | {widths[-1] // head_dim}
    if len(per_level) != 1 or any(widths[i] % head_dim for i in attn_levels + [-1]):
      problems.append(f"attention_head_dim={head_dim} gives head counts {sorted(per_level)} "
                      "(unet_ho has one head count for every attention layer)")
    else:
      heads = per_level.pop()
  if problems:
    raise ConversionError("unsupported UNet2DModel config: " + "; ".join(problems))
  model = dict(ch=ch, ch_mult=tuple(w // ch for w in widths),
               num_res_blocks=int(c["layers_per_block"]),
               attn_resolutions=tuple(size // 2 ** i for i in attn_levels),
               num_groups=int(c["norm_num_groups"]), num_heads=heads)
  if "dropout" in unet_config:
    model["dropout"] = float(unet_config["dropout"])
  return UNetSpec(model=model, image_shape=(size, size, int(c["in_channels"])))


# ---------------------------------------------------------------------------
# Scheduler config -> diffusion.* and sample.*

_VARIANCE = {"fixed_small": "beta_tilde", "fixed_large": "beta"}
_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# Keys that only matter for what this project does not do (dynamic
# thresholding's parameters, the spacing of `set_timesteps` subsequences).
_SCHEDULER_IGNORED = {"dynamic_thresholding_ratio", "sample_max_value", "timestep_spacing",
                      "steps_offset", "tensor_format"}


def scheduler_overrides(scheduler_config: Mapping[str, Any]) -> dict[str, Any]:
  """{config key: value} of a diffusers DDPMScheduler config.

  Raises:
    ConversionError: listing every setting the project cannot represent.
  """
  s = scheduler_config
  problems = []
  out: dict[str, Any] = {"diffusion.num_timesteps": int(s.get("num_train_timesteps", 1000))}
  schedule = s.get("beta_schedule", "linear")
  if s.get("trained_betas") is not None:
    problems.append("trained_betas is set (only named schedules)")
  if schedule == "linear":
    out.update({"diffusion.schedule": "linear",
                "diffusion.beta_start": float(s.get("beta_start", 1e-4)),
                "diffusion.beta_end": float(s.get("beta_end", 0.02))})
  elif schedule == "squaredcos_cap_v2":
    # diffusers' betas_for_alpha_bar(cosine, max_beta=0.999) = ddpm.schedules.cosine_betas.
    out.update({"diffusion.schedule": "cosine", "diffusion.cosine_s": 0.008})
  else:
    problems.append(f"beta_schedule={schedule!r} (allowed: linear, squaredcos_cap_v2)")
  variance = s.get("variance_type", "fixed_small")
  if variance in _VARIANCE:
    out["sample.variance"] = _VARIANCE[variance]
  else:
    problems.append(f"variance_type={variance!r} (allowed: {sorted(_VARIANCE)})")
  prediction = s.get("prediction_type", "epsilon")
  if prediction in _PREDICTION:
    out["diffusion.objective"] = _PREDICTION[prediction]
  else:
    problems.append(f"prediction_type={prediction!r} (allowed: {sorted(_PREDICTION)})")
  out["sample.clip_x0"] = bool(s.get("clip_sample", True))
  if out["sample.clip_x0"] and float(s.get("clip_sample_range", 1.0)) != 1.0:
    problems.append(f"clip_sample_range={s['clip_sample_range']} (x0 is clipped to [-1, 1])")
  for key in ("thresholding", "rescale_betas_zero_snr"):
    if s.get(key, False):
      problems.append(f"{key}=True (not implemented)")
  if problems:
    raise ConversionError("unsupported scheduler config: " + "; ".join(problems))
  return out


def scheduler_ignored_keys(scheduler_config: Mapping[str, Any]) -> list[str]:
  known = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
           "variance_type", "clip_sample", "prediction_type", "thresholding",
           "clip_sample_range", "rescale_betas_zero_snr"} | _SCHEDULER_IGNORED
  return sorted(k for k in scheduler_config if not k.startswith("_") and k not in known)


def model_overrides(spec: UNetSpec) -> dict[str, Any]:
  return {"model.name": "unet_ho", **{f"model.{k}": v for k, v in spec.model.items()}}


# ---------------------------------------------------------------------------
# The tensor name table.

@dataclasses.dataclass(frozen=True)
class Row:
  """One leaf of our parameter tree and the diffusers tensors it comes from.

  kind: "conv" (OIHW -> HWIO), "dense" (transposed), "vector" (as is),
  "qkv_kernel" / "qkv_bias" (to_q, to_k, to_v fused along the output axis).
  """
  path: tuple[str, ...]
  names: tuple[str, ...]
  kind: str


def _conv(path, name):
  return [Row(path + ("kernel",), (f"{name}.weight",), "conv"),
          Row(path + ("bias",), (f"{name}.bias",), "vector")]


def _dense(path, name):
  return [Row(path + ("kernel",), (f"{name}.weight",), "dense"),
          Row(path + ("bias",), (f"{name}.bias",), "vector")]


def _norm(path, name):
  return [Row(path + ("scale",), (f"{name}.weight",), "vector"),
          Row(path + ("bias",), (f"{name}.bias",), "vector")]


def _resnet(ours: str, theirs: str, has_shortcut: bool) -> list[Row]:
  rows = (_norm((ours, "norm1"), f"{theirs}.norm1") + _conv((ours, "conv1"), f"{theirs}.conv1")
          + _dense((ours, "temb_proj"), f"{theirs}.time_emb_proj")
          + _norm((ours, "norm2"), f"{theirs}.norm2") + _conv((ours, "conv2"), f"{theirs}.conv2"))
  if has_shortcut:
    rows += _conv((ours, "shortcut"), f"{theirs}.conv_shortcut")
  return rows


def _attention(ours: str, theirs: str) -> list[Row]:
  qkv = tuple(f"{theirs}.{p}" for p in ("to_q", "to_k", "to_v"))
  return (_norm((ours, "norm"), f"{theirs}.group_norm")
          + [Row((ours, "qkv", "kernel"), tuple(f"{n}.weight" for n in qkv), "qkv_kernel"),
             Row((ours, "qkv", "bias"), tuple(f"{n}.bias" for n in qkv), "qkv_bias")]
          + _dense((ours, "proj"), f"{theirs}.to_out.0"))


def name_table(model: Mapping[str, Any], abstract_params: Mapping[str, Any]) -> list[Row]:
  """Every leaf of `unet_ho`'s parameter tree with its diffusers tensor names.

  Module by module (ours <- diffusers UNet2DModel):
    temb/dense0, dense1          <- time_embedding.linear_1, linear_2
    conv_in                      <- conv_in
    down_{l}_block_{i}           <- down_blocks.{l}.resnets.{i}
    down_{l}_attn_{i}            <- down_blocks.{l}.attentions.{i}
    down_{l}_downsample/conv     <- down_blocks.{l}.downsamplers.0.conv
    mid_block_0, mid_attn, mid_block_1 <- mid_block.resnets.0, attentions.0, resnets.1
    up_{l}_block_{i}             <- up_blocks.{L-1-l}.resnets.{i}
    up_{l}_attn_{i}              <- up_blocks.{L-1-l}.attentions.{i}
    up_{l}_upsample/conv         <- up_blocks.{L-1-l}.upsamplers.0.conv
    norm_out, conv_out           <- conv_norm_out, conv_out
  Inside a residual block: norm1, conv1, temb_proj (time_emb_proj), norm2,
  conv2, shortcut (conv_shortcut, where the width changes); inside an
  attention block: norm (group_norm), qkv (to_q, to_k, to_v), proj
  (to_out.0).

  Args:
    model: the `unet_ho` fields (ch_mult, num_res_blocks).
    abstract_params: our parameter tree (shapes only); it says where the
      width changes (shortcuts) and where attention is.

  Returns:
    The rows, one per leaf of our tree.
  """
  levels = len(model["ch_mult"])
  blocks = model["num_res_blocks"]
  rows = (_dense(("temb", "dense0"), "time_embedding.linear_1")
          + _dense(("temb", "dense1"), "time_embedding.linear_2")
          + _conv(("conv_in",), "conv_in"))

  def block(ours, theirs):
    return _resnet(ours, theirs, "shortcut" in abstract_params[ours])

  def attn(ours, theirs):
    return _attention(ours, theirs) if ours in abstract_params else []

  for l in range(levels):
    for i in range(blocks):
      rows += block(f"down_{l}_block_{i}", f"down_blocks.{l}.resnets.{i}")
      rows += attn(f"down_{l}_attn_{i}", f"down_blocks.{l}.attentions.{i}")
    if l != levels - 1:
      rows += _conv((f"down_{l}_downsample", "conv"), f"down_blocks.{l}.downsamplers.0.conv")
  rows += block("mid_block_0", "mid_block.resnets.0")
  rows += _attention("mid_attn", "mid_block.attentions.0")
  rows += block("mid_block_1", "mid_block.resnets.1")
  for l in reversed(range(levels)):
    j = levels - 1 - l
    for i in range(blocks + 1):
      rows += block(f"up_{l}_block_{i}", f"up_blocks.{j}.resnets.{i}")
      rows += attn(f"up_{l}_attn_{i}", f"up_blocks.{j}.attentions.{i}")
    if l != 0:
      rows += _conv((f"up_{l}_upsample", "conv"), f"up_blocks.{j}.upsamplers.0.conv")
  rows += _norm(("norm_out",), "conv_norm_out") + _conv(("conv_out",), "conv_out")
  return rows


# Names of diffusers' old AttentionBlock (checkpoints saved before 0.15, as
# the google/ddpm-* files are) -> the current Attention's.
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v",
                         "proj_attn": "to_out.0"}
_DEPRECATED_RE = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def current_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames the deprecated attention tensors (query, key, value, proj_attn).

  Raises:
    ConversionError: a tensor is present under both its old and new name.
  """
  out, clashes = {}, []
  for name, value in tensors.items():
    m = _DEPRECATED_RE.match(name)
    new = f"{m[1]}.{_DEPRECATED_ATTENTION[m[2]]}.{m[3]}" if m else name
    if new in out:
      clashes.append(new)
    out[new] = value
  if clashes:
    raise ConversionError(f"tensors present under both their old and new names: {clashes}")
  return out


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The diffusers shape of each source tensor of a row, from our leaf's shape."""
  if kind == "conv":
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  if kind == "dense":
    return tuple(reversed(shape))
  if kind == "qkv_kernel":
    c = shape[0]
    return (c, c)
  if kind == "qkv_bias":
    return (shape[0] // 3,)
  return tuple(shape)


def _to_ours(kind: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
  if kind == "conv":
    return arrays[0].transpose(2, 3, 1, 0)
  if kind == "dense":
    return arrays[0].T
  if kind == "qkv_kernel":   # our qkv output columns are [q | k | v] (see AttentionBlock)
    return np.concatenate([a.T for a in arrays], axis=1)
  if kind == "qkv_bias":
    return np.concatenate(arrays)
  return arrays[0]


def map_tensors(tensors: Mapping[str, np.ndarray], rows: Sequence[Row],
                abstract_params: Mapping[str, Any]) -> dict[str, Any]:
  """Our parameter tree (float32 NumPy leaves) from diffusers tensors.

  Raises:
    ConversionError: one error listing every missing, extra and mis-shaped
      tensor.
  """
  tensors = current_names(tensors)
  missing, misshaped, used = [], [], set()
  leaves: dict[tuple[str, ...], np.ndarray] = {}
  for row in rows:
    node = abstract_params
    for part in row.path:
      node = node[part]
    want = _torch_shape(row.kind, tuple(node.shape))
    arrays = []
    for name in row.names:
      used.add(name)
      if name not in tensors:
        missing.append(name)
      elif tuple(tensors[name].shape) != want:
        misshaped.append(f"{name} {tuple(tensors[name].shape)} (expected {want})")
      else:
        arrays.append(np.asarray(tensors[name], np.float32))
    if len(arrays) == len(row.names):
      leaves[row.path] = _to_ours(row.kind, arrays)
  extra = sorted(set(tensors) - used)
  problems = [f"{label} ({len(items)}): {', '.join(items)}"
              for label, items in (("missing", missing), ("extra", extra),
                                   ("mis-shaped", misshaped)) if items]
  if problems:
    raise ConversionError("the checkpoint does not match the model: " + "; ".join(problems))
  params: dict[str, Any] = {}
  for path, value in leaves.items():
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return params


# ---------------------------------------------------------------------------
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
      raise ConversionError(f"{src}: weights must be a .safetensors or .bin file")
    if model_config is None:
      raise ConversionError(f"{src} is a weights file: pass its config with --model_config")
    weights, model_dir = src, src.parent
  elif src.is_dir():
    model_dir = src / "unet" if (src / "unet" / "config.json").is_file() else src
    found = [model_dir / n for n in _WEIGHT_NAMES if (model_dir / n).is_file()]
    if not found:
      raise ConversionError(f"no {' or '.join(_WEIGHT_NAMES)} in {model_dir}")
    weights = found[0]          # safetensors first
  else:
    raise ConversionError(f"{src} does not exist")
  model_config = pathlib.Path(model_config) if model_config else model_dir / "config.json"
  if not model_config.is_file():
    raise ConversionError(f"model config {model_config} not found (pass --model_config)")
  if scheduler_config is None:
    for root in ((src,) if src.is_dir() else ()) + (model_dir,):
      for candidate in (root / "scheduler" / "scheduler_config.json",
                        root / "scheduler_config.json"):
        if candidate.is_file() and scheduler_config is None:
          scheduler_config = candidate
  elif not pathlib.Path(scheduler_config).is_file():
    raise ConversionError(f"scheduler config {scheduler_config} not found")
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
      raise ConversionError(f"{path} cannot be read as safetensors "
                            f"({type(e).__name__}: {e})") from e
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}
  if path.suffix == ".bin":
    if not allow_pickle:
      raise ConversionError(PICKLE_REFUSED.format(path=path))
    try:
      import torch
    except ImportError as e:
      raise ConversionError(f"{path}: reading a .bin file needs torch "
                            "(pip install '.[torch]')") from e
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}
  raise ConversionError(f"{path}: weights must be a .safetensors or .bin file")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path} is not a readable JSON file ({e})") from e


# ---------------------------------------------------------------------------
# The conversion.

_HUB_NAME = re.compile(r"ddpm-(?:ema-)?(cifar10|celebahq|church|bedroom|cat)-(?:32|256)")


def default_config_spec(src: str | os.PathLike, spec: UNetSpec) -> str:
  """configs/ddpm_released.py:<variant> for SRC (by its hub name, else its size)."""
  found = _HUB_NAME.findall(str(pathlib.Path(src).expanduser().resolve()))
  if found:
    return f"{RELEASED_CONFIG}:{found[-1]}"
  if spec.image_shape == (32, 32, 3):
    return f"{RELEASED_CONFIG}:cifar10"
  raise ConversionError(
      f"cannot tell which dataset the {spec.image_shape} model of {src} belongs to: pass "
      f"--config {RELEASED_CONFIG.relative_to(REPO_ROOT)}:VARIANT "
      f"(VARIANT one of {', '.join(RELEASED)})")


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
    ConversionError: naming every problem of the configs, or listing every
      missing, extra and mis-shaped tensor.
  """
  source = find_source(src, model_config, scheduler_config)
  spec = unet_spec(_read_json(source.model_config))
  overrides = model_overrides(spec)
  notes = []
  if source.scheduler_config is not None:
    scheduler = _read_json(source.scheduler_config)
    overrides.update(scheduler_overrides(scheduler))
    ignored = scheduler_ignored_keys(scheduler)
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
    raise ConversionError(f"the checkpoint's model takes {spec.image_shape} images but "
                          f"{config_spec} has data.name={config.data.name!r} with {shape}")
  needed = {k: v for k, v in overrides.items() if _get(base, k) != _get(config, k)}
  tensors = read_tensors(source.weights, allow_pickle)
  abstract = _abstract_params(config)
  params = map_tensors(tensors, name_table(spec.model, abstract), abstract)
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
    ConversionError: as `convert_diffusers`, or when `workdir` exists and is
      not empty.
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise ConversionError(f"workdir {workdir} exists and is not empty")
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
  except (ConversionError, FileNotFoundError, ValueError) as e:  # e.g. a bad --config variant
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
