"""Loading, overriding and validating experiment configs.

`python -m launch` loads configs through `ml_collections.config_flags` with
`lock_config=True`; tools, tests and the server use `load()` here, which
follows the same rules: `path[:variant]`, overrides `key.sub=value`, and an
unknown key fails with a message naming it and the keys that do exist.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
from typing import Any, Iterable, Mapping

import ml_collections

from launch.config_errors import ConfigError, check_int


class UnknownConfigKeyError(ConfigError):
  """An override names a key the config does not have."""

  def __init__(self, key: str, known: Iterable[str]):
    known = sorted(known)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known], n=3)
    ValueError.__init__(
        self, f"unknown config key 'config.{key}'"
        + (f" (did you mean: {', '.join(close)}?)" if close else "")
        + f"; keys of this section: {', '.join(known)}")
    self.key = key
    self.value = None


def load(spec: str, overrides: Iterable[str] | Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:variant]`, applies overrides, validates.

  Args:
    spec: a config file path, optionally followed by `:variant`, which is
      passed to its `get_config(variant)`.
    overrides: `["train.steps=5", ...]` or `{"train.steps": 5}`.

  Returns:
    The locked, validated config.
  """
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  config.lock()
  if isinstance(overrides, Mapping):
    overrides = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in overrides.items()]
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not of the form key=value")
    set_value(config, key.strip(), parse_value(text.strip()))
  validate(config)
  return config


def parse_value(text: str) -> Any:
  """`3` -> 3, `1e-4` -> 1e-4, `(1,2)` -> (1, 2), `true` -> True, else the string."""
  lowered = text.lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def check_key(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """(section, last part) of a dotted key; UnknownConfigKeyError if it does not exist."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      siblings = node.keys() if isinstance(node, ml_collections.ConfigDict) else ()
      prefix = ".".join(parts[:i])
      raise UnknownConfigKeyError(key, [f"{prefix}.{s}" if prefix else s for s in siblings])
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets a dotted key, failing with the key's name if it does not exist."""
  node, last = check_key(config, key)
  old = node[last]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[last] = value
  except TypeError as e:
    raise ConfigError(key, value, reason=f"expected {type(old).__name__} ({e})") from None


def validate(config: ml_collections.ConfigDict):
  """Validates everything before anything is built (ConfigError naming the key).

  Returns:
    The task the config builds (each task validates the keys it reads), so
    that the mode given the config does not build it again.
  """
  from launch import data
  from launch import tasks
  data.validate(config.data)
  task = tasks.build(config)
  for key in ("train.steps", "train.batch_size", "train.keep_ckpts", "train.steps_per_dispatch"):
    check_int(key, _get(config, key), 1)
  for key in ("train.log_every", "train.ckpt_every", "train.sample_every", "train.num_samples",
              "eval.nll_images"):
    check_int(key, _get(config, key), 0)
  from launch import posthoc_ema
  posthoc_ema.settings(config, task)
  if "restore_step" in config.train:
    check_int("train.restore_step", config.train.restore_step, -1)
  if not isinstance(config.train.time_budget_s, (int, float)) or config.train.time_budget_s < 0:
    raise ConfigError("train.time_budget_s", config.train.time_budget_s,
                      allowed="seconds >= 0 (0 = no budget)")
  if config.train.steps_per_dispatch > 1 and config.train.log_every % config.train.steps_per_dispatch:
    raise ConfigError("train.log_every", config.train.log_every,
                      reason="must be a multiple of train.steps_per_dispatch")
  for key in ("eval.min_classifier_accuracy", "eval.min_independent_accuracy"):
    min_acc = _get(config, key)
    if isinstance(min_acc, bool) or not isinstance(min_acc, (int, float)) or not 0 <= min_acc <= 1:
      raise ConfigError(key, min_acc,
                        allowed="a fraction in [0, 1] (0 = score with any feature network)")
  if not isinstance(config.eval.independent_workdir, str):
    raise ConfigError("eval.independent_workdir", config.eval.independent_workdir,
                      allowed="a workdir of configs/classifier_fashion_mnist.py:independent, "
                      "or '' to skip the independent check")
  check_int("eval.nearest_train_images", config.eval.nearest_train_images, 0)
  if config.guard.enabled:
    if not 0 < config.guard.lr_factor < 1:
      raise ConfigError("guard.lr_factor", config.guard.lr_factor, allowed="a value in (0, 1)")
    if config.guard.bound <= 0:
      raise ConfigError("guard.bound", config.guard.bound, allowed="a positive number")
  return task


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Rebuilds a locked config from its JSON form (as saved in a workdir).

  JSON turns tuples into lists; they are turned back into tuples.
  """
  def fix(x):
    if isinstance(x, Mapping):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x
  config = ml_collections.ConfigDict(fix(dict(d)))
  config.lock()
  return config
