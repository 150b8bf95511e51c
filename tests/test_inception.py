"""Tests of core/inception.py and launch/eval/inception.py with random weights (the real ones are not needed).

One real 299x299 forward of the network (3 images in batches of 2, one
compile); everything else works on abstract shapes or small arrays.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from core import inception as net
from launch.eval import inception


def _state_dict_from_flax_tree(seed=0):
  """A random pytorch-fid-style state_dict whose keys/shapes follow the flax tree.

  The flax -> torch naming is spelled out here again (not taken from the
  module) so that the converter is checked against an independent statement
  of the mapping.
  """
  rng = np.random.default_rng(seed)
  leaf_names = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}
  state_dict = {}
  for path, leaf in traverse_util.flatten_dict(net.abstract_variables()).items():
    collection, *modules, name = path
    key = ".".join(modules + [leaf_names[(collection, name)]])
    shape = tuple(leaf.shape)
    if name == "kernel" and len(shape) == 4:  # HWIO -> OIHW; He-scaled
      kh, kw, cin, cout = shape
      value = rng.standard_normal((cout, cin, kh, kw), np.float32) * math.sqrt(2 / (kh * kw * cin))
    elif name == "kernel":  # fc [in, out] -> [out, in]
      value = rng.standard_normal(shape[::-1], np.float32) / math.sqrt(shape[0])
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:  # bias, mean
      value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    state_dict[key] = value
  return state_dict


@pytest.fixture(scope="module")
def state_dict():
  return _state_dict_from_flax_tree()


@pytest.fixture(scope="module")
def weights_npz(state_dict, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / inception.NPZ_FILENAME
  inception.save_weights(net.convert_pytorch_fid_state_dict(state_dict), path)
  return path


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def features(weights_npz, images):
  apply_fn, variables = inception.load_inception(weights_npz)
  # 3 images in batches of 2: the last batch is padded (one compiled shape).
  return net.inception_features(apply_fn, variables, images, batch_size=2)


def test_param_tree_matches_pytorch_fid_layout():
  flat = traverse_util.flatten_dict(net.abstract_variables())
  names = {net.torch_name(p): tuple(v.shape) for p, v in flat.items()}
  assert len(names) == net.NUM_STATE_DICT_TENSORS == 472
  # Trainable parameters of torchvision's inception_v3 (27,161,264) without
  # the aux head (3,326,696), with a 1008-way instead of 1000-way fc.
  params = net.abstract_variables()["params"]
  n_params = sum(math.prod(v.shape) for v in jax.tree.leaves(params))
  assert n_params == 27_161_264 - 3_326_696 + 8 * 2048 + 8
  # A few tensors of the pytorch-fid state_dict, in flax layout.
  assert names["Conv2d_1a_3x3.conv.weight"] == (3, 3, 3, 32)
  assert names["Conv2d_4a_3x3.bn.running_var"] == (192,)
  assert names["Mixed_5b.branch_pool.conv.weight"] == (1, 1, 192, 32)
  assert names["Mixed_6e.branch7x7_2.conv.weight"] == (1, 7, 192, 192)
  assert names["Mixed_7a.branch7x7x3_4.conv.weight"] == (3, 3, 192, 192)
  assert names["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (3, 1, 384, 384)
  assert names["Mixed_7c.branch_pool.bn.weight"] == (192,)
  assert names["fc.weight"] == (2048, 1008)
  assert names["fc.bias"] == (1008,)


def test_convert_round_trip(state_dict):
  sd = dict(state_dict)
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)  # ignored
  variables = net.convert_pytorch_fid_state_dict(sd)
  flat = traverse_util.flatten_dict(variables)
  assert len(flat) == len(state_dict)
  np.testing.assert_array_equal(
      variables["params"]["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"],
      state_dict["Mixed_5b.branch5x5_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])
  # Every leaf lands where the torch name says, transposed back exactly.
  for path, value in flat.items():
    source = state_dict[net.torch_name(path)]
    back = {4: lambda a: a.transpose(3, 2, 0, 1), 2: lambda a: a.T}.get(value.ndim, lambda a: a)
    assert value.dtype == np.float32
    np.testing.assert_array_equal(back(value), source, err_msg=str(path))


def test_convert_rejects_wrong_state_dicts(state_dict):
  sd = dict(state_dict)
  del sd["Mixed_6b.branch1x1.bn.bias"]
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  sd["fc.bias"] = np.zeros((1000,), np.float32)
  with pytest.raises(ValueError) as err:
    net.convert_pytorch_fid_state_dict(sd)
  message = str(err.value)
  assert "missing Mixed_6b.branch1x1.bn.bias" in message
  assert "unexpected AuxLogits.fc.weight" in message
  assert "fc.bias: shape (1000,)" in message


def test_npz_round_trip_and_load(state_dict, weights_npz):
  loaded = inception.load_weights(weights_npz)
  expected = net.convert_pytorch_fid_state_dict(state_dict)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  with np.load(weights_npz) as data:
    assert "params/Mixed_5b/branch5x5_2/conv/kernel" in data.files
    assert "batch_stats/Conv2d_1a_3x3/bn/mean" in data.files
    assert len(data.files) == 472


def test_load_weights_rejects_other_npz(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, **{"params/fc/kernel": np.zeros((3, 3), np.float32)})
  with pytest.raises(ValueError, match="not an FID Inception weights file"):
    inception.load_weights(path)


def test_missing_weights_message(tmp_path):
  missing = tmp_path / "nowhere" / "inception_fid.npz"
  with pytest.raises(FileNotFoundError) as err:
    inception.load_inception(missing)
  message = str(err.value)
  assert str(missing) in message
  assert "pt_inception-2015-12-05-6726825d.pth" in message
  assert ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
          "pt_inception-2015-12-05-6726825d.pth") in message
  assert (f"python -m launch.eval.inception convert pt_inception-2015-12-05-6726825d.pth {missing}"
          in message)
  with pytest.raises(FileNotFoundError, match="config.eval.inception_weights"):
    inception.load_inception("")


def test_features_shapes(features):
  pool, logits = features
  assert pool.shape == (3, 2048) and pool.dtype == np.float32
  assert logits.shape == (3, 1008) and logits.dtype == np.float32
  assert np.all(np.isfinite(pool)) and np.all(np.isfinite(logits))
  assert np.all(pool >= 0.0)  # a mean of ReLU outputs
  assert not np.allclose(pool[0], pool[1])


def test_inception_features_validates_input():
  with pytest.raises(TypeError, match="uint8"):
    net.inception_features(None, None, np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, 1 or 3\]"):
    net.inception_features(None, None, np.zeros((1, 8, 8, 4), np.uint8))


# ---------------------------------------------------------------------------
# Against PyTorch: pytorch-fid's network written with torch.nn.functional.


def _torch_reference(state_dict, images_uint8):
  """pytorch-fid's FID Inception (torchvision blocks + FID patches) in torch ops."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  t = {k: torch.from_numpy(v) for k, v in state_dict.items()}

  def conv(name, x, stride=1, padding=0):
    x = F.conv2d(x, t[f"{name}.conv.weight"], stride=stride, padding=padding)
    x = F.batch_norm(x, t[f"{name}.bn.running_mean"], t[f"{name}.bn.running_var"],
                     t[f"{name}.bn.weight"], t[f"{name}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x)

  def avg(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

  def block_a(m, x):
    b1 = conv(f"{m}.branch1x1", x)
    b5 = conv(f"{m}.branch5x5_2", conv(f"{m}.branch5x5_1", x), padding=2)
    b3 = conv(f"{m}.branch3x3dbl_1", x)
    b3 = conv(f"{m}.branch3x3dbl_2", b3, padding=1)
    b3 = conv(f"{m}.branch3x3dbl_3", b3, padding=1)
    return torch.cat([b1, b5, b3, conv(f"{m}.branch_pool", avg(x))], 1)

  def block_b(m, x):
    b3 = conv(f"{m}.branch3x3", x, stride=2)
    bd = conv(f"{m}.branch3x3dbl_1", x)
    bd = conv(f"{m}.branch3x3dbl_2", bd, padding=1)
    bd = conv(f"{m}.branch3x3dbl_3", bd, stride=2)
    return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  def block_c(m, x):
    b1 = conv(f"{m}.branch1x1", x)
    b7 = conv(f"{m}.branch7x7_1", x)
    b7 = conv(f"{m}.branch7x7_2", b7, padding=(0, 3))
    b7 = conv(f"{m}.branch7x7_3", b7, padding=(3, 0))
    bd = conv(f"{m}.branch7x7dbl_1", x)
    bd = conv(f"{m}.branch7x7dbl_2", bd, padding=(3, 0))
    bd = conv(f"{m}.branch7x7dbl_3", bd, padding=(0, 3))
    bd = conv(f"{m}.branch7x7dbl_4", bd, padding=(3, 0))
    bd = conv(f"{m}.branch7x7dbl_5", bd, padding=(0, 3))
    return torch.cat([b1, b7, bd, conv(f"{m}.branch_pool", avg(x))], 1)

  def block_d(m, x):
    b3 = conv(f"{m}.branch3x3_2", conv(f"{m}.branch3x3_1", x), stride=2)
    b7 = conv(f"{m}.branch7x7x3_1", x)
    b7 = conv(f"{m}.branch7x7x3_2", b7, padding=(0, 3))
    b7 = conv(f"{m}.branch7x7x3_3", b7, padding=(3, 0))
    b7 = conv(f"{m}.branch7x7x3_4", b7, stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  def block_e(m, x, pool):
    b1 = conv(f"{m}.branch1x1", x)
    b3 = conv(f"{m}.branch3x3_1", x)
    b3 = torch.cat([conv(f"{m}.branch3x3_2a", b3, padding=(0, 1)),
                    conv(f"{m}.branch3x3_2b", b3, padding=(1, 0))], 1)
    bd = conv(f"{m}.branch3x3dbl_1", x)
    bd = conv(f"{m}.branch3x3dbl_2", bd, padding=1)
    bd = torch.cat([conv(f"{m}.branch3x3dbl_3a", bd, padding=(0, 1)),
                    conv(f"{m}.branch3x3dbl_3b", bd, padding=(1, 0))], 1)
    pooled = avg(x) if pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return torch.cat([b1, b3, bd, conv(f"{m}.branch_pool", pooled)], 1)

  with torch.no_grad():
    x = torch.from_numpy(np.asarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = conv("Conv2d_1a_3x3", x, stride=2)
    x = conv("Conv2d_2a_3x3", x)
    x = conv("Conv2d_2b_3x3", x, padding=1)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = conv("Conv2d_3b_1x1", x)
    x = conv("Conv2d_4a_3x3", x)
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = block_a("Mixed_5b", x)
    x = block_a("Mixed_5c", x)
    x = block_a("Mixed_5d", x)
    x = block_b("Mixed_6a", x)
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = block_c(m, x)
    x = block_d("Mixed_7a", x)
    x = block_e("Mixed_7b", x, "avg")
    x = block_e("Mixed_7c", x, "max")
    pool = x.mean(dim=(2, 3))
    logits = F.linear(pool, t["fc.weight"], t["fc.bias"])
  return pool.numpy(), logits.numpy()


@pytest.mark.torch
def test_features_match_pytorch_fid_network(state_dict, images, features):
  pool_ref, logits_ref = _torch_reference(state_dict, images)
  pool, logits = features
  np.testing.assert_allclose(pool, pool_ref, rtol=1e-4, atol=1e-4 * np.abs(pool_ref).max())
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-4 * np.abs(logits_ref).max())


@pytest.mark.torch
@pytest.mark.parametrize("size", [32, 28, 320])
def test_preprocess_matches_torch_interpolate(size):
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  got = np.asarray(net.preprocess(jnp.asarray(images)))
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  ref = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  ref = (2 * ref - 1).permute(0, 2, 3, 1).numpy()
  assert got.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_preprocess_grayscale_is_repeated_rgb():
  gray = np.random.default_rng(2).integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)
  np.testing.assert_allclose(np.asarray(net.preprocess(jnp.asarray(gray))),
                             np.asarray(net.preprocess(jnp.asarray(np.repeat(gray, 3, -1)))))


@pytest.mark.torch
def test_load_inception_reads_pth(state_dict, tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / net.PTH_FILENAME
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
  expected = net.convert_pytorch_fid_state_dict(state_dict)
  _, variables = inception.load_inception(path)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  # The converter command writes the .npz that load_inception reads.
  out = tmp_path / "converted" / inception.NPZ_FILENAME
  assert inception.main(["convert", str(path), str(out)]) == 0
  jax.tree.map(np.testing.assert_array_equal, inception.load_weights(out), expected)


# ---------------------------------------------------------------------------
# Inception Score.


def test_inception_score_uniform_is_one():
  mean, std = net.inception_score(np.full((20, 7), 1 / 7), splits=4)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  # The same predictions as logits (all equal) are detected as logits.
  mean, _ = net.inception_score(np.zeros((20, 7)), splits=4)
  assert mean == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_one_hot_balanced_is_k(k):
  labels = np.tile(np.arange(k), 6)  # every split of size 2k (3 splits) is balanced
  probs = np.eye(k + 3)[labels]  # a few classes never predicted
  mean, std = net.inception_score(probs, splits=3)
  assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
  # Confident logits give nearly the same.
  mean_logits, _ = net.inception_score(60.0 * probs, splits=3, kind="logits")
  assert mean_logits == pytest.approx(k, rel=1e-6)


def test_inception_score_hand_computed():
  # Split 1: p(y|x) = [.5, .5] and [1, 0]; p(y) = [.75, .25].
  # Split 2: two identical predictions [.2, .8] -> KL = 0 -> score 1.
  probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8], [0.2, 0.8]])
  kl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
  kl2 = 1.0 * math.log(1.0 / 0.75)
  s1, s2 = math.exp((kl1 + kl2) / 2), 1.0
  mean, std = net.inception_score(probs, splits=2)
  assert mean == pytest.approx((s1 + s2) / 2, rel=1e-12)
  assert std == pytest.approx(abs(s1 - s2) / 2, rel=1e-12)


def test_inception_score_validation():
  with pytest.raises(ValueError, match="splits"):
    net.inception_score(np.full((3, 2), 0.5), splits=4)
  with pytest.raises(ValueError, match="kind"):
    net.inception_score(np.full((3, 2), 0.5), splits=1, kind="prob")
