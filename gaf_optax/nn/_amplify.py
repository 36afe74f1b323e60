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

import jax
import jax.numpy as jnp


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
