"""The 1-D data mesh: parameters replicated, batches split over `data`.

Works unchanged on one device, on fake CPU devices
(`jax_num_cpu_devices`), on a GPU/TPU host and across hosts after
`jax.distributed.initialize()` (the mesh spans `jax.devices()`, every
process's devices).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axis: str = "data") -> Mesh:
  return Mesh(np.asarray(jax.devices()), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Sharding of a batch whose axis `leading_axes` is the batch axis."""
  return NamedSharding(mesh, P(*([None] * leading_axes), mesh.axis_names[0]))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"config.train.batch_size={global_batch} must be divisible by the "
                     f"number of devices ({n})")


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This host's rows of a batch -> one global jax.Array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
