"""Gradient-amplification points (Basodi et al. 2020, 2023).

An amplification point is the identity in the forward pass and multiplies the
backpropagated signal (the cotangent dL/dx) by a factor in the backward pass.
Points compound: a parameter below k amplified points receives a gradient
scaled by ``factor**k``, which is the papers' mechanism (amplifying the signal
that flows back through a layer, not the layer's own parameter update).

Statistics. The controller (:func:`gaf_optax.gradient_amplification`) selects
layers from the fluctuation of each point's backpropagated signal. To expose
that signal without a second backward pass, :func:`amplify` returns, as the
cotangent of ``factor``, the squared Euclidean norm of the cotangent arriving
at the point, before this point multiplies it (signals already amplified by
points above it are included). So ``jax.grad`` with respect to the factors
array gives one squared norm per point; :func:`signal_norms` turns it into the
norms the controller takes. This is a deliberate, documented abuse of the
factor's cotangent (the true derivative of an identity with respect to the
factor is zero); it is exact, costs one reduction per point, and adds up
correctly across data-parallel shards because squared norms are additive.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@jax.custom_vjp
def amplify(x: Any, factor: jax.Array) -> Any:
  """Identity forward; multiplies the cotangent by ``factor`` backward.

  Args:
    x: an array (or a pytree of arrays) at the amplification point.
    factor: a scalar array. It is traced, so changing it never recompiles.

  Returns:
    ``x`` unchanged. Under differentiation the cotangent flowing to ``x`` is
    ``factor * g`` (in ``g``'s dtype), and the cotangent of ``factor`` is
    ``sum(g**2)`` in float32: the squared norm of the incoming signal ``g``,
    before this point amplifies it (see the module docstring).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import amplify
    >>> f = lambda x, a: jnp.sum(3.0 * amplify(x, a))
    >>> gx, ga = jax.grad(f, argnums=(0, 1))(jnp.ones(2), jnp.float32(2.0))
    >>> gx.tolist(), float(ga)  # 2 * 3, and the squared norm 3**2 + 3**2
    ([6.0, 6.0], 18.0)
  """
  del factor
  return x


def _amplify_fwd(x, factor):
  return x, factor


def _amplify_bwd(factor, g):
  factor = jnp.asarray(factor)
  leaves = jax.tree.leaves(g)
  sq_norm = sum(
      (jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves),
      start=jnp.zeros((), jnp.float32),
  )
  scaled = jax.tree.map(lambda leaf: (leaf * factor).astype(leaf.dtype), g)
  return scaled, sq_norm.astype(factor.dtype).reshape(factor.shape)


amplify.defvjp(_amplify_fwd, _amplify_bwd)


def signal_norms(factor_grads: jax.Array) -> jax.Array:
  """Per-point signal norms from the gradient with respect to the factors.

  Args:
    factor_grads: the cotangent of the ``factors`` array passed to a model
      (``jax.grad`` with respect to it), i.e. per-point squared norms.

  Returns:
    ``sqrt(factor_grads)`` in float32, the ``layer_stats`` that
    :func:`gaf_optax.gradient_amplification` expects.
  """
  return jnp.sqrt(jnp.maximum(jnp.asarray(factor_grads, jnp.float32), 0.0))


class AmplificationPoints:
  """Hands out numbered amplification points to a model, in call order.

  A model creates one of these per forward pass from the ``factors`` argument
  it was applied with, and passes it down to its blocks; each block calls it
  on the signal at each point (after each BatchNorm, in the residual branch
  only). Point ``i`` is the ``i``-th call in forward order, so ``factors[i]``
  amplifies the ``i``-th point and the gradient with respect to ``factors``
  lists the points' statistics in the same order (input side first).

  With ``factors=None`` every point is the plain identity (no custom
  gradient), so a model without amplification traces exactly as before.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import AmplificationPoints
    >>> def net(x, factors=None):
    ...   amp = AmplificationPoints(factors)
    ...   x = amp(jnp.tanh(x))
    ...   x = amp(2.0 * x)
    ...   amp.check_used_all()
    ...   return jnp.sum(x)
    >>> g = jax.grad(net, argnums=(0, 1))(jnp.zeros(1), jnp.array([2.0, 3.0]))
    >>> g[0].tolist()  # 2 * 3 * 2 * tanh'(0)
    [12.0]
  """

  def __init__(self, factors: jax.Array | None = None):
    if factors is not None:
      factors = jnp.asarray(factors)
      if factors.ndim != 1:
        raise ValueError(
            "factors must be a 1-D array with one entry per amplification "
            f"point, got shape {factors.shape}."
        )
    self.factors = factors
    self.count = 0

  def __call__(self, x: Any) -> Any:
    index = self.count
    self.count += 1
    if self.factors is None:
      return x
    if index >= self.factors.shape[0]:
      raise ValueError(
          f"factors has shape {self.factors.shape} but the model has more "
          f"than {self.factors.shape[0]} amplification points."
      )
    return amplify(x, self.factors[index])

  def check_used_all(self) -> None:
    """Raises ValueError if ``factors`` has more entries than points used."""
    if self.factors is not None and self.count != self.factors.shape[0]:
      raise ValueError(
          f"factors has shape {self.factors.shape} but the model has "
          f"{self.count} amplification points; pass float32[{self.count}]."
      )


class AmplificationPoint(nn.Module):
  """An amplification point whose factor is a variable (scan-safe numbering).

  :class:`AmplificationPoints` numbers points by call order, which a model
  under ``nn.scan`` breaks (the scanned body is traced once for all its
  layers). This point keeps its factor in the ``"amplification"``
  collection instead, so the numbering is the variables' structure: scan it
  with ``variable_axes={"amplification": 0}`` and each layer gets its own
  factor (one stacked array). The controller's factors go in with
  :func:`set_point_factors`; differentiate with respect to the collection
  to get each point's signal (:func:`point_signal_norms`), in the same
  backward pass. Points are numbered in the order of
  ``jax.tree.leaves(variables["amplification"])`` (module paths sorted, a
  stacked leaf's entries in order). The NNX form is
  :class:`gaf_optax.nnx.AmplificationPoint`.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from gaf_optax import nn as gnn
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = gnn.AmplificationPoint(name="a")(x)
    ...     return jnp.sum(3.0 * gnn.AmplificationPoint(name="b")(2.0 * x))
    >>> variables = Net().init(jax.random.key(0), jnp.ones(1))
    >>> amp = gnn.set_point_factors(variables["amplification"],
    ...                             jnp.array([2.0, 5.0]))
    >>> grads = jax.grad(lambda a: Net().apply({"amplification": a},
    ...                                        jnp.ones(1)))(amp)
    >>> gnn.point_signal_norms(grads).tolist()  # |3 * 5 * 2|, |3|
    [30.0, 3.0]
  """

  @nn.compact
  def __call__(self, x: Any) -> Any:
    factor = self.variable("amplification", "factor",
                           lambda: jnp.ones((), jnp.float32))
    return amplify(x, factor.value)


def set_point_factors(collection: Any, factors: jax.Array) -> Any:
  """The ``"amplification"`` collection with ``factors`` written in.

  Args:
    collection: ``variables["amplification"]`` of a model with
      :class:`AmplificationPoint` s (or any tree of factor arrays; the NNX
      points use it on their variables' values too).
    factors: float32[P], one per point in the collection's leaf order
      (what :func:`gaf_optax.amplification_factors` returns).

  Returns:
    A collection of the same structure.

  Raises:
    ValueError: if ``factors`` does not hold one entry per point.
  """
  leaves, treedef = jax.tree.flatten(collection)
  sizes = [int(np.prod(jnp.shape(leaf))) for leaf in leaves]
  factors = jnp.asarray(factors)
  if factors.shape != (sum(sizes),):
    raise ValueError(
        f"factors must have shape ({sum(sizes)},), one entry per "
        f"amplification point; got {factors.shape}.")
  out, start = [], 0
  for leaf, size in zip(leaves, sizes):
    out.append(factors[start:start + size].reshape(jnp.shape(leaf))
               .astype(jnp.float32))
    start += size
  return jax.tree.unflatten(treedef, out)


def point_signal_norms(collection_grads: Any) -> jax.Array:
  """:func:`signal_norms` of the gradient with respect to the collection.

  Returns float32[P] in the collection's leaf order (see
  :class:`AmplificationPoint`).
  """
  leaves = jax.tree.leaves(collection_grads)
  if not leaves:
    return jnp.zeros((0,), jnp.float32)
  return signal_norms(jnp.concatenate([jnp.reshape(l, -1) for l in leaves]))
