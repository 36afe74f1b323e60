"""ANAct: adaptive normalization for activation functions.

Peiwen & Liu et al., "ANAct: Adaptive Normalization for Activation Functions"
(earlier "Normalized Activation Function: Toward Better Convergence"),
https://arxiv.org/abs/2208.13315 (no official code found).

The paper's idea: an activation shrinks or grows the variance of signals
forward and of gradients backward, so ANAct multiplies it by a factor
``lambda`` that keeps the forward gain ``rho`` and the backward gain ``rho'``
near 1, updated from mini-batch statistics during training.

The paper's exact ``rho``, ``rho'`` and update rule could not be retrieved;
everything below is OUR RECONSTRUCTION, not the paper's formula:

- ``rho = (E[f(y)**2] + eps) / (Var[y] + eps)`` (forward gain),
- ``rho' = E[f'(y)**2] + eps`` (backward gain),
- ``lambda = (rho * rho')**(-1/4)`` for ``mode="geometric"`` (one scalar
  cannot set both gains to 1), ``rho**(-1/2)`` for ``"forward"``,
  ``rho'**(-1/2)`` for ``"backward"``;
- training uses the batch's ``stop_gradient(lambda)`` and updates an
  exponential moving average in the ``batch_stats`` collection; evaluation
  uses the running value (as ``flax.linen.BatchNorm`` does);
- ``eps`` in both gains keeps an all-zero or constant batch finite.

For ``y ~ N(0, 1)`` the geometric lambdas are: ReLU 1.414, Swish 1.650,
tanh 1.529, GELU 1.507, sigmoid 2.95.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ANAct", "NGELU", "NReLU", "NSwish", "NTanh", "anact_lambda"]

_MODES = ("geometric", "forward", "backward")


def anact_lambda(activation: Callable[[jax.Array], jax.Array], y: jax.Array,
                 *, mode: str = "geometric", axes=None, epsilon: float = 1e-5):
  """The batch normalization factor of ANAct and its gains (our design).

  Args:
    activation: the elementwise activation ``f``.
    y: pre-activations.
    mode: ``"geometric"``, ``"forward"`` or ``"backward"``.
    axes: axes the statistics are taken over (None: all).
    epsilon: added to ``Var[y]``, ``E[f(y)**2]`` and ``rho'``.

  Returns:
    ``(lambda, rho, rho_prime)``, float32, reduced over ``axes``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import anact_lambda
    >>> y = jax.random.normal(jax.random.key(0), (200_000,))
    >>> lam, rho, rho_p = anact_lambda(jax.nn.relu, y)
    >>> round(float(lam), 2)  # sqrt(2) for ReLU
    1.41
  """
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
  f, df = jax.jvp(activation, (y,), (jnp.ones_like(y),))
  var = jnp.var(y, axis=axes)
  rho = (jnp.mean(f * f, axis=axes) + epsilon) / (var + epsilon)
  rho_prime = jnp.mean(df * df, axis=axes) + epsilon
  if mode == "geometric":
    lam = (rho * rho_prime) ** -0.25
  elif mode == "forward":
    lam = rho ** -0.5
  else:
    lam = rho_prime ** -0.5
  return lam, rho, rho_prime


class ANAct(nn.Module):
  """An activation scaled by a factor kept from mini-batch statistics.

  Called like ``nn.BatchNorm``: ``ANAct()(x, use_running_average=not train)``.
  Training (``use_running_average=False``) uses the batch's lambda, without
  a gradient through it, and updates ``batch_stats/lambda``; evaluation uses
  the running value. Keeps one scalar (``per_channel=False``) or one value per
  channel (the last axis). The diagnostics ``rho``, ``rho_prime`` and
  ``lambda`` of the batch are sown into the ``intermediates`` collection
  (``model.apply(..., mutable=['intermediates', 'batch_stats'])``).

  See the module docstring: rho, rho' and the lambda rule are our
  reconstruction, not the paper's published formulas.

  Attributes:
    activation: the elementwise activation (default Swish).
    mode: ``"geometric"`` (default), ``"forward"`` or ``"backward"``.
    momentum: running-average decay, in (0, 1).
    per_channel: one lambda per channel of the last axis.
    epsilon: stabilizer in the gains.
    use_running_average: default for the call argument.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import NReLU
    >>> act = NReLU()
    >>> x = jax.random.normal(jax.random.key(0), (4096, 8))
    >>> variables = act.init(jax.random.key(1), x, use_running_average=False)
    >>> y, updates = act.apply(variables, x, use_running_average=False,
    ...                        mutable=['batch_stats'])
    >>> round(float(updates['batch_stats']['lambda']), 3)  # 0.99*1 + 0.01*1.41
    1.004
  """

  activation: Callable[[jax.Array], jax.Array] = nn.swish
  mode: str = "geometric"
  momentum: float = 0.99
  per_channel: bool = False
  epsilon: float = 1e-5
  use_running_average: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array,
               use_running_average: bool | None = None) -> jax.Array:
    if not callable(self.activation):
      raise ValueError(f"activation must be callable; got {self.activation!r}.")
    if self.mode not in _MODES:
      raise ValueError(f"mode must be one of {_MODES}; got {self.mode!r}.")
    if not 0.0 < self.momentum < 1.0:
      raise ValueError(f"momentum must be in (0, 1); got {self.momentum!r}.")
    if not self.epsilon > 0:
      raise ValueError(f"epsilon must be positive; got {self.epsilon!r}.")
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)

    shape = (x.shape[-1],) if self.per_channel else ()
    running = self.variable("batch_stats", "lambda",
                            lambda: jnp.ones(shape, jnp.float32))
    if use_running_average:
      lam = running.value
    else:
      axes = tuple(range(x.ndim - 1)) if self.per_channel else None
      lam, rho, rho_prime = anact_lambda(self.activation, x, mode=self.mode,
                                         axes=axes, epsilon=self.epsilon)
      lam = jax.lax.stop_gradient(lam)
      self.sow("intermediates", "rho", rho)
      self.sow("intermediates", "rho_prime", rho_prime)
      self.sow("intermediates", "lambda", lam)
      if not self.is_initializing():
        running.value = (self.momentum * running.value
                         + (1.0 - self.momentum) * lam)
    return self.activation(x) * lam.astype(x.dtype)


class NSwish(ANAct):
  """ANAct with Swish (the paper's NSwish)."""

  activation: Callable[[jax.Array], jax.Array] = nn.swish


class NReLU(ANAct):
  """ANAct with ReLU (the paper's NReLU)."""

  activation: Callable[[jax.Array], jax.Array] = nn.relu


class NGELU(ANAct):
  """ANAct with GELU (tanh approximation, flax's default)."""

  activation: Callable[[jax.Array], jax.Array] = nn.gelu


class NTanh(ANAct):
  """ANAct with tanh."""

  activation: Callable[[jax.Array], jax.Array] = nn.tanh
