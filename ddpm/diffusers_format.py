"""The diffusers format of released DDPM checkpoints, mapped onto `unet_ho`.

Pure tables and functions, no file I/O (reading the files and writing the
workdir is `launch.convert`):

  * `RELEASED`: the configs of the five checkpoints Ho et al. released
    (google/ddpm-cifar10-32 and the four 256x256 ones), written down here;
  * `unet_spec` / `model_overrides`: a UNet2DModel config -> `unet_ho`
    fields (ch, ch_mult, num_res_blocks, attn_resolutions, num_groups,
    num_heads); every setting `unet_ho` cannot represent is listed in one
    `ConversionError`;
  * `scheduler_overrides`: a DDPMScheduler config -> `diffusion.*` and
    `sample.*` (betas, T, variance fixed_small -> beta_tilde, fixed_large ->
    beta, clipping, prediction type);
  * `name_table` / `map_tensors`: every tensor by name through an explicit
    table to the Flax parameter tree (convolutions OIHW -> HWIO, linear
    layers transposed, the attention's q/k/v fused into one qkv projection,
    GroupNorm weight/bias -> scale/bias); a missing, extra or mis-shaped
    tensor stops the mapping with one error listing all of them.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

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
