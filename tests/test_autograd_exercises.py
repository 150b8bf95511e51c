"""The four autograd exercises: JAX values, PyTorch values, and the CLI table."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from ebm import autograd_exercises as ex

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_jax_basic_gradient():
  assert ex.basic_gradient_jax() == pytest.approx(7.0)


def test_jax_weight_gradients():
  dw, dx = ex.weight_gradients_jax()
  assert dw == pytest.approx([4.0, 2.0]) and dx == pytest.approx(7.0)


def test_jax_stop_gradient_is_zero_and_fix_is_six():
  stopped, fixed = ex.detach_jax()
  assert stopped == 0.0 and fixed == pytest.approx(6.0)


def test_jax_gradients_do_not_accumulate_unless_summed():
  assert ex.accumulation_jax() == pytest.approx((2.0, 3.0, 5.0))


def _torch():
  return pytest.importorskip("torch", reason="PyTorch not installed (pip install .[torch])")


@pytest.mark.torch
def test_torch_basic_gradient():
  _torch()
  assert ex.basic_gradient_torch() == pytest.approx(7.0)


@pytest.mark.torch
def test_torch_weight_gradients():
  _torch()
  dw, dx = ex.weight_gradients_torch()
  assert dw == pytest.approx([4.0, 2.0]) and dx == pytest.approx(7.0)


@pytest.mark.torch
def test_torch_detach_leaves_no_gradient_and_fix_is_six():
  _torch()
  detached, fixed = ex.detach_torch()
  assert detached is None and fixed == pytest.approx(6.0)


@pytest.mark.torch
def test_torch_gradients_accumulate_across_backward_calls():
  _torch()
  assert ex.accumulation_torch() == pytest.approx((2.0, 5.0))


def test_command_prints_both_columns_side_by_side():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "ebm.autograd_exercises"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout
  header, _, *rows = out.splitlines()
  assert "PyTorch" in header and "JAX" in header
  assert header.index("PyTorch") < header.index("JAX")
  assert len([r for r in rows if r[:2] in ("1.", "2.", "3.", "4.")]) == 4
  row = {r[:2]: r for r in rows}
  assert row["4."].rstrip().endswith("(2, 3, 5)")
  if ex.torch_available():
    assert "(2, 5)" in row["4."] and "(None, 6)" in row["3."]
  else:
    assert all("not installed" in row[k] for k in ("1.", "2.", "3.", "4."))


def test_torch_column_says_not_installed_without_torch(monkeypatch):
  monkeypatch.setattr(ex, "torch_available", lambda: False)
  table = ex.side_by_side()
  assert table.count("not installed") == 4 and "(0, 6)" in table
