"""XLA:CPU options the launcher sets before JAX starts its backends.

`DEFAULTS` are added to the `XLA_FLAGS` environment variable by `apply`
(called by `python -m launch` and by the test suite's conftest), each one
only where `XLA_FLAGS` does not name that option already, so a user's own
setting wins; `python -m launch --noxla_cpu_defaults` leaves `XLA_FLAGS` as
it is (XLA's own defaults).

- `xla_cpu_experimental_ynn_fusion_type=reduce`: of XLA:CPU's YNNPACK
  fusions keep only the reductions. By default XLA also hands every
  convolution and matmul to YNNPACK ("individual" fusions); given this list
  instead, it runs them with its own (Eigen) kernels, which are faster here
  for the small-channel convolutions of the course networks and their
  weight gradients. On the course MNIST UNet's train step (batch 128 at
  32x32, 2 CPU devices) it measured 1.70-1.86x the images/s of XLA's
  default in alternating runs; loss, outputs and gradients equal to
  rounding (docs/benchmarks.md has the figures, the settings that lost and
  the accuracy check).

The options only concern the CPU backend: on a GPU or TPU host they change
nothing there.
"""
from __future__ import annotations

import os
from typing import MutableMapping

DEFAULTS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "reduce",
}


def _named(flags: str) -> set[str]:
  """The option names in an XLA_FLAGS string ("--name=value --other")."""
  names = set()
  for item in flags.split():
    name = item.lstrip("-").split("=", 1)[0]
    if name.startswith("no"):      # absl's --noname spelling of a boolean
      names.add(name[2:])
    names.add(name)
  return names


def with_defaults(flags: str, defaults: dict[str, str] | None = None) -> str:
  """`flags` with each of `defaults` appended that it does not name already."""
  defaults = DEFAULTS if defaults is None else defaults
  present = _named(flags)
  extra = [f"--{k}={v}" for k, v in defaults.items() if k not in present]
  return " ".join(part for part in (flags.strip(), *extra) if part)


def apply(environ: MutableMapping[str, str] | None = None,
          defaults: dict[str, str] | None = None) -> str:
  """Sets environ["XLA_FLAGS"] (default: os.environ) to `with_defaults` of it.

  Must run before JAX creates its CPU client (the first `jax.devices()` or
  computation); importing jax earlier is fine. Returns the new value.
  """
  environ = os.environ if environ is None else environ
  value = with_defaults(environ.get("XLA_FLAGS", ""), defaults)
  environ["XLA_FLAGS"] = value
  return value
