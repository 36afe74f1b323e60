"""The pure pieces of training: state, init, train and eval steps, telemetry.

Everything here is a function of arrays with no device placement and no
host-side effects, so it can be jitted with shardings (the :class:`Trainer`
does), ``vmap``-ped over seeds and ``lax.scan``-ned over steps
(:meth:`Trainer.fit_seeds` does), or called from a user's own loop.

A model is any Flax Linen module, called as ``model.apply(variables, x,
...)``, or any Flax NNX module, called as ``model(x, ...)`` (run through
``nnx.split``/``nnx.merge``, see :mod:`gaf_optax.training._nnx`). The
``...`` are ``train=``, ``deterministic=``, ``amp_factors=`` (Linen) and
``rngs=`` (NNX), each only where the model's ``__call__`` takes it
(:mod:`gaf_optax.training._calls`; ``gaf_optax.models`` take ``train`` and
``amp_factors``). The collections other than ``params`` that ``init`` made
(``batch_stats`` of BatchNorm and ANAct, say) ride along in
:attr:`TrainState.model_state` and are mutable in training; no others are
(Linen's ``init`` leaves ``Module.sow``'s ``intermediates`` out, so a model
that sows runs too, sowing nothing). Randomness (augmentation crops and
flips, dropout masks) comes from ``fold_in(state.rng, state.step)``, so it
depends on ``(seed, step)`` only: the same on 1 or N devices, and after a
resume.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gaf_optax
from gaf_optax import data as data_lib
from gaf_optax.nn import signal_norms
from gaf_optax.training import _calls
from gaf_optax.training import _nnx

__all__ = [
    "Preprocess",
    "Telemetry",
    "TrainState",
    "anact_lambda_names",
    "init_state",
    "layer_names",
    "make_eval_step",
    "make_train_step",
    "softmax_cross_entropy",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; a pytree of arrays (checkpointed whole).

  Attributes:
    step: optimizer steps taken (int32).
    rng: the run's raw PRNG key (``jax.random.PRNGKey(seed)``); step ``t``
      draws from ``fold_in(rng, t)``.
    params: the model's ``params`` collection.
    model_state: the other collections (``batch_stats`` of BatchNorm and
      ANAct), empty for stateless models.
    opt_state: the optax state.
    sums: this epoch's training loss, correct-prediction and example sums
      (of the steps whose loss and gradient were finite).
    health: non-finite steps, int32 scalars: ``streak`` (consecutive ones
      up to now), ``first`` (the step number, as the records count steps, at
      which the current streak began; -1 when ``streak`` is 0) and
      ``total``. The :class:`Trainer` reads it to stop a diverged run.
  """

  step: jax.Array
  rng: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  sums: Any
  health: Any


def zero_sums() -> dict[str, jax.Array]:
  return {"loss": jnp.zeros((), jnp.float32),
          "correct": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


def zero_health() -> dict[str, jax.Array]:
  return {"streak": jnp.zeros((), jnp.int32),
          "first": jnp.full((), -1, jnp.int32),
          "total": jnp.zeros((), jnp.int32)}


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy with integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How a uint8 batch becomes the model's input (on the device).

  Attributes:
    mean: per-channel mean in [0, 1] units (``Dataset.mean``).
    std: per-channel standard deviation (``Dataset.std``).
    augment: random crop and flip in training, the CIFAR recipe
      (:func:`gaf_optax.data.preprocess`); off by default, since flipping
      or cropping is wrong for some data (digits, text-like images);
      evaluation never augments.
    crop_padding: padding of the random crop (0: no crop).
    flip: random horizontal flips.
    dtype: the compute dtype of the images (bf16 for half precision).
  """

  mean: Any
  std: Any
  augment: bool = False
  crop_padding: int = 4
  flip: bool = True
  dtype: Any = jnp.float32

  @classmethod
  def for_dataset(cls, dataset, **kwargs) -> "Preprocess":
    return cls(mean=np.asarray(dataset.mean, np.float32),
               std=np.asarray(dataset.std, np.float32), **kwargs)

  def __call__(self, images, key, *, train: bool) -> jax.Array:
    x = data_lib.preprocess(
        images, key, mean=self.mean, std=self.std,
        train=train and self.augment, crop_padding=self.crop_padding,
        flip=self.flip)
    return x.astype(self.dtype)


_GAF_INPUTS = ("gradient", "momentum")


@dataclasses.dataclass(frozen=True)
class Telemetry:
  """Opt-in per-step diagnostics computed inside the train step.

  The step always returns ``loss`` and ``grad_norm`` (global L2 norm of the
  gradient). With a ``Telemetry`` it also returns, per step:

  - ``layer_grad_norm``, ``layer_grad_mean_abs``, ``layer_grad_var``:
    float32[L], the L2 norm, mean ``|g|`` and variance of the entries of each
    layer's weight gradient (the ``ndim > 1`` leaves of each top-level
    module, in :func:`layer_names` order), as the optimizer receives it;
  - ``gaf_saturated`` (scalar) and ``layer_gaf_saturated`` (float32[L]), when
    ``gaf_beta`` is set: the share of components ``u`` of GAF's input with
    ``|beta * u| > 1``, where arctan's slope has fallen below half of its
    value at 0 (``gaf_input``: ``"gradient"`` for ``position="gradient"``
    and ``adam_gaf``, ``"momentum"`` for SGD_atanMom, whose GAF input is the
    momentum buffer the step has just written; with ``nesterov=True`` GAF
    sees ``g + mu * buffer`` instead, and the share is still the buffer's);
  - ``amp_factors``: float32[P], the factors the forward pass used, when the
    chain has an amplification controller;
  - ``signal_norms``: float32[P], the backpropagated signal norm at each of
    the model's amplification points (:func:`gaf_optax.nn.signal_norms`),
    when ``signals`` is true (the model must have points; without a
    controller they are identity points);
  - ``anact_lambda``: float32[K], every ANAct layer's running lambda after
    the step (:func:`anact_lambda_names` order), when the model has any.

  Attributes:
    layers: compute the per-layer gradient statistics.
    gaf_beta: GAF's ``beta`` (None: no saturation share).
    gaf_input: ``"gradient"`` or ``"momentum"`` (see above).
    signals: compute the amplification points' signal norms.
    every: the :class:`Trainer` keeps (and writes to ``telemetry.jsonl`` and
      TensorBoard) every ``every``-th step's values; the step computes them
      at every step.
  """

  layers: bool = True
  gaf_beta: float | None = None
  gaf_input: Literal["gradient", "momentum"] = "gradient"
  signals: bool = False
  every: int = 1

  def __post_init__(self):
    if self.gaf_input not in _GAF_INPUTS:
      raise ValueError(f"Telemetry gaf_input must be one of {_GAF_INPUTS}; "
                       f"got {self.gaf_input!r}.")
    if self.gaf_beta is not None and not float(self.gaf_beta) > 0:
      raise ValueError(
          f"Telemetry gaf_beta must be a positive float or None; got "
          f"{self.gaf_beta!r}.")
    if not isinstance(self.every, int) or self.every < 1:
      raise ValueError(
          f"Telemetry every must be an int >= 1; got {self.every!r}.")


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_names(params: Mapping[str, Any]) -> list[str]:
  """Top-level modules with weights (``ndim > 1`` leaves), natural order.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.training import layer_names
    >>> layer_names({"fc10": {"kernel": np.ones((2, 2))}, "bn": {"scale":
    ...     np.ones(2)}, "fc2": {"kernel": np.ones((2, 2))}})
    ['fc2', 'fc10']
  """
  return sorted((name for name, sub in params.items()
                 if any(np.ndim(x) > 1 for x in jax.tree.leaves(sub))),
                key=_natural_key)


def _lambda_paths(model_state) -> list[tuple[str, Any]]:
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(model_state):
    keys = [getattr(k, "key", str(k)) for k in path]
    # "lambda": Linen's ANAct (and NNX models through the bridge); "lam":
    # gaf_optax.nnx.ANAct (an attribute cannot be named lambda).
    if keys and keys[-1] in ("lambda", "lam"):
      out.append(("/".join(str(k) for k in keys[:-1]), leaf))
  return sorted(out, key=lambda p: _natural_key(p[0]))


def anact_lambda_names(model_state) -> list[str]:
  """The ANAct layers of a model state, in ``anact_lambda`` order."""
  return [name for name, _ in _lambda_paths(model_state)]


def _find(tree, cls) -> list:
  return [s for s in jax.tree.leaves(tree, is_leaf=lambda s: isinstance(
      s, cls)) if isinstance(s, cls)]


def _has_controller(opt_state) -> bool:
  return bool(_find(opt_state, gaf_optax.AmplificationState))


def _telemetry(telemetry: Telemetry, grads, new_opt_state, new_model_state):
  out = {}
  names = layer_names(grads)
  weights = {n: [g.astype(jnp.float32) for g in jax.tree.leaves(grads[n])
                 if g.ndim > 1] for n in names}
  if telemetry.layers and names:
    # Sums over the layer's leaves (no concatenated copy of the gradient);
    # the variance in two passes, around the layer's mean.
    norm, mean_abs, var = [], [], []
    for n in names:
      size = sum(g.size for g in weights[n])
      mean = sum(jnp.sum(g) for g in weights[n]) / size
      norm.append(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in weights[n])))
      mean_abs.append(sum(jnp.sum(jnp.abs(g)) for g in weights[n]) / size)
      var.append(sum(jnp.sum(jnp.square(g - mean)) for g in weights[n]) /
                 size)
    out.update(layer_grad_norm=jnp.stack(norm),
               layer_grad_mean_abs=jnp.stack(mean_abs),
               layer_grad_var=jnp.stack(var))
  if telemetry.gaf_beta is not None:
    if telemetry.gaf_input == "momentum":
      traces = _find(new_opt_state, optax.TraceState)
      if len(traces) != 1:
        raise ValueError(
            "Telemetry(gaf_input='momentum') needs an optimizer with exactly "
            f"one momentum buffer (optax.TraceState); found {len(traces)}. "
            "Use gaf_input='gradient' for position='gradient' and adam_gaf.")
      source = traces[0].trace
    else:
      source = grads
    beta = jnp.float32(telemetry.gaf_beta)
    hits = jax.tree.map(
        lambda u: jnp.sum(jnp.abs(beta * u.astype(jnp.float32)) > 1.0),
        source)
    sizes = jax.tree.map(lambda u: u.size, source)
    total = sum(jax.tree.leaves(hits))
    out["gaf_saturated"] = total / max(sum(jax.tree.leaves(sizes)), 1)
    if names:
      out["layer_gaf_saturated"] = jnp.stack([
          sum(jax.tree.leaves(hits[n])) / max(sum(jax.tree.leaves(sizes[n])),
                                              1) for n in names])
  lambdas = _lambda_paths(new_model_state)
  if lambdas:
    out["anact_lambda"] = jnp.stack(
        [jnp.asarray(v, jnp.float32).reshape(()) for _, v in lambdas])
  return out


def _prepared(model) -> tuple[Any, _calls.CallSignature]:
  """``model`` with Linen's ``init``/``apply``, and what its call takes.

  A Linen module's ``__call__`` is read here, once per step built (not per
  trace). Anything else with ``init``/``apply`` (an NNX module's
  :class:`~gaf_optax.training.NNXFunctional`, which gives the module's own
  ``__call__`` what that takes) gets ``train`` and ``amp_factors``.
  """
  model = _nnx.functional(model)
  if isinstance(model, nn.Module):
    return model, _calls.call_signature(model)
  return model, _calls.CallSignature(train=True, amp_factors=True)


def _model_name(model) -> str:
  return getattr(model, "module_type", type(model)).__name__


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               seed: int | jax.Array, input_shape) -> TrainState:
  """The initial state of a run (pure: jit or vmap it over seeds).

  Args:
    model: the Flax model.
    tx: the optimizer.
    seed: an int (or int32 scalar array) seeding the run.
    input_shape: one example's shape, e.g. ``Dataset.image_shape``.

  Returns:
    A :class:`TrainState` at step 0. The parameters are drawn from
    ``fold_in(PRNGKey(seed), 2**31 - 1)``, apart from the keys that steps
    use (``init`` runs in evaluation mode; a ``dropout`` stream is there
    for a model that draws from it even so). ``model_state`` holds the
    other collections ``init`` made.
  """
  model, sig = _prepared(model)
  rng = jax.random.PRNGKey(seed)
  key = jax.random.fold_in(rng, -1 % 2**31)
  variables = model.init({"params": key,
                          "dropout": jax.random.fold_in(key, 1)},
                         jnp.zeros((1, *input_shape), jnp.float32),
                         **sig.kwargs(train=False))
  variables = dict(flax.core.unfreeze(variables))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), rng=rng, params=params,
                    model_state=variables, opt_state=tx.init(params),
                    sums=zero_sums(), health=zero_health())


def _apply(model, sig, params, model_state, x, *, train, factors=None,
           rng=None):
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else {}
  kwargs = sig.kwargs(train=train, amp_factors=factors)
  if train and model_state:
    logits, new_state = model.apply(variables, x, mutable=list(model_state),
                                    rngs=rngs, **kwargs)
    return logits, dict(flax.core.unfreeze(new_state))
  return model.apply(variables, x, rngs=rngs, **kwargs), model_state


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    preprocess: Preprocess,
    *,
    amplification_points: bool = False,
    telemetry: Telemetry | None = None,
    loss_fn: LossFn = softmax_cross_entropy,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """A pure train step ``(state, batch) -> (state, metrics)``.

  Model apply, loss, gradients, the optax update and the epoch sums, in one
  function of arrays. With ``amplification_points``, the chain's
  :func:`gaf_optax.gradient_amplification` controller (points mode) sets the
  model's ``amp_factors`` and gets ``layer_stats=signal_norms(...)`` from
  the same backward pass (the gradient with respect to the factors).

  A step whose loss or gradient norm is not finite is counted in
  ``state.health`` and leaves ``model_state`` and ``sums`` unchanged; what
  it does to ``params`` and ``opt_state`` is ``tx``'s business (wrap it in
  ``optax.apply_if_finite`` to skip such updates, as
  ``Trainer(skip_nonfinite_steps=N)`` does).

  Args:
    model: the Flax model.
    tx: any optax transformation (``GradientTransformationExtraArgs`` too).
    preprocess: the on-device image pipeline.
    amplification_points: ``tx`` holds a controller over the model's
      amplification points (not the weight-gradient variant).
    telemetry: what to measure per step (None: ``loss`` and ``grad_norm``).
    loss_fn: per-example loss of ``(float32 logits, int labels)``.

  Returns:
    The step. ``batch`` holds ``image`` (uint8 ``[B, H, W, C]``) and
    ``label`` (int ``[B]``); ``metrics`` the step's ``loss``,
    ``grad_norm`` and the telemetry's values.
  """
  model, sig = _prepared(model)
  num_points = getattr(model, "num_amplification_points", 0)
  signals = telemetry is not None and telemetry.signals
  if (amplification_points or signals) and not (num_points >= 1 and
                                                sig.amp_factors):
    if amplification_points:
      what = "amplification_points=True"
      hint = (" Without points, amplify weight gradients instead: "
              "gradient_amplification(..., labels=...) with "
              "amplification_points=False.")
    else:
      what, hint = "Telemetry(signals=True)", ""
    raise ValueError(
        f"{what} needs a model with amplification points; "
        f"{_model_name(model)} has none (a Linen model has them when it "
        "has num_amplification_points >= 1 and its __call__ takes "
        "amp_factors, as gaf_optax.models do; an NNX model when it holds "
        f"gaf_optax.nnx.AmplificationPoint s).{hint}")

  def step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    images = preprocess(batch["image"], key, train=True)
    labels = batch["label"]
    if amplification_points:
      factors = gaf_optax.amplification_factors(state.opt_state)
    elif signals:
      factors = jnp.ones((num_points,), jnp.float32)  # identity points
    else:
      factors = None

    def objective(params, factors):
      logits, model_state = _apply(model, sig, params, state.model_state,
                                   images, train=True, factors=factors,
                                   rng=jax.random.fold_in(key, 1))
      loss = jnp.mean(loss_fn(logits, labels))
      return loss, (logits, model_state)

    if factors is not None:
      (loss, (logits, model_state)), (grads, factor_grads) = (
          jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
              state.params, factors))
      norms = signal_norms(factor_grads)
    else:
      (loss, (logits, model_state)), grads = jax.value_and_grad(
          objective, has_aux=True)(state.params, None)
      norms = None
    extra = {"layer_stats": norms} if amplification_points else {}
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   **extra)
    params = optax.apply_updates(state.params, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree.leaves(grads)))
    # A step with a non-finite loss or gradient leaves the model state
    # (BatchNorm/ANAct statistics) and the epoch sums as they were, so a run
    # that rides it out (optax.apply_if_finite keeps params and opt_state)
    # is not poisoned by its forward pass; `health` counts it.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    model_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                               model_state, state.model_state)
    n = jnp.float32(labels.shape[0])
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {"loss": state.sums["loss"] + jnp.where(finite, loss * n, 0.0),
            "correct": state.sums["correct"] + jnp.where(finite, correct, 0.0),
            "count": state.sums["count"] + jnp.where(finite, n, 0.0)}
    h = state.health
    health = {
        "streak": jnp.where(finite, 0, h["streak"] + 1),
        "first": jnp.where(finite, -1, jnp.where(h["streak"] == 0,
                                                 state.step + 1, h["first"])),
        "total": h["total"] + jnp.where(finite, 0, 1)}
    metrics = {"loss": loss, "grad_norm": grad_norm}
    if telemetry is not None:
      metrics.update(_telemetry(telemetry, grads, opt_state, model_state))
      if _has_controller(state.opt_state):
        metrics["amp_factors"] = gaf_optax.amplification_factors(
            state.opt_state)
      if signals:
        metrics["signal_norms"] = norms
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=model_state, opt_state=opt_state,
                              sums=sums, health=health)
    return new_state, metrics

  return step


def make_eval_step(
    model: nn.Module, preprocess: Preprocess, *,
    loss_fn: LossFn = softmax_cross_entropy,
) -> Callable[[TrainState, dict], dict]:
  """A pure eval step ``(state, batch) -> {loss, correct, count}`` sums.

  ``batch`` may carry a boolean ``mask`` (padded last batch); masked rows
  count nowhere.
  """

  model, sig = _prepared(model)

  def step(state: TrainState, batch):
    images = preprocess(batch["image"], None, train=False)
    logits, _ = _apply(model, sig, state.params, state.model_state, images,
                       train=False)
    labels = batch["label"]
    mask = batch.get("mask")
    mask = (jnp.ones(labels.shape, jnp.float32) if mask is None
            else mask.astype(jnp.float32))
    loss = loss_fn(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}

  return step
