"""GAAF: gradient acceleration in activation functions.

Hahn & Choi, "Gradient Acceleration in Activation Functions",
https://arxiv.org/abs/1806.09783 (no official code).

The paper's activation is ``phi(x) + g(x) * s(x)`` with a sawtooth
``g(x) = (x*K - floor(x*K) - 0.5) / K`` (K = 10,000): the forward value moves
by at most ``0.5 / K``, while ``g'(x) = 1`` almost everywhere adds the shape
function ``s(x)`` to the derivative. Here the forward value is exactly
``phi(x)`` and the derivative is ``phi'(x) + amplitude * s(x)`` (a
``jax.custom_jvp``); ``sawtooth=True`` gives the paper's forward form with the
same derivative.

What is the paper's and what is ours:
- the mechanism, the sawtooth and K = 10,000 are the paper's;
- the shape functions were read off the paper's figures (tanh:
  ``exp(-x**2 / 4)``; ReLU: ``sigmoid(5x + 2.5)``), so their constants are our
  reading, not published formulas;
- the sigmoid shape ``0.25 * exp(-x**2 / 16)`` is our derivation (sigmoid(x)
  = 1/2 + tanh(x/2)/2 carries the tanh shape over), not in the paper;
- ``amplitude`` (default 1, the paper's) is ours: GAAF raises each layer's
  backward gain (2 at x = 0 for tanh), which explodes very deep plain nets.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "gaaf",
    "gaaf_relu",
    "gaaf_sigmoid",
    "gaaf_tanh",
    "relu_shape",
    "sigmoid_shape",
    "tanh_shape",
]

Activation = Callable[[jax.Array], jax.Array]


def tanh_shape(x: jax.Array) -> jax.Array:
  """Bell-shaped GAAF shape for tanh, ``exp(-x**2 / 4)`` (read off the paper)."""
  return jnp.exp(-0.25 * x * x)


def relu_shape(x: jax.Array) -> jax.Array:
  """GAAF shape for ReLU, ``sigmoid(5x + 2.5)`` (read off the paper)."""
  return jax.nn.sigmoid(5.0 * x + 2.5)


def sigmoid_shape(x: jax.Array) -> jax.Array:
  """GAAF shape for sigmoid, ``0.25 * exp(-x**2 / 16)`` (our derivation)."""
  return 0.25 * jnp.exp(-x * x / 16.0)


def _is_static_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def gaaf(
    activation: Activation,
    shape: Activation,
    amplitude: float = 1.0,
    *,
    sawtooth: bool = False,
    frequency: float = 10_000,
) -> Activation:
  r"""Wraps an elementwise activation so its derivative gets ``amplitude * s(x)``.

  The returned function computes ``activation(x)`` exactly (bit for bit),
  and its derivative is ``activation'(x) + amplitude * shape(x)``. With
  ``sawtooth=True`` the forward value is the paper's
  ``activation(x) + g(x) * amplitude * shape(x)``, with the sawtooth
  ``g(x) = (x*K - floor(x*K) - 0.5) / K``, ``K = frequency``, so it differs
  from ``activation(x)`` by at most ``0.5 * amplitude * max|shape| / K``; the
  derivative is the same as the smooth form's (the paper's ``g' = 1``, its
  negligible ``g * s'`` term dropped).

  The derivative (base and shape) is evaluated in float32 for bf16/f16
  inputs and rounded once; outputs and gradients keep the input dtype. Works under ``jit``, ``grad``
  and ``vmap``, and as a plain ``act=`` in Flax modules.

  Args:
    activation: an elementwise activation, e.g. ``jax.nn.relu``.
    shape: an elementwise shape function ``s``, e.g. :func:`relu_shape`.
    amplitude: non-negative Python float scaling ``s`` (the paper: 1).
    sawtooth: use the paper's forward form ``phi + g * s``.
    frequency: the sawtooth's K (the paper: 10,000); positive.

  Returns:
    A function ``x -> activation(x)`` with the accelerated derivative.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import gaaf, tanh_shape
    >>> act = gaaf(jnp.tanh, tanh_shape, amplitude=1.0)
    >>> x = jnp.array(3.0)
    >>> bool(act(x) == jnp.tanh(x))
    True
    >>> round(float(jax.grad(act)(x)), 4)  # tanh'(3) + exp(-9/4)
    0.1153

  References:
    Hahn & Choi, `Gradient Acceleration in Activation Functions
    <https://arxiv.org/abs/1806.09783>`_.
  """
  if not callable(activation):
    raise ValueError(f"activation must be callable; got {activation!r}.")
  if not callable(shape):
    raise ValueError(f"shape must be a callable shape function s(x); got "
                     f"{shape!r}.")
  if not _is_static_number(amplitude) or not amplitude >= 0:
    raise ValueError("amplitude must be a non-negative Python number; got "
                     f"{amplitude!r}.")
  if not _is_static_number(frequency) or not frequency > 0:
    raise ValueError(f"frequency must be a positive number; got {frequency!r}.")

  def scaled_shape(x):  # in float32 at least
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    return amplitude * shape(x.astype(cdt))

  @jax.custom_jvp
  def accelerated(x):
    y = activation(x)
    if sawtooth:
      k = jnp.asarray(frequency, jnp.promote_types(x.dtype, jnp.float32))
      xk = x.astype(k.dtype) * k
      g = (xk - jnp.floor(xk) - 0.5) / k
      y = (y.astype(k.dtype) + g * scaled_shape(x)).astype(y.dtype)
    return y

  @accelerated.defjvp
  def accelerated_jvp(primals, tangents):
    # The whole derivative is formed in float32 (at least) and rounded once:
    # in bf16, JAX's own tanh derivative (1 - y)(1 + y) cancels to 0 and
    # would swallow a small shape term.
    (x,), (t,) = primals, tangents
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    tc = t.astype(cdt)
    _, dy = jax.jvp(activation, (x.astype(cdt),), (tc,))
    return accelerated(x), (dy + scaled_shape(x) * tc).astype(t.dtype)

  def apply(x):
    return accelerated(jnp.asarray(x))

  return apply


def gaaf_tanh(x: jax.Array, amplitude: float = 1.0, *, sawtooth: bool = False,
              frequency: float = 10_000) -> jax.Array:
  """tanh with GAAF: derivative ``1 - tanh(x)**2 + amplitude * exp(-x**2/4)``.

  Use as ``act=gaf_optax.nn.gaaf_tanh``, or
  ``functools.partial(gaaf_tanh, amplitude=0.5)`` for another amplitude.
  """
  return gaaf(jnp.tanh, tanh_shape, amplitude, sawtooth=sawtooth,
              frequency=frequency)(x)


def gaaf_sigmoid(x: jax.Array, amplitude: float = 1.0, *,
                 sawtooth: bool = False, frequency: float = 10_000) -> jax.Array:
  """sigmoid with GAAF: derivative ``s'(x) + amplitude * 0.25*exp(-x**2/16)``.

  The sigmoid shape is our derivation, not in the paper (see module doc).
  """
  return gaaf(jax.nn.sigmoid, sigmoid_shape, amplitude, sawtooth=sawtooth,
              frequency=frequency)(x)


def gaaf_relu(x: jax.Array, amplitude: float = 1.0, *, sawtooth: bool = False,
              frequency: float = 10_000) -> jax.Array:
  """ReLU with GAAF: derivative ``1[x > 0] + amplitude * sigmoid(5x + 2.5)``."""
  return gaaf(jax.nn.relu, relu_shape, amplitude, sawtooth=sawtooth,
              frequency=frequency)(x)
