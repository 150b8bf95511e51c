"""Packaging: what is imported is declared, the demo installs no torch, the license is there,
the libraries import no launcher and no I/O."""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("core", "ddpm", "ebm", "launch", "configs")


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  return cfg


def _names(block: str) -> dict[str, str]:
  """{normalised distribution name: requirement line} of a requirements block."""
  out = {}
  for line in block.strip().splitlines():
    line = line.strip()
    if line:
      name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0)
      out[re.sub(r"[-_.]+", "-", name).lower()] = line
  return out


def _imported_top_level_modules() -> set[str]:
  found = set()
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          found.add(node.module.split(".")[0])
  return found - set(PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}


def test_every_imported_distribution_is_declared_and_every_requirement_is_used():
  cfg = _setup_cfg()
  required = _names(cfg["options"]["install_requires"])
  extras = {}
  for block in cfg["options.extras_require"].values():
    extras.update(_names(block))
  dists = importlib.metadata.packages_distributions()
  imported = set()
  for module in _imported_top_level_modules():
    assert module in dists, f"{module} is imported but no installed distribution provides it"
    imported.update(re.sub(r"[-_.]+", "-", d).lower() for d in dists[module])
  missing = imported - set(required) - set(extras)
  assert not missing, f"imported but not declared in setup.cfg: {sorted(missing)}"
  assert "etils" in required and "importlib-resources" not in required
  unused = set(required) - imported
  assert not unused, f"declared in install_requires but never imported: {sorted(unused)}"


def test_torch_is_a_range_in_the_test_extra_never_a_requirement_of_the_package():
  cfg = _setup_cfg()
  assert "torch" not in _names(cfg["options"]["install_requires"])
  test = _names(cfg["options.extras_require"]["test"])
  for name in ("torch", "diffusers", "safetensors"):
    assert name in test, name
    assert "==" not in test[name] and "<" in test[name], test[name]   # a compatible range


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_demo_installs_no_torch_and_test_installs_the_local_cpu_wheel_first(tmp_path):
  def dry_run(target):
    out = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [l.split("pip install", 1)[1] for l in out.splitlines() if "pip install" in l]
  demo = dry_run("demo")
  assert demo and not [l for l in demo if "torch" in l or "[" in l], demo   # base package only
  test = dry_run("test")
  torch_at = next(i for i, l in enumerate(test) if '"torch==2.13.0"' in l)
  extras_at = next(i for i, l in enumerate(test) if ".[serve,test]" in l)
  assert torch_at < extras_at, test


def test_license_file_is_the_apache_2_text_setup_cfg_names():
  cfg = _setup_cfg()
  assert cfg["metadata"]["license"] == "Apache-2.0"
  license_file = ROOT / cfg["metadata"]["license_files"].strip()
  text = license_file.read_text()
  assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text


# What the pure libraries may import: the numerics stack, matplotlib's Figure
# (the figure modules build figures, they write none) and pure standard modules.
# Never launch/ or configs/, and nothing that reaches files, flags or logs.
_LIBRARY_IMPORTS = {"__future__", "abc", "dataclasses", "functools", "math", "re", "typing",
                    "jax", "flax", "optax", "numpy", "scipy", "matplotlib",
                    "core", "ddpm", "ebm"}
# ebm/autograd_exercises.py sets PyTorch beside JAX (imported inside its functions).
_LIBRARY_EXTRA = {"ebm/autograd_exercises.py": {"torch", "importlib"}}


def test_libraries_import_no_launcher_and_no_io():
  bad = []
  for package in ("core", "ddpm", "ebm"):
    for path in sorted((ROOT / package).glob("*.py")):
      rel = f"{package}/{path.name}"
      allowed = _LIBRARY_IMPORTS | _LIBRARY_EXTRA.get(rel, set())
      for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        bad += [f"{rel}:{node.lineno} imports {n}" for n in names
                if n.split(".")[0] not in allowed]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
          bad.append(f"{rel}:{node.lineno} opens a file")
  assert not bad, "the libraries must stay pure (docs/running.md, Layout):\n" + "\n".join(bad)
