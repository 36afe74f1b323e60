"""Gradient amplification: the layer-selecting controller.

Basodi, Ji, Zhang, Pan, "Gradient amplification: An efficient way to train
deep neural networks", Big Data Mining and Analytics 3(3), 2020,
https://arxiv.org/abs/2006.10560; and Basodi, Pusuluri, Xiao, Pan,
"Intelligent gradient amplification for deep neural networks",
https://arxiv.org/abs/2305.18445 (no official code found for either).

The papers amplify the gradient flowing backward through chosen layers during
chosen epochs. The model side is :func:`gaf_optax.nn.amplify` (amplification
points); this module decides which points are amplified and when.

What is the papers' and what is ours:

- Papers (2020): a random ``ratio`` of candidate layers (e.g. the BatchNorm
  layers) is amplified by a factor during chosen epochs. Here:
  ``selection="random"``, drawn from ``seed`` and the epoch.
- Papers (2023): layers are chosen from the fluctuation of their gradients,
  with two measures and two thresholds, amplified only in certain epochs. The
  formulas could not be retrieved. OUR DESIGN: per step ``t`` and point ``l``
  the statistic ``r_lt`` is the norm of the backpropagated signal at the
  point (or, in the weight-gradient variant, of the layer's gradient);
  over an epoch, ``selection="cv"`` measures ``std(r) / mean(r)`` and
  ``"delta"`` measures ``mean |r_t - r_(t-1)| / mean(r)``; a layer is
  selected when its measure exceeds the ``"mean"`` or ``"median"`` of the
  measures across layers; selections are made at epoch boundaries, once or
  every epoch. A layer without a measure (a signal that was zero all epoch;
  ``"delta"`` with one step per epoch) is never selected and is left out of
  the threshold, so it does not stop the other layers' selection.
- The weight-gradient variant (``labels=...``) scales the updates of the
  selected layers' own parameters. It is OURS, for models without
  amplification points: it is not the papers' mechanism, and it does not
  compound through depth the way amplified backward signals do.

Caution: with BatchNorm, amplification largely acts as a larger learning rate
for the layers below, and Adam cancels constant gradient scales. A fair
comparison includes SGD at the matching larger learning rate.
"""


from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "AMPLIFICATION_STATIC_ARGS",
    "AmplificationState",
    "amplification_factors",
    "gradient_amplification",
]

Selection = Literal["random", "cv", "delta"]
Threshold = Literal["mean", "median"]
Reselect = Literal["epoch", "once"]
_SELECTIONS = ("random", "cv", "delta")
_THRESHOLDS = ("mean", "median")
_RESELECTS = ("epoch", "once")
# Arguments that set shapes or Python structure: under
# `optax.inject_hyperparams` they must be listed in `static_args`.
AMPLIFICATION_STATIC_ARGS = ("num_layers", "steps_per_epoch", "selection",
                             "threshold", "reselect", "labels")


class AmplificationState(NamedTuple):
  """State of :func:`gradient_amplification`: O(num_layers) arrays.

  Attributes:
    count: steps taken (int32).
    factors: float32[num_layers], the factors for the next forward pass.
    selected: bool[num_layers], the current selection (active or not).
    selected_once: bool, whether a selection has been made (for
      ``reselect="once"``).
    num: int32, steps accumulated in the current epoch.
    mean: float32[num_layers], running mean of the statistic this epoch.
    m2: float32[num_layers], running sum of squared deviations (Welford).
    abs_delta: float32[num_layers], sum of ``|r_t - r_(t-1)|`` this epoch.
    previous: float32[num_layers], the previous step's statistic.
  """

  count: jax.Array
  factors: jax.Array
  selected: jax.Array
  selected_once: jax.Array
  num: jax.Array
  mean: jax.Array
  m2: jax.Array
  abs_delta: jax.Array
  previous: jax.Array


def _positive_int(value, name):
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < 1):
    raise ValueError(f"{name} must be a positive int; got {value!r}.")
  return int(value)


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(
      value, bool)


def _random_selection(key, epoch, num_layers, num_selected):
  key = jax.random.fold_in(key, epoch)
  order = jnp.argsort(jax.random.uniform(key, (num_layers,)))
  ranks = jnp.zeros(num_layers, jnp.int32).at[order].set(
      jnp.arange(num_layers, dtype=jnp.int32))
  return ranks < num_selected


def _measure(state, selection):
  """The epoch's fluctuation measure per layer (NaN where undefined)."""
  num = state.num.astype(jnp.float32)
  if selection == "cv":
    spread = jnp.sqrt(jnp.maximum(state.m2 / num, 0.0))
  else:  # "delta"
    spread = jnp.where(num > 1, state.abs_delta / jnp.maximum(num - 1, 1.0),
                       jnp.nan)
  return spread / state.mean


def _threshold_selection(measure, threshold):
  # Layers without a measure (NaN) are left out of the level and never
  # selected; a NaN in jnp.mean/median would make every comparison false.
  if threshold == "mean":
    level = jnp.nanmean(measure)
  else:
    level = jnp.nanmedian(measure)
  return measure > level


def _label_of(label, num_layers):
  if (isinstance(label, bool) or not isinstance(label, (int, np.integer))
      or not -1 <= label < num_layers):
    raise ValueError(
        "labels must map every leaf to an int layer id in [0, num_layers) or "
        f"-1 (never amplified); got {label!r} with num_layers={num_layers}.")
  return int(label)


def gradient_amplification(
    num_layers: int,
    steps_per_epoch: int,
    *,
    factor: optax.ScalarOrSchedule = 2.0,
    start_epoch: int = 1,
    end_epoch: int | None = None,
    selection: Selection = "cv",
    threshold: Threshold = "mean",
    ratio: float = 0.25,
    reselect: Reselect = "epoch",
    seed: int = 0,
    key: jax.Array | None = None,
    labels: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Selects layers to amplify at epoch boundaries (Basodi et al.).

  Use it first in a chain; it passes updates through unchanged (unless
  ``labels`` is given) and keeps the factors for the model's next forward
  pass in its state, read with :func:`amplification_factors`::

    tx = optax.chain(
        gradient_amplification(model.num_amplification_points, steps),
        optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    factors = amplification_factors(opt_state)      # float32[num_points]
    grads, factor_grads = jax.grad(loss, argnums=(0, 1))(params, factors)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   layer_stats=signal_norms(factor_grads))

  At the end of each epoch the layers are (re)selected: ``"random"`` draws a
  ``ratio`` of the layers from ``seed`` and the epoch (the 2020 method);
  ``"cv"`` and ``"delta"`` select the layers whose fluctuation measure over
  the epoch exceeds the ``threshold`` across layers (our design for the 2023
  method; see the module docstring). Selected layers get ``factor`` during
  epochs in ``[start_epoch, end_epoch)`` and 1 otherwise. Everything in
  ``update`` is jittable; factors change by value, never by shape, so a
  jitted train step compiles once.

  Under ``optax.inject_hyperparams``, the structural arguments
  (``num_layers``, ``steps_per_epoch``, ``selection``, ``threshold``,
  ``reselect`` and a callable ``labels``, listed in
  ``gaf_optax.AMPLIFICATION_STATIC_ARGS``) must be static:
  ``inject_hyperparams(gradient_amplification,
  static_args=AMPLIFICATION_STATIC_ARGS)``. ``factor``, ``start_epoch``,
  ``end_epoch``, ``ratio``, ``seed`` and ``key`` can be injected.

  Args:
    num_layers: number of candidate layers (amplification points).
    steps_per_epoch: optimizer steps per epoch.
    factor: the amplification factor ``a > 0`` (a float or a schedule of the
      step count).
    start_epoch: first amplified epoch (0-based). Measure-based selection
      needs one epoch of statistics, so it requires ``start_epoch >= 1``.
    end_epoch: first epoch no longer amplified (None: never stops).
    selection: ``"random"``, ``"cv"`` or ``"delta"``.
    threshold: ``"mean"`` or ``"median"`` of the measures across layers
      (measure-based selection only).
    ratio: fraction in (0, 1] of the layers drawn by ``"random"`` (at least
      one layer).
    reselect: ``"epoch"`` (select again at every epoch boundary) or
      ``"once"`` (keep the first selection).
    seed: seed of the random selection, used when ``key`` is None.
    key: the random selection's key, a typed key (``jax.random.key``) as
      optax's noise transformations take; when given, ``seed`` must be left
      at 0.
    labels: None for amplification points (then ``update`` needs
      ``layer_stats``), or, for the weight-gradient variant, a pytree like
      the params (or a function of the params returning one) mapping each
      leaf to a layer id in ``[0, num_layers)`` or -1. The updates of the
      selected layers are then scaled by the factor, and the statistic is
      each layer's gradient norm unless ``layer_stats`` is given. This
      variant is our design, not the papers' (it does not compound).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``layer_stats``: float32[num_layers] non-negative signal norms of the
    step (see :func:`gaf_optax.nn.signal_norms`).

  Example:
    >>> import jax.numpy as jnp
    >>> import gaf_optax
    >>> tx = gaf_optax.gradient_amplification(
    ...     3, steps_per_epoch=2, selection="cv", start_epoch=1)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> g = {"w": jnp.ones(2)}
    >>> for r in ([1., 1., 1.], [1., 3., 1.]):  # layer 1 fluctuates
    ...   g, state = tx.update(g, state, layer_stats=jnp.array(r))
    >>> gaf_optax.amplification_factors(state).tolist()
    [1.0, 2.0, 1.0]

  References:
    Basodi et al., 2020, https://arxiv.org/abs/2006.10560;
    Basodi et al., 2023, https://arxiv.org/abs/2305.18445
  """
  num_layers = _positive_int(num_layers, "num_layers")
  steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
  if selection not in _SELECTIONS:
    raise ValueError(
        f"selection must be one of {_SELECTIONS}; got {selection!r}.")
  if threshold not in _THRESHOLDS:
    raise ValueError(
        f"threshold must be one of {_THRESHOLDS}; got {threshold!r}.")
  if reselect not in _RESELECTS:
    raise ValueError(f"reselect must be one of {_RESELECTS}; got {reselect!r}.")
  # Numbers are checked here; arrays (e.g. from optax.inject_hyperparams)
  # are taken as they are.
  if _is_number(start_epoch) and (
      not float(start_epoch).is_integer() or start_epoch < 0):
    raise ValueError(
        f"start_epoch must be a non-negative int; got {start_epoch!r}.")
  if end_epoch is not None and _is_number(end_epoch) and (
      not float(end_epoch).is_integer()
      or (_is_number(start_epoch) and end_epoch <= start_epoch)):
    raise ValueError(
        "end_epoch must be None or an int greater than start_epoch "
        f"({start_epoch}); got {end_epoch!r}.")
  if selection != "random" and _is_number(start_epoch) and start_epoch < 1:
    raise ValueError(
        f"selection={selection!r} needs one epoch of statistics, so "
        f"start_epoch must be >= 1; got {start_epoch}.")
  if _is_number(ratio) and not 0 < ratio <= 1:
    raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.")
  if _is_number(factor) and not factor > 0:
    raise ValueError(f"factor must be > 0; got {factor!r}.")
  if _is_number(seed) and not float(seed).is_integer():
    raise ValueError(f"seed must be an int; got {seed!r}.")
  if key is not None:
    if not (hasattr(key, "dtype") and jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key) and np.ndim(key) == 0):
      raise ValueError(
          "key must be a scalar typed PRNG key (jax.random.key(...)); got "
          f"{key!r}.")
    # (Under inject_hyperparams seed arrives as an array: not checked.)
    if _is_number(seed) and seed != 0:
      raise ValueError(f"give key or seed, not both; got seed={seed!r} and a "
                       "key.")
  if not (_is_number(factor) or callable(factor) or hasattr(factor, "dtype")):
    raise ValueError(
        f"factor must be a number, an array or a schedule; got {factor!r}.")

  def base_key():
    return jax.random.key(seed) if key is None else key

  def num_random():
    return jnp.maximum(1, jnp.round(ratio * num_layers)).astype(jnp.int32)

  def factors_for(count, selected):
    epoch = count // steps_per_epoch
    active = epoch >= start_epoch
    if end_epoch is not None:
      active &= epoch < end_epoch
    a = factor(count) if callable(factor) else factor
    a = jnp.asarray(a, jnp.float32)
    return jnp.where(active & selected, a, jnp.ones((), jnp.float32))

  def init_fn(params):
    del params
    # A new array per field: a state whose leaves share a buffer cannot be
    # donated to a jitted step.
    zeros = lambda: jnp.zeros(num_layers, jnp.float32)
    count = jnp.zeros((), jnp.int32)
    if selection == "random":
      selected = _random_selection(base_key(), 0, num_layers, num_random())
    else:
      selected = jnp.zeros(num_layers, bool)
    return AmplificationState(
        count=count,
        factors=factors_for(count, selected),
        selected=selected,
        selected_once=jnp.asarray(selection == "random"),
        num=jnp.zeros((), jnp.int32),
        mean=zeros(), m2=zeros(), abs_delta=zeros(), previous=zeros())

  def layer_norms(updates, label_tree):
    sq = jnp.zeros(num_layers, jnp.float32)
    for leaf, label in zip(jax.tree.leaves(updates),
                           jax.tree.leaves(label_tree), strict=True):
      if label >= 0:
        sq = sq.at[label].add(jnp.sum(jnp.square(leaf.astype(jnp.float32))))
    return jnp.sqrt(sq)

  def update_fn(updates, state, params=None, *, layer_stats=None, **extra):
    del extra
    label_tree = None
    if labels is not None:
      label_tree = labels(params if params is not None else updates) if (
          callable(labels)) else labels
      try:
        label_tree = jax.tree.map(lambda _, label: _label_of(label, num_layers),
                                  updates, label_tree)
      except ValueError as e:
        if "labels must" in str(e):
          raise
        raise ValueError(
            "labels must be a pytree with the structure of the updates; "
            f"got {jax.tree.structure(label_tree)} for updates "
            f"{jax.tree.structure(updates)}.") from e
    if layer_stats is None:
      if label_tree is None:
        raise ValueError(
            "gradient_amplification needs layer_stats=float32"
            f"[{num_layers}] (the per-point signal norms) in update, or "
            "labels= for the weight-gradient variant.")
      stats = layer_norms(updates, label_tree)
    else:
      stats = jnp.asarray(layer_stats)
      if stats.shape != (num_layers,):
        raise ValueError(
            f"layer_stats must have shape ({num_layers},) (one norm per "
            f"layer); got {stats.shape}.")
      stats = stats.astype(jnp.float32)

    if label_tree is not None:
      updates = jax.tree.map(
          lambda u, label: u if label < 0 else
          (u * state.factors[label]).astype(u.dtype), updates, label_tree)

    # Welford accumulation of this epoch's statistics.
    num = state.num + 1
    delta = stats - state.mean
    mean = state.mean + delta / num.astype(jnp.float32)
    m2 = state.m2 + delta * (stats - mean)
    abs_delta = state.abs_delta + jnp.where(
        state.num > 0, jnp.abs(stats - state.previous), 0.0)
    acc = state._replace(num=num, mean=mean, m2=m2, abs_delta=abs_delta)

    count = state.count + 1
    boundary = count % steps_per_epoch == 0
    if selection == "random":
      candidate = _random_selection(
          base_key(), count // steps_per_epoch, num_layers, num_random())
    else:
      candidate = _threshold_selection(_measure(acc, selection), threshold)
    reselect_now = boundary
    if reselect == "once":
      reselect_now &= ~state.selected_once
    selected = jnp.where(reselect_now, candidate, state.selected)
    zeros = jnp.zeros_like(mean)
    new_state = AmplificationState(
        count=count,
        factors=factors_for(count, selected),
        selected=selected,
        selected_once=state.selected_once | reselect_now,
        num=jnp.where(boundary, 0, num),
        mean=jnp.where(boundary, zeros, mean),
        m2=jnp.where(boundary, zeros, m2),
        abs_delta=jnp.where(boundary, zeros, abs_delta),
        previous=stats)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _in_amplification_state(path, value) -> bool:
  del value
  return bool(path) and getattr(path[-1], "tuple_name",
                                None) == AmplificationState.__name__


def amplification_factors(state: Any) -> jax.Array:
  """The factors for the next forward pass, float32[num_layers].

  Args:
    state: an :class:`AmplificationState`, or an optimizer state that holds
      exactly one: the state of an ``optax.chain``, of
      ``optax.inject_hyperparams``, or ``flax.nnx.Optimizer.opt_state``
      (whose arrays are wrapped in variables).

  Returns:
    float32[num_layers]: ``factor`` for the selected layers inside the epoch
    window, 1 elsewhere.

  Raises:
    ValueError: ``state`` holds no :class:`AmplificationState`, or several.
  """
  try:
    found = optax.tree.get(state, "factors",
                           filtering=_in_amplification_state)
    count = 0 if found is None else 1
  except KeyError:
    found, count = None, 2
  if count != 1:
    raise ValueError(
        "amplification_factors needs a state holding exactly one "
        f"AmplificationState; found {'none' if count == 0 else 'several'}.")
  # nnx wraps the array in a variable: a pytree around it (flax >= 0.11),
  # or a leaf with a `value` (older flax).
  (factors,) = jax.tree.leaves(found)
  if not isinstance(factors, jax.Array) and hasattr(factors, "value"):
    factors = factors.value
  return factors
