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
- how lambda is kept, :class:`ANAct`'s ``rule``: ``"running"`` (default)
  starts at the activation's lambda for ``N(0, 1)`` pre-activations and
  moves toward each training batch's lambda in log space by at most
  ``max_step`` per step, within a factor ``max_ratio`` (1.05) of that start;
  training and evaluation use the same running value. ``"batch"`` (the
  rule of earlier versions) trains with the batch's ``stop_gradient(lambda)``
  and evaluates with its moving average (as ``flax.linen.BatchNorm`` does);
  it can kill a network that the plain activation trains (issue "ANAct must
  not kill a network", ``experiments/studies/anact_robustness.py``);
- how much of lambda the backward pass carries, ``backward_exponent``: the
  output is ``lambda * f(y)`` and its gradient is taken as
  ``lambda**backward_exponent * f'(y)`` times the incoming one. The default,
  0.5, is our choice: with the whole gain in the backward pass (1, the
  derivative of ``lambda * f``), the kernel that feeds ANAct takes steps
  about ``lambda**2`` times larger relative to its weights than a plain net
  of the same function with the gain in its initialization (He init for
  ReLU), and deep nets without normalization collapsed under SGD at
  learning rates the plain activation trains at; with none of it (0), the
  gradients vanish with depth as the plain activation's do and the deep
  Swish MLP of study 4 no longer trains well. So the gradient is not the
  derivative of the forward function unless ``backward_exponent=1``
  (``experiments/studies/anact_robustness.py`` measures the three);
- ``eps`` in both gains keeps an all-zero or constant batch finite.

For ``y ~ N(0, 1)`` the geometric lambdas are: ReLU 1.414, Swish 1.650,
tanh 1.529, GELU 1.507, sigmoid 2.95.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ANAct", "NGELU", "NReLU", "NSwish", "NTanh", "anact_lambda",
           "gaussian_lambda"]

_MODES = ("geometric", "forward", "backward")

# A mapped axis to reduce over: a name, a tuple of names, or None.
AxisName = str | tuple[str, ...] | None


def check_axis_name(axis_name: Any, axis_index_groups: Any) -> None:
  """Raises TypeError / ValueError for a bad ``axis_name`` or groups."""
  if axis_name is not None and not isinstance(axis_name, str) and not (
      isinstance(axis_name, tuple) and axis_name
      and all(isinstance(a, str) for a in axis_name)):
    raise TypeError("axis_name must be None, a str or a non-empty tuple of "
                    f"str; got {axis_name!r}.")
  if axis_index_groups is not None and axis_name is None:
    raise ValueError("axis_index_groups needs an axis_name to group along; "
                     f"got axis_index_groups={axis_index_groups!r} and "
                     "axis_name=None.")


def anact_lambda(activation: Callable[[jax.Array], jax.Array], y: jax.Array,
                 *, mode: str = "geometric", axes=None, epsilon: float = 1e-5,
                 axis_name: AxisName = None, axis_index_groups: Any = None):
  """The batch normalization factor of ANAct and its gains (our design).

  With ``axis_name`` (inside ``jax.pmap`` or ``shard_map`` over that axis,
  each device holding an equal share of the batch) the statistics are those
  of the global batch: the mean ``E[y]`` is ``lax.pmean``-ed first, then the
  means of ``(y - E[y])**2``, ``f(y)**2`` and ``f'(y)**2`` (two all-reduces).
  So ``Var[y]`` is the variance of the global batch as ``jnp.var`` computes
  it on one device, not a mean of per-device variances (our choice of the
  two-pass form; ``flax.linen.BatchNorm`` by default takes ``E[y**2] -
  E[y]**2`` in one all-reduce).

  Args:
    activation: the elementwise activation ``f``.
    y: pre-activations.
    mode: ``"geometric"``, ``"forward"`` or ``"backward"``.
    axes: axes the statistics are taken over (None: all).
    epsilon: added to ``Var[y]``, ``E[f(y)**2]`` and ``rho'``.
    axis_name: the mapped axis (a name, or a tuple of names) to take the
      statistics over as well, or None (this device's batch only).
    axis_index_groups: groups of device indices along ``axis_name`` to
      reduce over separately, as ``jax.lax.pmean`` takes them (``pmap``
      only), or None (all).

  Returns:
    ``(lambda, rho, rho_prime)``, float32, reduced over ``axes`` (and
    ``axis_name``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import anact_lambda
    >>> y = jax.random.normal(jax.random.key(0), (200_000,))
    >>> lam, rho, rho_p = anact_lambda(jax.nn.relu, y)
    >>> round(float(lam), 2)  # sqrt(2) for ReLU
    1.41

    Synced over a mapped axis (``jax.vmap`` stands in here for
    ``jax.pmap`` over devices; both name the axis), every shard gets the
    whole batch's lambda:

    >>> shards = y.reshape(4, 50_000) * jnp.arange(1.0, 5.0)[:, None]
    >>> whole, _, _ = anact_lambda(jax.nn.relu, shards.reshape(-1))
    >>> synced = jax.vmap(
    ...     lambda s: anact_lambda(jax.nn.relu, s, axis_name="b")[0],
    ...     axis_name="b")(shards)
    >>> bool(jnp.allclose(synced, whole, rtol=1e-5))
    True
  """
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
  check_axis_name(axis_name, axis_index_groups)
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
  f, df = jax.jvp(activation, (y,), (jnp.ones_like(y),))
  if axis_name is None:
    var = jnp.var(y, axis=axes)
    mean_f2 = jnp.mean(f * f, axis=axes)
    mean_df2 = jnp.mean(df * df, axis=axes)
  else:
    pmean = functools.partial(jax.lax.pmean, axis_name=axis_name,
                              axis_index_groups=axis_index_groups)
    mu = pmean(jnp.mean(y, axis=axes, keepdims=True))
    sq = jnp.square(y - mu)
    var, mean_f2, mean_df2 = pmean(
        jnp.stack([jnp.mean(v, axis=axes) for v in (sq, f * f, df * df)]))
  rho = (mean_f2 + epsilon) / (var + epsilon)
  rho_prime = mean_df2 + epsilon
  if mode == "geometric":
    lam = (rho * rho_prime) ** -0.25
  elif mode == "forward":
    lam = rho ** -0.5
  else:
    lam = rho_prime ** -0.5
  return lam, rho, rho_prime


_RULES = ("running", "batch")


def gaussian_lambda(activation: Callable[[jax.Array], jax.Array], *,
                    mode: str = "geometric", epsilon: float = 1e-5
                    ) -> jax.Array:
  """ANAct's lambda for standard normal pre-activations, ``y ~ N(0, 1)``.

  The expectations ``E[f(y)**2]`` and ``E[f'(y)**2]`` by 96-point
  Gauss-Hermite quadrature (exact for polynomials of degree < 192; within
  1e-5 of ``sqrt(2)`` for ReLU, whose kink it does not resolve exactly, and
  of 4-million-sample Monte Carlo estimates for Swish, GELU, tanh and
  sigmoid, tested). The ``running`` rule of :class:`ANAct` starts from it and
  bounds its lambda around it.

  Args:
    activation: the elementwise activation ``f``.
    mode: as :func:`anact_lambda`.
    epsilon: as :func:`anact_lambda`.

  Returns:
    float32 scalar.

  Example:
    >>> import jax
    >>> from gaf_optax.nn import gaussian_lambda
    >>> round(float(gaussian_lambda(jax.nn.relu)), 4)  # 2 ** 0.5
    1.4142
  """
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}; got {mode!r}.")
  nodes, weights = np.polynomial.hermite_e.hermegauss(96)
  y = jnp.asarray(nodes, jnp.float32)
  w = jnp.asarray(weights / weights.sum(), jnp.float32)
  f, df = jax.jvp(activation, (y,), (jnp.ones_like(y),))
  rho = (jnp.sum(w * f * f) + epsilon) / (1.0 + epsilon)
  rho_prime = jnp.sum(w * df * df) + epsilon
  if mode == "geometric":
    return (rho * rho_prime) ** -0.25
  if mode == "forward":
    return rho ** -0.5
  return rho_prime ** -0.5


class ANAct(nn.Module):
  """An activation scaled by a factor kept from mini-batch statistics.

  Called like ``nn.BatchNorm``: ``ANAct()(x, use_running_average=not train)``.
  Keeps one lambda (``per_channel=False``) or one per channel (the last
  axis) in ``batch_stats/lambda``, and returns ``lambda * activation(x)``
  with no gradient through lambda. The batch's ``rho``, ``rho_prime`` and
  lambda (:func:`anact_lambda`) are sown into the ``intermediates``
  collection (``model.apply(..., mutable=['intermediates', 'batch_stats'])``)
  in training calls; ``init`` sows nothing and stores the initial lambda,
  in either mode.

  Two rules set lambda; both are our design (the module docstring says
  what is the paper's):

  * ``rule="running"`` (default): lambda starts at the activation's value
    for ``N(0, 1)`` pre-activations, ``lambda_0`` (:func:`gaussian_lambda`).
    Each training step moves it toward the batch's lambda in log space,
    ``log lambda += clip((1 - momentum) * log(lambda_batch / lambda),
    -max_step, max_step)``, and clips it to ``[lambda_0 / max_ratio,
    lambda_0 * max_ratio]``. Training and evaluation both use this running
    value (training the one just updated), so lambda changes by at most a
    factor ``exp(max_step)`` per step and stays within ``max_ratio`` of
    ``lambda_0``, whatever a batch says. This breaks the feedback that
    killed networks under the ``batch`` rule: as units die, ``rho`` and
    ``rho'`` fall, lambda rises, the next layers' inputs and every earlier
    layer's gradients grow, more units die, and a layer whose units are all
    dead gets a lambda of hundreds (see
    ``experiments/studies/anact_robustness.py``). It does not keep deep
    nets without normalization stable under SGD at learning rates that the
    plain activation survives only because its gains vanish: with the gain
    in the activation and in its derivative, a step is about ``lambda**2``
    times larger relative to the weights than in a He-initialized net of
    the same function. Hence ``backward_exponent``.

    ``max_ratio`` defaults to 1.05 (our choice; 1.5 before): the batch
    statistics move lambda by at most 5% from ``lambda_0``. In 20-layer
    ReLU MLPs under Adam, units go quiet, ``rho`` and ``rho'`` fall, and
    lambda climbed steadily to a 1.5 bound; on a CIFAR-10 subset 5 of 6
    such runs ended below 20% test accuracy where ReLU trained. With the
    bound at 1.05 none of study 7's 216 runs collapsed. In the settings we
    checked by hand (deep MLPs under SGD and Adam, study 4's deep Swish
    MLP), bounds of 1.02-1.1 and a lambda held at ``lambda_0`` ended within
    a few points of each other, none best everywhere: there the gain that
    matters is ``lambda_0``'s, and the batch statistics are a small
    correction, not a large one. A larger ``max_ratio`` lets them move
    lambda further (study 7: ``experiments/studies/anact_robustness.py``;
    ``docs/methods/anact.md``).
  * ``rule="batch"``: the earlier reconstruction, kept to compare with:
    training uses the batch's lambda, evaluation an exponential moving
    average of it that starts at 1. Unbounded; it can collapse a network
    that the plain activation trains.

  ``backward_exponent`` (default 0.5, our choice; both rules): the backward
  pass multiplies the incoming gradient by ``lambda**backward_exponent *
  f'(x)``, not by the ``lambda * f'(x)`` of the forward function. The rules
  of earlier versions are ``backward_exponent=1``. Half the gain (in log
  terms) in the backward pass keeps a weaker form of the full gain's rescue
  of deep nets that the plain activation cannot train (study 4), with far
  fewer of the collapses that the full gain caused (study 7); set 1 for the
  paper's form of the gain.

  Data parallelism: under ``jax.pmap`` or ``shard_map``, set
  ``axis_name`` to the mapped batch axis (as for ``flax.linen.BatchNorm``).
  The batch statistics are then those of the global batch
  (:func:`anact_lambda`), so every replica computes the same lambda and
  stores the same value, the one a single device computes on the whole
  batch. Without it each replica uses its own shard's statistics and the
  replicas' lambdas drift apart. As in ``flax.linen.BatchNorm``, the
  statistics are not synced while initializing, so ``init`` needs no mapped
  axis (it stores the initial lambda either way).

  Attributes:
    activation: the elementwise activation (default Swish).
    mode: ``"geometric"`` (default), ``"forward"`` or ``"backward"``.
    momentum: running-average decay, in (0, 1).
    per_channel: one lambda per channel of the last axis.
    epsilon: stabilizer in the gains.
    rule: ``"running"`` (default) or ``"batch"`` (see above).
    max_ratio: ``running`` rule: the bound on ``lambda / lambda_0`` and
      ``lambda_0 / lambda``, > 1 (default 1.05).
    max_step: ``running`` rule: the largest change of ``log lambda`` in one
      step, > 0.
    backward_exponent: the power of lambda in the backward pass, in
      ``[0, 1]`` (1: the derivative of ``lambda * f``).
    use_running_average: default for the call argument.
    axis_name: the mapped axis (or tuple of axes) whose devices share the
      batch statistics, or None (default: this device's batch only).
    axis_index_groups: groups of device indices along ``axis_name`` that
      share statistics separately (``jax.lax.pmean``'s; ``pmap`` only), or
      None (all devices).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.nn import NReLU
    >>> act = NReLU()
    >>> x = jax.random.normal(jax.random.key(0), (4096, 8))
    >>> variables = act.init(jax.random.key(1), x, use_running_average=True)
    >>> round(float(variables['batch_stats']['lambda']), 3)  # lambda_0
    1.414
    >>> y, updates = act.apply(variables, x - 1.0, use_running_average=False,
    ...                        mutable=['batch_stats'])
    >>> # Toward this batch's lambda, 3.0, by at most max_step in log:
    >>> round(float(updates['batch_stats']['lambda']), 4)  # 1.4142 * e**0.001
    1.4156
  """

  activation: Callable[[jax.Array], jax.Array] = nn.swish
  mode: str = "geometric"
  momentum: float = 0.99
  per_channel: bool = False
  epsilon: float = 1e-5
  rule: Literal["running", "batch"] = "running"
  max_ratio: float = 1.05
  max_step: float = 0.001
  backward_exponent: float = 0.5
  use_running_average: bool | None = None
  axis_name: AxisName = None
  axis_index_groups: Any = None

  @nn.compact
  def __call__(self, x: jax.Array,
               use_running_average: bool | None = None) -> jax.Array:
    check_config(self)
    use_running_average = nn.merge_param(
        "use_running_average", self.use_running_average, use_running_average)
    shape = (x.shape[-1],) if self.per_channel else ()
    stored = self.variable("batch_stats", "lambda",
                           lambda: initial_lambda(self, shape))
    y, new_lam, stats = forward(self, x, stored.value,
                                train=not use_running_average,
                                sync=not self.is_initializing())
    # Initializing sows and stores nothing: init in training mode returns
    # the same variables as in evaluation mode (as flax.linen.BatchNorm).
    if stats is not None and not self.is_initializing():
      for name, value in stats.items():
        self.sow("intermediates", name, value)
      stored.value = new_lam
    return y


def check_config(cfg) -> None:
  """Raises ValueError for a bad ANAct setting (Linen and NNX share it)."""
  if not callable(cfg.activation):
    raise ValueError(f"activation must be callable; got {cfg.activation!r}.")
  if cfg.mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}; got {cfg.mode!r}.")
  if cfg.rule not in _RULES:
    raise ValueError(f"rule must be one of {_RULES}; got {cfg.rule!r}.")
  if not 0.0 < cfg.momentum < 1.0:
    raise ValueError(f"momentum must be in (0, 1); got {cfg.momentum!r}.")
  if not cfg.epsilon > 0:
    raise ValueError(f"epsilon must be positive; got {cfg.epsilon!r}.")
  if not cfg.max_ratio > 1.0:
    raise ValueError(
        f"max_ratio must be greater than 1; got {cfg.max_ratio!r}.")
  if not cfg.max_step > 0.0:
    raise ValueError(f"max_step must be positive; got {cfg.max_step!r}.")
  exponent = cfg.backward_exponent
  if (isinstance(exponent, bool) or not isinstance(exponent, (int, float))
      or not 0.0 <= exponent <= 1.0):
    raise ValueError("backward_exponent must be a number in [0, 1]; got "
                     f"{exponent!r}.")
  check_axis_name(cfg.axis_name, cfg.axis_index_groups)


def initial_lambda(cfg, shape: tuple[int, ...]) -> jax.Array:
  """The stored lambda before any step: ``lambda_0`` (running) or 1 (batch)."""
  start = (gaussian_lambda(cfg.activation, mode=cfg.mode, epsilon=cfg.epsilon)
           if cfg.rule == "running" else 1.0)
  return jnp.full(shape, start, jnp.float32)


def forward(cfg, x: jax.Array, stored: jax.Array, *, train: bool,
            sync: bool = True):
  """One ANAct call as a pure function (Linen and NNX modules share it).

  Args:
    cfg: the module (its ``activation``, ``mode``, ``rule`` and so on).
    x: pre-activations.
    stored: the stored lambda (``batch_stats/lambda``).
    train: update lambda from this batch (else use ``stored``).
    sync: take the statistics over ``cfg.axis_name`` too (Linen turns it off
      while initializing, where no mapped axis need exist).

  Returns:
    ``(y, new_stored, stats)``: the output, the lambda to store after this
    call, and the batch's ``rho``, ``rho_prime`` and ``lambda``. When not
    training, ``new_stored`` is ``stored`` and ``stats`` is None.
  """
  if not train:
    return _gained(cfg, x, stored), stored, None
  axes = tuple(range(x.ndim - 1)) if cfg.per_channel else None
  lam_batch, rho, rho_prime = anact_lambda(
      cfg.activation, x, mode=cfg.mode, axes=axes, epsilon=cfg.epsilon,
      axis_name=cfg.axis_name if sync else None,
      axis_index_groups=cfg.axis_index_groups if sync else None)
  lam_batch = jax.lax.stop_gradient(lam_batch)
  stats = {"rho": rho, "rho_prime": rho_prime, "lambda": lam_batch}
  if cfg.rule == "running":
    lam0 = gaussian_lambda(cfg.activation, mode=cfg.mode, epsilon=cfg.epsilon)
    move = jnp.clip((1.0 - cfg.momentum) * jnp.log(lam_batch / stored),
                    -cfg.max_step, cfg.max_step)
    lam = jnp.clip(stored * jnp.exp(move), lam0 / cfg.max_ratio,
                   lam0 * cfg.max_ratio)
    new_stored = lam
  else:
    lam = lam_batch
    new_stored = cfg.momentum * stored + (1.0 - cfg.momentum) * lam_batch
  return _gained(cfg, x, lam), new_stored, stats


def _gained(cfg, x: jax.Array, lam: jax.Array) -> jax.Array:
  """``lam * f(x)``, whose gradient carries ``lam ** backward_exponent``."""
  lam = jax.lax.stop_gradient(lam).astype(x.dtype)
  return _scale_backward(cfg.activation(x), lam,
                         float(cfg.backward_exponent))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _scale_backward(fx: jax.Array, lam: jax.Array, exponent: float):
  """``lam * fx`` forward; the cotangent of ``fx`` is ``lam**exponent``
  times the incoming one, so the gain acts in the backward pass only to
  that power (1: the derivative of ``lam * fx``; 0: none of it)."""
  del exponent
  return fx * lam


def _scale_backward_fwd(fx, lam, exponent):
  del exponent
  return fx * lam, lam


def _scale_backward_bwd(exponent, lam, ct):
  gain = lam if exponent == 1.0 else lam ** jnp.asarray(exponent, lam.dtype)
  return ct * gain, jnp.zeros_like(lam)


_scale_backward.defvjp(_scale_backward_fwd, _scale_backward_bwd)


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
