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
factor is zero); it is exact and costs one reduction per point.

Data parallelism. Squared norms add up over the examples of a batch, but the
per-device losses of a data-parallel step are means over each device's shard:
on ``n`` devices each device's cotangents are ``n`` times the global batch's,
so the global squared norm is ``psum(factor_grads) / n**2``, neither the
``psum`` nor the ``pmean`` of the factor gradients. ``signal_norms(...,
axis_name=...)`` does this reduction; give it the axis over which the step
``lax.pmean`` s its gradients (``jax.pmap``, or ``jax.shard_map`` with
per-device losses). Under ``jax.shard_map`` with varying-axes checking (its
default on jax >= 0.7), a factor that enters replicated gets the ``psum`` of
the devices' squared norms as its cotangent, as any replicated input does;
when the loss is ``lax.pmean`` ed inside (JAX's data-parallel idiom), that
is already the global batch's statistic, and ``signal_norms`` leaves
such invariant values as they are.
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
  # The factor's cotangent must have the factor's type. Under jax.shard_map
  # with varying-axes checking, a replicated factor met per-device signals
  # (an implicit broadcast), whose transpose sums over the devices: JAX's own
  # transpose of `factor * sq_norm` inserts exactly that sum, and nothing
  # where no axis is varying (pmap, one device, older jax).
  _, pullback = jax.vjp(lambda f: f.astype(jnp.float32) * sq_norm, factor)
  (factor_ct,) = pullback(jnp.ones_like(sq_norm))
  return scaled, factor_ct.astype(factor.dtype).reshape(factor.shape)


amplify.defvjp(_amplify_fwd, _amplify_bwd)


AxisName = Any  # a mapped axis name, or a tuple of them


def _axis_names(axis_name: AxisName) -> tuple[Any, ...]:
  names = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (
      axis_name,)
  if not names or any(
      n is None or isinstance(n, (bool, int, float)) for n in names):
    raise ValueError(
        "axis_name must be None, a mapped axis name (e.g. 'batch', as "
        "given to jax.pmap or a jax.shard_map mesh) or a tuple of them; got "
        f"{axis_name!r}.")
  return names


def _varying_axes(x: jax.Array, names: tuple[Any, ...]) -> tuple[Any, ...]:
  """The axes of ``names`` along which ``x`` holds per-device values.

  Under ``jax.shard_map`` with varying-axes checking, each value's type lists
  the mesh axes it varies along (``jax.typeof(x)``: ``.vma`` on some jax
  versions, ``.manual_axis_type.varying`` on others), and
  ``lax.axis_index`` always varies when checking is on. Under ``jax.pmap``,
  ``shard_map(check_vma=False)`` and jax versions without such types, every
  value is per-device, so every axis counts as varying.
  """
  typeof = getattr(jax, "typeof", None)
  if typeof is None:
    return names

  def varying(value):
    aval = typeof(value)
    found = getattr(aval, "vma", None)
    if found is None:
      found = getattr(getattr(aval, "manual_axis_type", None), "varying",
                      None)
    return found

  out = []
  for name in names:
    probe = varying(jax.lax.axis_index(name))
    checked = probe is not None and name in probe
    if not checked or name in varying(x):
      out.append(name)
  return tuple(out)


def signal_norms(factor_grads: jax.Array,
                 axis_name: AxisName | None = None) -> jax.Array:
  """Per-point signal norms from the gradient with respect to the factors.

  Args:
    factor_grads: the cotangent of the ``factors`` array passed to a model
      (``jax.grad`` with respect to it), i.e. per-point squared norms.
    axis_name: under ``jax.pmap`` or ``jax.shard_map``, the axis (or tuple of
      axes) over which the step averages its gradients with ``lax.pmean``,
      each device's loss being the mean over its shard of the batch. The
      devices' squared norms are then combined into the global batch's,
      ``psum(factor_grads) / n**2`` on ``n`` devices (see the module
      docstring), so every replica gets the statistics, and so the
      selection and factors, of a one-device run on the global batch. Where
      ``factor_grads`` are already the same on every device of an axis
      (``jax.shard_map``'s varying-axes checking, with the loss
      ``lax.pmean`` ed inside), that axis is left as it is, as
      ``lax.pmean`` leaves such gradients. None (the default): no
      reduction (one device, or ``jax.jit`` with sharded global arrays,
      where the gradient is already the global batch's).

  Returns:
    ``sqrt(factor_grads)`` (reduced as above) in float32, the
    ``layer_stats`` that :func:`gaf_optax.gradient_amplification` expects.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import signal_norms
    >>> sq = jnp.array([[4.0, 16.0], [12.0, 48.0]])  # two devices' squares
    >>> jax.vmap(signal_norms, axis_name="d", in_axes=(0, None))(
    ...     sq, "d").tolist()  # sqrt(sum / 2**2), on both devices
    [[2.0, 4.0], [2.0, 4.0]]
  """
  sq = jnp.maximum(jnp.asarray(factor_grads, jnp.float32), 0.0)
  if axis_name is not None:
    names = _varying_axes(sq, _axis_names(axis_name))
    if names:
      n = jax.lax.psum(1, names)
      sq = jax.lax.psum(sq, names) / jnp.float32(n * n)
  return jnp.sqrt(sq)


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


def point_signal_norms(collection_grads: Any,
                       axis_name: AxisName | None = None) -> jax.Array:
  """:func:`signal_norms` of the gradient with respect to the collection.

  Args:
    collection_grads: the gradient with respect to the ``"amplification"``
      collection.
    axis_name: as for :func:`signal_norms` (data-parallel steps under
      ``jax.pmap`` or ``jax.shard_map``).

  Returns:
    float32[P] in the collection's leaf order (see
    :class:`AmplificationPoint`).
  """
  leaves = jax.tree.leaves(collection_grads)
  if not leaves:
    if axis_name is not None:
      _axis_names(axis_name)
    return jnp.zeros((0,), jnp.float32)
  return signal_norms(jnp.concatenate([jnp.reshape(l, -1) for l in leaves]),
                      axis_name)
