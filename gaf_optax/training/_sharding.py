"""How the train state is laid out on the device mesh.

Two layouts over the one ``"data"`` axis of :func:`make_mesh`:

- ``"replicated"``: every device holds the whole state (plain data
  parallelism; XLA all-reduces the gradients).
- ``"fsdp"`` (fully sharded data parallelism, ZeRO-3): every array of the
  state (parameters, every optimizer buffer, BatchNorm statistics) at least
  ``min_bytes`` large is split over the data axis along its largest
  dimension that the device count divides; smaller or indivisible arrays
  stay replicated. The batch is sharded over the same axis. Under
  ``jax.jit`` XLA gathers each parameter where the forward and backward
  passes need it and reduce-scatters the gradients, so each device keeps
  about 1/N of the state. The rule is applied to every leaf by its shape,
  so optimizer buffers get their parameter's layout without knowing
  optax's state types, and the amplification controller's O(layers) vectors
  and ANAct's scalars stay replicated.

Methods and layouts are independent: GAF is elementwise; ``adaptive_gaf``'s
per-leaf ``max|d|`` and the norms of the telemetry are reductions that XLA
carries out across devices; ANAct's statistics are means over the global
batch either way.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["SHARDINGS", "fsdp_spec", "per_device_bytes", "state_shardings"]

SHARDINGS = ("replicated", "fsdp")
Layout = Literal["replicated", "fsdp"]


def fsdp_spec(shape, itemsize: int, num_devices: int, *, min_bytes: int,
              axis: str = "data") -> P:
  """The FSDP partition of one array: its largest divisible dimension.

  Args:
    shape: the array's shape.
    itemsize: bytes per element.
    num_devices: the size of the mesh axis.
    min_bytes: arrays smaller than this stay replicated.
    axis: the mesh axis.

  Returns:
    ``P(None, ..., axis, ..., None)`` at the largest dimension divisible by
    ``num_devices`` (the last one among equals), or ``P()``.

  Example:
    >>> from jax.sharding import PartitionSpec as P
    >>> from gaf_optax.training import fsdp_spec
    >>> fsdp_spec((3, 3, 64, 128), 4, 8, min_bytes=0) == P(None, None, None,
    ...                                                      "data")
    True
    >>> fsdp_spec((10,), 4, 8, min_bytes=0) == P()  # indivisible
    True
  """
  size = int(np.prod(shape, dtype=np.int64)) * itemsize
  if num_devices == 1 or not shape or size < min_bytes:
    return P()
  best = None
  for i, d in enumerate(shape):
    if d % num_devices == 0 and (best is None or d >= shape[best]):
      best = i
  if best is None:
    return P()
  return P(*[axis if i == best else None for i in range(len(shape))])


def state_shardings(shapes: Any, mesh: Mesh, layout: Layout = "replicated",
                    *, min_bytes: int = 1 << 20) -> Any:
  """``NamedSharding``s for a pytree of array shapes under ``layout``.

  Args:
    shapes: arrays or ``jax.ShapeDtypeStruct``s (``jax.eval_shape`` output).
    mesh: a mesh with a ``"data"`` axis.
    layout: ``"replicated"`` or ``"fsdp"``.
    min_bytes: FSDP leaves below this size stay replicated (default 1 MiB).

  Returns:
    A pytree like ``shapes`` of ``NamedSharding``.
  """
  if layout not in SHARDINGS:
    raise ValueError(f"sharding must be one of {SHARDINGS}; got {layout!r}.")
  if not isinstance(min_bytes, int) or min_bytes < 0:
    raise ValueError(f"fsdp_min_bytes must be an int >= 0; got {min_bytes!r}.")
  n = mesh.shape["data"]

  def one(x):
    if layout == "replicated":
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(
        tuple(x.shape), np.dtype(x.dtype).itemsize, n, min_bytes=min_bytes))

  return jax.tree.map(one, shapes)


def per_device_bytes(tree: Any, device: jax.Device | None = None) -> int:
  """Bytes of ``tree``'s arrays held on ``device`` (default: the first).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.training import per_device_bytes
    >>> per_device_bytes({"w": jnp.zeros((4, 2), jnp.float32)})
    32
  """
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "addressable_shards")]
  if device is None:
    if not leaves:
      return 0
    device = min((s.device for s in leaves[0].addressable_shards),
                 key=lambda d: d.id)
  return sum(s.data.nbytes for x in leaves for s in x.addressable_shards
             if s.device == device)
