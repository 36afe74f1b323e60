"""ANAct as Flax NNX modules, the same computation as the Linen ones.

The rule, its bounds and what is ours rather than the paper's are documented
in :mod:`gaf_optax.nn._anact`; both APIs call the same pure functions, so an
NNX layer and a Linen layer with the same stored lambda give the same output
and the same new lambda (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
from flax import nnx

from gaf_optax.nn import _anact
from gaf_optax.nnx._variables import set_value

__all__ = ["ANAct", "NGELU", "NReLU", "NSwish", "NTanh"]


class ANAct(nnx.Module):
  """An activation scaled by a factor kept from mini-batch statistics (NNX).

  The NNX form of :class:`gaf_optax.nn.ANAct`, with the same attributes and
  the same two rules (``"running"``, the default, and ``"batch"``; see
  there, including which parts are our design). The stored lambda is an
  ``nnx.BatchStat`` named ``lam`` (Linen: ``batch_stats/lambda``), so
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leaves it alone. Training
  mode updates it from each batch; evaluation uses it as stored. Switch
  with ``model.train()`` / ``model.eval()`` (they set
  ``use_running_average``), or per call. Unlike the Linen module it sows
  nothing (Flax 0.12 deprecates ``sow`` outside ``nnx.capture``); the
  batch's gains are :func:`gaf_optax.nn.anact_lambda` of its input.

  Under ``jax.pmap`` or ``shard_map``, ``axis_name`` (the mapped batch axis,
  as for ``nnx.BatchNorm``) makes the statistics those of the global batch,
  so every replica stores the lambda a single device computes on the whole
  batch (see :class:`gaf_optax.nn.ANAct`).

  Args:
    num_features: the size of the last axis; needed (only) with
      ``per_channel=True``, since NNX creates variables eagerly.
    activation: the elementwise activation (default Swish).
    mode: ``"geometric"`` (default), ``"forward"`` or ``"backward"``.
    momentum: running-average decay, in (0, 1).
    per_channel: one lambda per channel of the last axis.
    epsilon: stabilizer in the gains.
    rule: ``"running"`` (default) or ``"batch"``.
    max_ratio: ``running`` rule: the bound on ``lambda / lambda_0``, > 1
      (default 1.05; see :class:`gaf_optax.nn.ANAct`).
    max_step: ``running`` rule: the largest change of ``log lambda`` in one
      step, > 0.
    backward_exponent: the power of lambda in the backward pass, in
      ``[0, 1]`` (default 0.5; 1 is the derivative of ``lambda * f``).
    use_running_average: evaluation mode (use the stored lambda as it is).
    axis_name: the mapped axis (or tuple of axes) whose devices share the
      batch statistics, or None (default: this device's batch only).
    axis_index_groups: groups of device indices along ``axis_name`` that
      share statistics separately (``jax.lax.pmean``'s; ``pmap`` only), or
      None (all devices). Stored as a tuple of tuples.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax import nnx as gnnx
    >>> act = gnnx.NReLU()
    >>> round(float(act.lam[...]), 3)  # lambda_0 = sqrt(2)
    1.414
    >>> x = jax.random.normal(jax.random.key(0), (4096, 8))
    >>> y = act(x - 1.0)  # training mode: lambda moves by at most e**0.001
    >>> round(float(act.lam[...]), 4)
    1.4156
    >>> act.eval()
    >>> bool(jnp.allclose(act(x), act.lam[...] * jax.nn.relu(x)))
    True
  """

  def __init__(self, num_features: int | None = None, *,
               activation: Callable[[jax.Array], jax.Array] = nnx.swish,
               mode: str = "geometric", momentum: float = 0.99,
               per_channel: bool = False, epsilon: float = 1e-5,
               rule: Literal["running", "batch"] = "running",
               max_ratio: float = 1.05, max_step: float = 0.001,
               backward_exponent: float = 0.5,
               use_running_average: bool = False,
               axis_name: _anact.AxisName = None,
               axis_index_groups: Any = None):
    self.activation = activation
    self.mode = mode
    self.momentum = momentum
    self.per_channel = per_channel
    self.epsilon = epsilon
    self.rule = rule
    self.max_ratio = max_ratio
    self.max_step = max_step
    self.backward_exponent = backward_exponent
    self.use_running_average = use_running_average
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    _anact.check_config(self)
    if axis_index_groups is not None:
      try:
        self.axis_index_groups = tuple(tuple(int(i) for i in group)
                                       for group in axis_index_groups)
      except TypeError:
        raise TypeError("axis_index_groups must be a sequence of sequences "
                        "of device indices; got "
                        f"{axis_index_groups!r}.") from None
    if per_channel:
      if not isinstance(num_features, int) or num_features < 1:
        raise ValueError("per_channel=True needs num_features, the size of "
                         f"the last axis (a positive int); got "
                         f"{num_features!r}.")
      shape = (num_features,)
    else:
      shape = ()
    self.num_features = num_features
    self.lam = nnx.BatchStat(_anact.initial_lambda(self, shape))

  def __call__(self, x: jax.Array,
               use_running_average: bool | None = None) -> jax.Array:
    if use_running_average is None:
      use_running_average = self.use_running_average
    if self.per_channel and x.shape[-1] != self.num_features:
      raise ValueError(f"x's last axis has size {x.shape[-1]}, but this "
                       f"ANAct was built with num_features="
                       f"{self.num_features}.")
    y, new_lam, stats = _anact.forward(self, x, self.lam[...],
                                       train=not use_running_average)
    if stats is not None:
      set_value(self.lam, new_lam)
    return y


class NSwish(ANAct):
  """ANAct with Swish (the paper's NSwish), NNX."""

  def __init__(self, num_features: int | None = None, **kwargs):
    kwargs.setdefault("activation", nnx.swish)
    super().__init__(num_features, **kwargs)


class NReLU(ANAct):
  """ANAct with ReLU (the paper's NReLU), NNX."""

  def __init__(self, num_features: int | None = None, **kwargs):
    kwargs.setdefault("activation", nnx.relu)
    super().__init__(num_features, **kwargs)


class NGELU(ANAct):
  """ANAct with GELU (tanh approximation), NNX."""

  def __init__(self, num_features: int | None = None, **kwargs):
    kwargs.setdefault("activation", nnx.gelu)
    super().__init__(num_features, **kwargs)


class NTanh(ANAct):
  """ANAct with tanh, NNX."""

  def __init__(self, num_features: int | None = None, **kwargs):
    kwargs.setdefault("activation", nnx.tanh)
    super().__init__(num_features, **kwargs)
