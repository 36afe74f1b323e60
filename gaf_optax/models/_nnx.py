"""The reference models as Flax NNX modules, through ``flax.nnx.bridge``.

One source of truth: each NNX model wraps the Linen model of the same name
(``nnx.bridge.ToNNX``), so the architecture, initializers, amplification
points and ``act=`` hooks are the Linen code's. The Linen ``params`` become
``nnx.Param`` and ``batch_stats`` (BatchNorm, ANAct) ``nnx.BatchStat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp
from flax import nnx

from gaf_optax.nnx import AmplificationFactors

__all__ = ["NNXModel"]


class NNXModel(nnx.Module):
  """A ``gaf_optax.models`` Linen model as an NNX module.

  Called as ``model(x)`` on a batch; ``model.train()`` (the default) and
  ``model.eval()`` switch BatchNorm and ANAct between batch and running
  statistics (they set ``use_running_average``), as for NNX's own layers.
  In training mode a call updates the ``nnx.BatchStat`` variables.

  Data parallelism: built with ``get_nnx(name, ..., axis_name="batch")``,
  the wrapped model's BatchNorm and ANAct take the global batch's
  statistics under ``jax.pmap`` / ``shard_map`` over that axis (``nnx.split``
  the model outside, ``nnx.merge`` it inside the mapped step), as for the
  Linen model.

  With ``amplification=True`` the model holds its amplification factors as
  one :class:`gaf_optax.nnx.AmplificationFactors` variable of shape
  ``(num_amplification_points,)``, all ones at first (the identity). Write
  the controller's factors with
  :func:`gaf_optax.nnx.set_amplification_factors`, and read the points'
  signal norms from the same backward pass with
  :func:`gaf_optax.nnx.amplification_signal_norms` (see the README).

  Args:
    module: the Linen model (``gaf_optax.models.get(name, ...)``).
    input_shape: one example's shape, e.g. ``(32, 32, 3)``, to create the
      variables.
    rngs: ``nnx.Rngs`` with a ``params`` stream (and ``dropout`` for an MLP
      with ``dropout_rate``).
    amplification: hold amplification factors (the model must have points).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from gaf_optax import models
    >>> model = models.get_nnx("mlp", features=(8,), num_classes=3,
    ...                        input_shape=(2, 2, 1), rngs=nnx.Rngs(0))
    >>> model(jnp.ones((5, 2, 2, 1))).shape
    (5, 3)
    >>> import jax
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    67
  """

  def __init__(self, module: nn.Module, input_shape: Sequence[int], *,
               rngs: nnx.Rngs, amplification: bool = False):
    if not isinstance(module, nn.Module):
      raise TypeError(f"module must be a flax.linen Module; got "
                      f"{type(module).__name__}.")
    self.linen = nnx.bridge.ToNNX(module, rngs=rngs)
    nnx.bridge.lazy_init(self.linen, jnp.zeros((1, *input_shape), jnp.float32),
                         train=False)
    self.num_amplification_points = int(
        getattr(module, "num_amplification_points", 0))
    self.use_running_average = False
    if amplification:
      if self.num_amplification_points < 1:
        raise ValueError(f"amplification=True needs a model with "
                         f"amplification points; {type(module).__name__} "
                         "has none.")
      self.amp_factors = AmplificationFactors(
          jnp.ones((self.num_amplification_points,), jnp.float32))
    else:
      self.amp_factors = None

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    train = not self.use_running_average
    factors = None if self.amp_factors is None else self.amp_factors[...]
    if not train:
      return self.linen(x, train=False, amp_factors=factors, mutable=False)
    before = ({} if _BRIDGE_MERGES_DEEPLY else
              {k: v for k, v in vars(self.linen).items()
               if isinstance(v, dict)})
    out = self.linen(x, train=True, amp_factors=factors,
                     mutable=["batch_stats"])
    for name, old in before.items():
      setattr(self.linen, name, _deep_merge(old, getattr(self.linen, name)))
    return out


# Flax < 0.12's ToNNX merges a call's updated collections into its variables
# one level deep only (``old | new``), so a training call drops the params of
# every nested module whose batch_stats changed (e.g. a block's BatchNorm
# scale and bias). There we merge the old and new trees all the way down
# after the call, setting the attributes as that ToNNX itself does.
_BRIDGE_MERGES_DEEPLY = tuple(
    int(p) for p in flax.__version__.split(".")[:2]) >= (0, 12)


def _deep_merge(old: dict, new: dict) -> dict:
  out = dict(old)
  for key, value in new.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _deep_merge(out[key], value)
    else:
      out[key] = value
  return out
