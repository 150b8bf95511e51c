"""Inception-v3 features for FID and Inception Score, as in the standard FID code.

The network, its preprocessing, the pytorch-fid name mapping, the features
and the Inception Score are `core.inception`; this module is the weights
file: its format, reading and writing it, and the command that makes it.

Weights are not downloaded by this code; the user supplies them.

Weights file format
-------------------
An uncompressed `.npz` (`numpy.savez`) with one float32 array per flax
variable, named by its path in the flax variables tree joined with "/":

  params/<Module>/<block>/conv/kernel   [kh, kw, in, out]   (HWIO)
  params/<Module>/<block>/bn/scale      [out]
  params/<Module>/<block>/bn/bias       [out]
  batch_stats/<Module>/<block>/bn/mean  [out]
  batch_stats/<Module>/<block>/bn/var   [out]
  params/fc/kernel                      [2048, 1008]
  params/fc/bias                        [1008]

e.g. `params/Mixed_5b/branch5x5_2/conv/kernel` of shape [5, 5, 48, 64]; the
stem convolutions sit directly under the top level
(`params/Conv2d_1a_3x3/conv/kernel`). The names map mechanically from the
pytorch-fid state_dict (the table is in `core.inception`).

To make the file (needs PyTorch only for reading the .pth):

  wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python -m launch.eval.inception convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

`load_inception` also reads the `.pth` directly when PyTorch is installed.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

from flax import traverse_util
import jax
import numpy as np

from core import inception as net
from core.inception import PTH_FILENAME

PTH_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           + PTH_FILENAME)
NPZ_FILENAME = "inception_fid.npz"


def save_weights(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes flax variables as the `.npz` format described in the module docstring."""
  flat = traverse_util.flatten_dict(variables, sep="/")
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, "wb") as f:  # a file object, so numpy does not append ".npz"
    np.savez(f, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_weights(path: str | os.PathLike) -> dict:
  """Reads an `.npz` written by `save_weights`, checking names and shapes.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 NumPy arrays.
  """
  expected = traverse_util.flatten_dict(net.abstract_variables(), sep="/")
  with np.load(os.fspath(path)) as data:
    flat = {k: np.asarray(data[k]) for k in data.files}
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  bad = sorted(k for k in set(expected) & set(flat)
               if flat[k].shape != tuple(expected[k].shape))
  if missing or unexpected or bad:
    raise ValueError(
        f"{os.fspath(path)} is not an FID Inception weights file: "
        f"{len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
        f"{len(bad)} with wrong shapes (e.g. {bad[:3]})")
  return traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()},
                                      sep="/")


def _read_pth(path: str) -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (pip install 'jax-ddpm-ebm[torch]'); or convert it "
        f"once elsewhere with: python -m launch.eval.inception convert {path} {NPZ_FILENAME}") from e
  state_dict = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def missing_weights_message(path: str | os.PathLike | None) -> str:
  """The message of the FileNotFoundError `load_inception` raises."""
  where = repr(os.fspath(path)) if path else "(no path given: set config.eval.inception_weights)"
  target = os.fspath(path) if path and not os.fspath(path).endswith(".pth") else NPZ_FILENAME
  return (
      f"FID/IS Inception weights not found: {where}. They are not downloaded "
      f"automatically. Download pytorch-fid's FID Inception weights {PTH_FILENAME} from\n"
      f"  {PTH_URL}\n"
      f"and convert them (needs PyTorch, once) to this project's .npz format with\n"
      f"  python -m launch.eval.inception convert {PTH_FILENAME} {target}\n"
      f"then pass the .npz path (config.eval.inception_weights). A .pth path is also "
      f"accepted directly when PyTorch is installed.")


def load_inception(path: str | os.PathLike | None):
  """Loads the FID Inception network.

  Args:
    path: the converted `.npz` (see the module docstring), or pytorch-fid's
      `pt_inception-2015-12-05-6726825d.pth` itself (needs PyTorch).

  Returns:
    (apply_fn, variables): `apply_fn(variables, images_uint8 [B, H, W, C])
    -> (pool [B, 2048], logits [B, 1008])`, jitted, resizing to 299x299
    inside; `variables` = {"params", "batch_stats"} on the default device.

  Raises:
    FileNotFoundError: the file is missing; the message says which file is
      needed, where to download it and how to convert it.
  """
  if not path or not os.path.isfile(os.fspath(path)):
    raise FileNotFoundError(missing_weights_message(path))
  path = os.fspath(path)
  if path.endswith(".pth"):
    variables = net.convert_pytorch_fid_state_dict(_read_pth(path))
  else:
    variables = load_weights(path)
  return net.make_apply_fn(), jax.device_put(variables)


# ----------------------------------------------------------------------------
# Command line: python -m launch.eval.inception convert SRC.pth DST.npz


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m launch.eval.inception",
      description="FID Inception weights: convert pytorch-fid's .pth to this project's .npz.")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help=f"convert {PTH_FILENAME} (needs PyTorch)")
  conv.add_argument("src", help=f"path of {PTH_FILENAME} (from {PTH_URL})")
  conv.add_argument("dst", nargs="?", default=NPZ_FILENAME, help="output .npz")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.src):
    print(missing_weights_message(args.src), file=sys.stderr)
    return 1
  variables = net.convert_pytorch_fid_state_dict(_read_pth(args.src))
  save_weights(variables, args.dst)
  count = sum(v.size for v in jax.tree.leaves(variables))
  print(f"wrote {args.dst}: {count} values in "
        f"{len(jax.tree.leaves(variables))} arrays")
  return 0


if __name__ == "__main__":
  sys.exit(main())
