"""Test setup: two fake CPU devices (so sharding is exercised) and a
persistent compilation cache (so repeated runs of the suite compile less)."""
from __future__ import annotations

import os
import pathlib

import jax

_CACHE = pathlib.Path(os.environ.get(
    "JAX_TEST_CACHE", pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
