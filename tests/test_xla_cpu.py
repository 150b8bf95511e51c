"""The launcher's XLA:CPU options (launch/xla_cpu.py)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from launch import xla_cpu

_YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_appended_to_the_users_flags():
  got = xla_cpu.with_defaults("--xla_cpu_enable_fast_math=false", {_YNN: "eltwise,reduce"})
  assert got == f"--xla_cpu_enable_fast_math=false --{_YNN}=eltwise,reduce"
  assert xla_cpu.with_defaults("", {_YNN: "reduce"}) == f"--{_YNN}=reduce"


def test_a_users_own_setting_wins():
  for flags in (f"--{_YNN}=dot", f"--{_YNN}=", f"  -{_YNN}=eltwise  "):
    assert xla_cpu.with_defaults(flags, {_YNN: "eltwise,reduce"}) == flags.strip()
  assert xla_cpu.with_defaults("--noxla_foo", {"xla_foo": "true"}) == "--noxla_foo"


def test_apply_sets_the_environment_variable():
  env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  value = xla_cpu.apply(env, {_YNN: "eltwise,reduce"})
  assert env["XLA_FLAGS"] == value == f"--xla_dump_to=/tmp/x --{_YNN}=eltwise,reduce"
  assert xla_cpu.apply(env, {_YNN: "eltwise,reduce"}) == value       # idempotent
  empty: dict[str, str] = {}
  assert xla_cpu.apply(empty, {_YNN: "x"}) == f"--{_YNN}=x"


def test_the_suite_runs_with_the_launchers_options():
  """conftest applies them, so every numerics test checks what `python -m launch` runs."""
  for name in xla_cpu.DEFAULTS:
    assert name in xla_cpu._named(os.environ["XLA_FLAGS"])  # pylint: disable=protected-access


def test_a_convolution_gradient_under_the_options_matches_float64():
  """A 3x3 convolution, its input and weight gradients against NumPy in float64."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 9, 9, 3)).astype(np.float32)
  w = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
  g = rng.standard_normal((4, 9, 9, 5)).astype(np.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y, vjp = jax.vjp(jax.jit(conv), jnp.asarray(x), jnp.asarray(w))
  dx, dw = vjp(jnp.asarray(g))
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want_y = np.zeros((4, 9, 9, 5))
  want_dw = np.zeros((3, 3, 3, 5))
  want_dx = np.zeros_like(xp)
  for i in range(3):
    for j in range(3):
      patch = xp[:, i:i + 9, j:j + 9, :]
      want_y += np.einsum("bhwc,co->bhwo", patch, w[i, j].astype(np.float64))
      want_dw[i, j] = np.einsum("bhwc,bhwo->co", patch, g.astype(np.float64))
      want_dx[:, i:i + 9, j:j + 9, :] += np.einsum("bhwo,co->bhwc", g.astype(np.float64),
                                                   w[i, j].astype(np.float64))
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dx, want_dx[:, 1:-1, 1:-1, :], rtol=1e-5, atol=1e-5)
