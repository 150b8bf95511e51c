"""Config loading and validation: every config and variant, and clear errors."""
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from core import train_state as ts
from launch import config as config_lib
from launch.config_errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Experiment configs (configs/serve.py is the server's own schema, tested with it).
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base", "serve"))


def _variants(path: pathlib.Path) -> list[str]:
  """Variants named in the config's docstring (`configs/x.py:variant`)."""
  text = path.read_text()
  names = set(re.findall(rf"{re.escape(path.name)}:([a-z][a-z0-9_]*)", text))
  return [""] + sorted(names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_and_variant_validates(path):
  variants = _variants(path)
  assert "smoke" in variants, f"{path.name} has no smoke variant in its docstring"
  for variant in variants:
    spec = f"{path}:{variant}" if variant else str(path)
    config = config_lib.load(spec)
    assert config.task


def test_unknown_key_names_the_key():
  with pytest.raises(config_lib.UnknownConfigKeyError, match=r"train\.stepz.*did you mean: steps"):
    config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py:smoke", ["train.stepz=3"])


def test_unknown_section_names_the_key():
  with pytest.raises(ConfigError, match=r"'config\.nope\.x'.*keys of this section: bench"):
    config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py", ["nope.x=1"])


@pytest.mark.parametrize("override, key", [
    ("task='gan'", "task"),
    ("data.name='svhn'", "data.name"),
    ("model.name='resnet'", "model.name"),
    ("train.steps=0", "train.steps"),
    ("train.batch_size=-4", "train.batch_size"),
    ("optim.lr=-1.0", "optim.lr"),
    ("optim.name='sgd'", "optim.name"),
])
def test_bad_values_name_the_key_and_allowed_values(override, key):
  with pytest.raises(ConfigError) as e:
    config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py", [override])
  assert f"config.{key}=" in str(e.value)
  assert "allowed" in str(e.value)


def test_wrong_type_names_the_key():
  with pytest.raises(ConfigError, match="train.steps"):
    config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py", ["train.steps='many'"])


def test_config_json_round_trip():
  config = config_lib.load(f"{ROOT}/configs/classifier_fashion_mnist.py:smoke")
  import json
  again = config_lib.from_dict(json.loads(config_lib.to_json(config)))
  assert again.to_dict() == config.to_dict()


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "launch", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_cli_rejects_unknown_key_before_building_anything(tmp_path):
  out = _cli("--config", "configs/classifier_fashion_mnist.py:smoke",
             "--config.train.stepz=3", "--workdir", str(tmp_path / "w"))
  assert out.returncode != 0
  assert "config.train.stepz" in out.stderr
  assert not (tmp_path / "w").exists()


def test_cli_rejects_bad_value_and_mode(tmp_path):
  out = _cli("--config", "configs/classifier_fashion_mnist.py:smoke",
             "--config.data.name=svhn", "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2
  assert "config.data.name='svhn'" in out.stderr and "fashion_mnist" in out.stderr
  assert not (tmp_path / "w").exists()
  out = _cli("--config", "configs/classifier_fashion_mnist.py:smoke", "--mode", "dance",
             "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2 and "--mode='dance'" in out.stderr


def test_cosine_decay_schedule_values():
  # With a constant gradient Adam's step is lr_t * g / (|g| + eps), so the
  # per-step parameter change is the schedule's rate: check it against the
  # closed form lr_t = f + (1 - f) * lr * (1 + cos(pi * (t - w) / (T - w))) / 2.
  import math
  import jax.numpy as jnp
  from core import train_state as ts
  lr, w, total, f = 2e-3, 10, 110, 0.1
  opt = ts.make_optimizer(lr=lr, warmup_steps=w, decay="cosine", decay_steps=total,
                          final_lr_factor=f)
  params = {"w": jnp.zeros((), jnp.float32)}
  state = opt.init(params)
  steps = []
  for _ in range(total + 1):
    updates, state = opt.update({"w": jnp.ones(())}, state, params)
    steps.append(-float(updates["w"]))
  def expected(t):
    if t < w:
      return lr * t / w
    frac = min(t - w, total - w) / (total - w)
    return f * lr + (lr - f * lr) * 0.5 * (1 + math.cos(math.pi * frac))
  for t in (0, 5, 10, 60, 100, 110):
    assert abs(steps[t] - expected(t)) < 2e-5 * lr, (t, steps[t], expected(t))


def test_cosine_decay_needs_steps_beyond_warmup():
  with pytest.raises(ConfigError, match="train.steps"):
    config_lib.validate(config_lib.load(
        "configs/ddpm_fashion_mnist.py:smoke",
        {"optim.decay": "cosine", "optim.warmup_steps": 5, "train.steps": 5}))


def test_unknown_decay_names_the_key():
  with pytest.raises(ConfigError, match="optim.decay"):
    config_lib.validate(config_lib.load("configs/ddpm_fashion_mnist.py:smoke",
                                        {"optim.decay": "linear"}))


def test_constant_rate_without_warmup_keeps_the_schedule_free_optimizer_state():
  # Checkpoints written with a plain rate have no schedule counter; they must stay restorable.
  params = {"w": jnp.zeros(())}
  got = jax.tree.structure(ts.make_optimizer(lr=1e-3, grad_clip=1.0).init(params))
  want = jax.tree.structure(optax.chain(optax.clip_by_global_norm(1.0),
                                        optax.adam(1e-3)).init(params))
  assert got == want
