"""launch.convert: the released DDPM architectures, the tensor mapping and its errors,
and forward-pass equivalence with diffusers' UNet2DModel (the reference).

The equivalence tests build a UNet2DModel with each released config (fixed
seed; biases and GroupNorm affines randomised too, so that a swapped or
dropped tensor shows), save it with `save_pretrained`, convert it with the
CLI's function and compare the outputs on the same inputs and timesteps.
"""
import json
import shlex
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm import diffusers_format as fmt
from launch import config as config_lib
from launch import convert
from launch import sample as sample_lib
from launch import workdir as workdir_lib

RELEASED_SPEC = str(convert.RELEASED_CONFIG)
PARAMS_32 = 35_746_307
PARAMS_256 = 113_673_219


def _count(tree):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def _public(config):
  return {k: v for k, v in config.items() if not k.startswith("_")}


def _scaled_256(unet):
  """A released 256x256 config at a quarter of the width and 32x32: the same six
  levels, two blocks per level, attention at the fifth level (2x2 here), GN(32)."""
  return dict(unet, block_out_channels=[w // 4 for w in unet["block_out_channels"]],
              sample_size=32)


# --------------------------------------------------------------- configs --

def test_the_four_256_checkpoints_share_one_architecture():
  """One 256x256 equivalence test covers celebahq, church, bedroom and cat."""
  unets = [fmt.RELEASED[v].unet for v in ("celebahq", "church", "bedroom", "cat")]
  assert all(u == unets[0] for u in unets)
  spec = fmt.unet_spec(unets[0])
  assert spec.model == dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                            attn_resolutions=(16,), num_groups=32, num_heads=1)
  assert spec.image_shape == (256, 256, 3)


@pytest.mark.parametrize("variant", list(fmt.RELEASED))
def test_released_variant_configs_equal_the_released_checkpoints(variant):
  """configs/ddpm_released.py:<variant> needs no override to hold its checkpoint."""
  released = fmt.RELEASED[variant]
  base = config_lib.load(f"{RELEASED_SPEC}:{variant}")
  overrides = {**fmt.model_overrides(fmt.unet_spec(released.unet)),
               **fmt.scheduler_overrides(released.scheduler)}
  differ = {k: (v, convert._get(base, k)) for k, v in overrides.items()
            if convert._get(base, k) != v}
  assert not differ
  from launch import tasks
  assert tasks.build(base).image_shape == fmt.unet_spec(released.unet).image_shape


@pytest.mark.parametrize("variant, want", [("cifar10", PARAMS_32), ("church", PARAMS_256)])
def test_released_parameter_counts_of_our_network(variant, want):
  abstract = convert._abstract_params(config_lib.load(f"{RELEASED_SPEC}:{variant}"))
  assert _count(abstract) == want


@pytest.mark.torch
@pytest.mark.parametrize("variant", list(fmt.RELEASED))
def test_released_parameter_counts_equal_diffusers(variant):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  released = fmt.RELEASED[variant]
  with torch.device("meta"):   # shapes only: the 256x256 model has 114M parameters
    model = diffusers.UNet2DModel(**_public(released.unet))
  theirs = sum(p.numel() for p in model.parameters())
  ours = _count(convert._abstract_params(config_lib.load(f"{RELEASED_SPEC}:{variant}")))
  assert ours == theirs == (PARAMS_32 if variant == "cifar10" else PARAMS_256)


def test_unsupported_unet_settings_are_listed_in_one_error():
  bad = dict(fmt.RELEASED["cifar10"].unet, norm_eps=1e-5, flip_sin_to_cos=True,
             resnet_time_scale_shift="scale_shift", mystery=3)
  with pytest.raises(fmt.ConversionError) as e:
    fmt.unet_spec(bad)
  for name in ("norm_eps=1e-05", "flip_sin_to_cos=True", "resnet_time_scale_shift", "mystery"):
    assert name in str(e.value)
  # Left out, downsample_padding is diffusers' default 1 (PyTorch padding): refused.
  without = {k: v for k, v in fmt.RELEASED["cifar10"].unet.items()
             if k != "downsample_padding"}
  with pytest.raises(fmt.ConversionError, match="downsample_padding=1"):
    fmt.unet_spec(without)


def test_scheduler_mapping():
  s = dict(fmt.RELEASED["cifar10"].scheduler, variance_type="fixed_small",
           clip_sample=False, num_train_timesteps=500, beta_end=0.03)
  assert fmt.scheduler_overrides(s) == {
      "diffusion.num_timesteps": 500, "diffusion.schedule": "linear",
      "diffusion.beta_start": 1e-4, "diffusion.beta_end": 0.03, "sample.variance": "beta_tilde",
      "diffusion.objective": "eps", "sample.clip_x0": False}
  assert fmt.scheduler_overrides(dict(s, variance_type="fixed_large"))["sample.variance"] \
      == "beta"
  with pytest.raises(fmt.ConversionError) as e:
    fmt.scheduler_overrides(dict(s, beta_schedule="scaled_linear",
                                     variance_type="learned", thresholding=True))
  for name in ("scaled_linear", "learned", "thresholding"):
    assert name in str(e.value)


# ------------------------------------------------- files without torch --

# A small checkpoint with every kind of tensor: two levels, a shortcut where
# the width changes, attention at 16x16 (down and up) and in the middle.
TINY_UNET = dict(fmt.RELEASED["cifar10"].unet, block_out_channels=[16, 32],
                 down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                 up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1,
                 norm_num_groups=4)
TINY_SCHEDULER = dict(fmt.RELEASED["cifar10"].scheduler, num_train_timesteps=4,
                      variance_type="fixed_small")


def _tiny_tensors(seed=0):
  """diffusers-named float32 tensors for TINY_UNET, from our own name table."""
  spec = fmt.unet_spec(TINY_UNET)
  config = config_lib.load(f"{RELEASED_SPEC}:cifar10", fmt.model_overrides(spec))
  abstract = convert._abstract_params(config)
  rng = np.random.default_rng(seed)
  tensors = {}
  for row in fmt.name_table(spec.model, abstract):
    leaf = abstract
    for part in row.path:
      leaf = leaf[part]
    for name in row.names:
      shape = fmt._torch_shape(row.kind, tuple(leaf.shape))
      tensors[name] = rng.normal(0, 0.1, shape).astype(np.float32)
  return tensors


def _write_source(directory, tensors, unet=TINY_UNET, scheduler=TINY_SCHEDULER):
  from safetensors.numpy import save_file
  directory.mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps(unet))
  (directory / "scheduler").mkdir()
  (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
  save_file(tensors, str(directory / "diffusion_pytorch_model.safetensors"))
  return directory


def test_every_tensor_is_mapped_once():
  """The table covers each leaf of our tree once and each diffusers tensor once."""
  spec = fmt.unet_spec(fmt.RELEASED["cifar10"].unet)
  abstract = convert._abstract_params(config_lib.load(f"{RELEASED_SPEC}:cifar10"))
  rows = fmt.name_table(spec.model, abstract)
  paths = [r.path for r in rows]
  names = [n for r in rows for n in r.names]
  assert len(set(paths)) == len(paths) == len(jax.tree.leaves(abstract))
  assert len(set(names)) == len(names)
  # The qkv kernel and bias take three tensors each, in 6 attention blocks (2 down at
  # 16x16, 3 up, 1 in the middle).
  assert len(names) == len(paths) + 2 * 2 * 6


def test_mapping_layouts():
  """Conv OIHW -> HWIO, linear transposed, q/k/v fused as [q | k | v]."""
  pytest.importorskip("safetensors")
  tensors = _tiny_tensors()
  spec = fmt.unet_spec(TINY_UNET)
  config = config_lib.load(f"{RELEASED_SPEC}:cifar10", fmt.model_overrides(spec))
  abstract = convert._abstract_params(config)
  params = fmt.map_tensors(tensors, fmt.name_table(spec.model, abstract), abstract)
  w = tensors["down_blocks.0.resnets.0.conv1.weight"]
  np.testing.assert_array_equal(params["down_0_block_0"]["conv1"]["kernel"][1, 2, 3, 4],
                                w[4, 3, 1, 2])
  np.testing.assert_array_equal(params["temb"]["dense0"]["kernel"],
                                tensors["time_embedding.linear_1.weight"].T)
  c = 32
  qkv = params["mid_attn"]["qkv"]["kernel"]
  for i, p in enumerate(("to_q", "to_k", "to_v")):
    np.testing.assert_array_equal(qkv[:, i * c:(i + 1) * c],
                                  tensors[f"mid_block.attentions.0.{p}.weight"].T)
  np.testing.assert_array_equal(params["norm_out"]["scale"], tensors["conv_norm_out.weight"])


def test_deprecated_attention_names_are_accepted():
  """The google/ddpm-* files predate diffusers 0.15: query/key/value/proj_attn."""
  pytest.importorskip("safetensors")
  tensors = _tiny_tensors()
  old = {}
  for name, value in tensors.items():
    for new, was in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      name = name.replace(f".{new}.", f".{was}.")
    old[name] = value
  assert old.keys() != tensors.keys()
  assert fmt.current_names(old).keys() == tensors.keys()


def test_missing_extra_and_misshaped_tensors_in_one_error_and_nothing_written(tmp_path):
  pytest.importorskip("safetensors")
  tensors = _tiny_tensors()
  del tensors["conv_out.bias"], tensors["mid_block.attentions.0.to_k.weight"]
  tensors["down_blocks.0.resnets.0.surprise.weight"] = np.zeros(3, np.float32)
  tensors["up_blocks.1.resnets.0.conv1.weight"] = np.zeros((16, 48, 1, 1), np.float32)
  src = _write_source(tmp_path / "src", tensors)
  with pytest.raises(fmt.ConversionError) as e:
    convert.convert_to_workdir(src, tmp_path / "out")
  message = str(e.value)
  for name in ("conv_out.bias", "mid_block.attentions.0.to_k.weight",
               "down_blocks.0.resnets.0.surprise.weight", "up_blocks.1.resnets.0.conv1.weight"):
    assert name in message
  assert "missing (2)" in message and "extra (1)" in message and "mis-shaped (1)" in message
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]   # no workdir, no temp dir


def test_pickle_is_refused_without_the_flag(tmp_path, capsys):
  src = tmp_path / "src"
  src.mkdir()
  (src / "config.json").write_text(json.dumps(TINY_UNET))
  # Never unpickled: refused before it is opened (the bytes are not a pickle at all).
  (src / "diffusion_pytorch_model.bin").write_bytes(b"not read")
  assert convert.main(["diffusers", str(src), "--workdir", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert "pickle" in err and "--allow_pickle" in err and "safetensors" in err
  assert not (tmp_path / "out").exists()


def test_nonempty_workdir_is_refused(tmp_path):
  pytest.importorskip("safetensors")
  src = _write_source(tmp_path / "src", _tiny_tensors())
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(fmt.ConversionError, match="not empty"):
    convert.convert_to_workdir(src, tmp_path / "out")
  assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_cli_workdir_samples_with_the_printed_command(tmp_path, capsys):
  """The converted workdir restores as `--mode sample` restores it, with
  params = ema = the released tensors, and samples with the printed flags."""
  pytest.importorskip("safetensors")
  tensors = _tiny_tensors()
  src = _write_source(tmp_path / "ddpm-cifar10-32", tensors)
  workdir = tmp_path / "wd"
  assert convert.main(["diffusers", str(src), "--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  command = shlex.split(out.split("sample with: ", 1)[1].strip())
  spec = command[command.index("--config") + 1]
  overrides = [a[len("--config."):] for a in command if a.startswith("--config.")]
  overrides += ["sample.num=2", "sample.batch_size=2"]
  config = config_lib.load(spec, overrides)
  saved = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
  for section in ("model", "diffusion", "data"):
    assert config[section].to_dict() == saved[section].to_dict()
  assert config.diffusion.num_timesteps == 4 and config.sample.variance == "beta_tilde"

  run, state = workdir_lib.load_trained(str(workdir), config)
  assert int(state.step) == 0
  abstract = convert._abstract_params(config)
  spec_ = fmt.unet_spec(TINY_UNET)
  want = fmt.map_tensors(tensors, fmt.name_table(spec_.model, abstract), abstract)
  for tree in (state.params, state.ema_params):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(tree), want)
  stem = sample_lib.sample_to_workdir(config, str(workdir))
  images = np.load(f"{stem}.npz")["images"]
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8


def test_converted_workdir_serves_over_the_api(tmp_path):
  """A converted (random-init) checkpoint is an ordinary workdir: the server loads it from
  its config.json alone and answers /generate with images of the released shape."""
  pytest.importorskip("safetensors")
  fastapi_testclient = pytest.importorskip("fastapi.testclient")
  from configs import serve as serve_configs  # pylint: disable=import-outside-toplevel
  from launch.serve import app as serve  # pylint: disable=import-outside-toplevel
  src = _write_source(tmp_path / "ddpm-cifar10-32", _tiny_tensors())
  workdir = tmp_path / "wd"
  convert.convert_to_workdir(src, workdir)
  config = serve_configs.get_config()
  config.models = ml_collections.ConfigDict({"released": serve_configs.model("", str(workdir))})
  config.limits.buckets = (4,)
  config.warmup = "default"
  batcher = serve.build(config)
  batcher.start()
  try:
    assert batcher.wait_ready(600), batcher.error
    client = fastapi_testclient.TestClient(serve.create_app(batcher, manage=False))
    models = client.get("/models").json()["models"]
    assert [(m["name"], m["image_shape"]) for m in models] == [("released", [32, 32, 3])]
    r = client.post("/generate", json={"model": "released", "num_images": 2, "seed": 3,
                                       "format": "json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2 and r.json()["steps"] == 4
  finally:
    batcher.stop()


# ------------------------------------------------- equivalence (torch) --

def _diffusers_model(torch, diffusers, unet, seed=0):
  """UNet2DModel(unet) with seeded weights; biases and GroupNorm affines random too."""
  torch.manual_seed(seed)
  model = diffusers.UNet2DModel(**_public(unet)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".bias"):
        p.copy_(0.1 * torch.randn_like(p))
      elif "norm" in name:     # GroupNorm weights (1 at init)
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  assert float(model.conv_out.weight.detach().abs().max()) > 0
  return model


# Not a released setting: attention_head_dim 8 gives two heads in every attention
# layer, which checks that our heads split the channels as diffusers' do.
TWO_HEADS_UNET = dict(TINY_UNET, block_out_channels=[16, 16], attention_head_dim=8)


@pytest.mark.torch
@pytest.mark.parametrize("variant, scale", [("cifar10", "full"), ("church", "reduced"),
                                            ("cifar10", "two_heads")],
                         ids=["cifar10_32_full", "256_arch_reduced", "tiny_two_heads"])
def test_forward_equals_diffusers(variant, scale, tmp_path):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  pytest.importorskip("safetensors")
  torch.set_num_threads(1)
  start = time.process_time()
  released = fmt.RELEASED[variant]
  unet = {"full": dict(released.unet), "reduced": _scaled_256(released.unet),
          "two_heads": TWO_HEADS_UNET}[scale]
  model = _diffusers_model(torch, diffusers, unet)
  src = tmp_path / f"ddpm-{variant}"
  model.save_pretrained(src)
  diffusers.DDPMScheduler(**_public(released.scheduler)).save_pretrained(src / "scheduler")
  assert (src / "diffusion_pytorch_model.safetensors").is_file()

  workdir = tmp_path / "wd"
  # The reduced 256x256 architecture runs on 32x32 images: the cifar10 data shape.
  spec = None if scale == "full" else f"{RELEASED_SPEC}:cifar10"
  converted = convert.convert_to_workdir(src, workdir, config_spec=spec)
  run, state = workdir_lib.load_trained(str(workdir), converted.config)
  assert converted.config.model.num_heads == (2 if scale == "two_heads" else 1)
  assert _count(state.ema_params) == sum(p.numel() for p in model.parameters())

  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)       # NCHW, as torch takes it
  t = np.array([0, 500, 999], np.int64)
  with torch.no_grad():
    theirs = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  apply = jax.jit(lambda p, x, t: run.task.network.apply({"params": p}, x, t, None, train=False))
  ours = np.asarray(apply(state.ema_params, jnp.asarray(x.transpose(0, 2, 3, 1)),
                          jnp.asarray(t, jnp.int32))).transpose(0, 3, 1, 2)
  diff = float(np.abs(ours - theirs).max())
  print(f"{variant} ({scale}): max |ours - diffusers| = {diff:.3g}, "
        f"max |output| = {np.abs(theirs).max():.3g}, CPU {time.process_time() - start:.1f} s")
  assert np.abs(theirs).max() > 0.1
  assert diff <= 1e-4


@pytest.mark.torch
def test_pickle_with_the_flag_reads_the_same_tensors(tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("safetensors")
  tensors = _tiny_tensors()
  src = tmp_path / "ddpm-cifar10-32"
  src.mkdir()
  (src / "config.json").write_text(json.dumps(TINY_UNET))
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
             src / "diffusion_pytorch_model.bin")
  from_bin = convert.convert_diffusers(src, allow_pickle=True)
  assert "no scheduler config" in from_bin.notes[0]
  from_st = convert.convert_diffusers(_write_source(tmp_path / "st" / "ddpm-cifar10-32", tensors))
  jax.tree.map(np.testing.assert_array_equal, from_bin.params, from_st.params)


def test_released_256_data_names_have_a_shape_but_no_reader():
  from launch import data
  config = config_lib.load(f"{RELEASED_SPEC}:church")
  data.validate(config.data)
  with pytest.raises(data.DatasetNotFoundError, match="no reader"):
    data.get_info(config.data)
