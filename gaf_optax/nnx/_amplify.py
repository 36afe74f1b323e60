"""Gradient-amplification points for Flax NNX models.

A point's factor is a variable of its own type, :class:`AmplificationFactors`,
not a call argument: the controller's factors are written into the model
(:func:`set_amplification_factors`), and the per-point signal statistics come
from the same backward pass as the parameter gradients, by differentiating
with respect to those variables too (``nnx.grad(..., argnums=nnx.DiffState(0,
(nnx.Param, AmplificationFactors)))``), exactly as
:func:`gaf_optax.nn.amplify` defines the factor's cotangent.

Numbering. Points are numbered by the order of the model's
``AmplificationFactors`` variables in ``nnx.state(model,
AmplificationFactors)`` (attribute paths in sorted order, list items by index),
and a variable of shape ``s`` holds ``prod(s)`` points in row-major order. So
the numbering is a property of the model's structure, not of the order of
calls: a block created with ``nnx.vmap`` and run under ``nnx.scan`` (or
``nnx.remat``) holds one factor per layer on its stacked axis, and each layer
gets its own factor and its own statistic.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gaf_optax.nn import amplify
from gaf_optax.nn import point_signal_norms
from gaf_optax.nn import set_point_factors

__all__ = [
    "AmplificationFactors",
    "AmplificationPoint",
    "amplification_signal_norms",
    "num_amplification_points",
    "set_amplification_factors",
]


class AmplificationFactors(nnx.Variable):
  """The factors of amplification points (one per element).

  Not an ``nnx.Param``: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` never
  updates it; the amplification controller sets it each step.
  """


class AmplificationPoint(nnx.Module):
  """Identity forward; multiplies the backpropagated signal by its factor.

  The NNX form of :func:`gaf_optax.nn.amplify` at one point. Its factor
  starts at 1 (the identity, also backward).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from gaf_optax import nnx as gnnx
    >>> class Net(nnx.Module):
    ...   def __init__(self):
    ...     self.a = gnnx.AmplificationPoint()  # point 0 (sorted names)
    ...     self.b = gnnx.AmplificationPoint()  # point 1
    ...   def __call__(self, x):
    ...     return jnp.sum(3.0 * self.b(2.0 * self.a(x)))
    >>> net = Net()
    >>> gnnx.set_amplification_factors(net, jnp.array([2.0, 5.0]))
    >>> wrt = nnx.DiffState(0, gnnx.AmplificationFactors)
    >>> grads = nnx.grad(lambda m, x: m(x), argnums=wrt)(net, jnp.ones(1))
    >>> gnnx.amplification_signal_norms(grads).tolist()  # |3|, |5 * 3 * 2|
    [30.0, 3.0]
  """

  def __init__(self):
    self.factor = AmplificationFactors(jnp.ones((), jnp.float32))

  def __call__(self, x: Any) -> Any:
    return amplify(x, self.factor[...])


def _factor_leaves(tree) -> list[jax.Array]:
  """The AmplificationFactors values of a model or state, in point order."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, AmplificationFactors)
  else:
    tree = nnx.filter_state(tree, AmplificationFactors)
  return jax.tree.leaves(tree)


def num_amplification_points(model: nnx.Module) -> int:
  """How many amplification points ``model`` holds (see the numbering)."""
  return sum(math.prod(leaf.shape) for leaf in _factor_leaves(model))


def set_amplification_factors(model: nnx.Module, factors: jax.Array) -> None:
  """Writes ``float32[num_amplification_points(model)]`` into the points.

  ``factors`` is what :func:`gaf_optax.amplification_factors` returns for
  the controller's state; it may be traced (inside ``nnx.jit``).

  Raises:
    ValueError: if ``factors`` does not hold one entry per point.
  """
  state = nnx.state(model, AmplificationFactors)
  nnx.replace_by_pure_dict(
      state, set_point_factors(nnx.to_pure_dict(state), factors))
  nnx.update(model, state)


def amplification_signal_norms(grads, axis_name: Any = None) -> jax.Array:
  """Per-point signal norms from the gradient with respect to the factors.

  Args:
    grads: the ``nnx.State`` that ``nnx.grad`` returned for a
      ``DiffState`` that includes ``AmplificationFactors`` (other variable
      types in it are ignored).
    axis_name: under ``jax.pmap`` or ``jax.shard_map``, the axis over which
      the step averages its gradients; see :func:`gaf_optax.nn.signal_norms`.

  Returns:
    float32[P], the ``layer_stats`` that
    :func:`gaf_optax.gradient_amplification` takes, in point order.
  """
  return point_signal_norms(_factor_leaves(grads), axis_name)
