"""Models, activations and optimizers by name, from a config.

One explicit dict per kind (no registration by import side effect). The
config fields are documented in ``experiments/configs/default.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import gaf_optax
from gaf_optax import models as models_lib
from gaf_optax import nn as gnn
from gaf_optax.training._step import Telemetry

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "RESUMABLE_FIELDS",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "build_telemetry",
    "get_activation",
    "layer_labels",
    "step_defining_fields",
    "validate_config",
]

ACTIVATIONS: dict[str, Any] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "swish": nn.swish,
    "gelu": nn.gelu,
    "gaaf_relu": gnn.gaaf_relu,
    "gaaf_tanh": gnn.gaaf_tanh,
    "gaaf_sigmoid": gnn.gaaf_sigmoid,
    "nswish": gnn.NSwish,
    "nrelu": gnn.NReLU,
    "ngelu": gnn.NGELU,
    "ntanh": gnn.NTanh,
}

_GAAF = {"gaaf_relu", "gaaf_tanh", "gaaf_sigmoid"}


def _unknown(kind: str, name: Any, known) -> ValueError:
  return ValueError(f"Unknown {kind} {name!r}; known: {', '.join(sorted(known))}.")


def get_activation(name: str, amplitude: float | None = None):
  """An activation (function or module class) by name.

  Args:
    name: a key of :data:`ACTIVATIONS`.
    amplitude: GAAF's amplitude for the ``gaaf_*`` names (None: default 1).

  Returns:
    What the models' ``act=`` accepts.
  """
  if name not in ACTIVATIONS:
    raise _unknown("activation", name, ACTIVATIONS)
  act = ACTIVATIONS[name]
  if amplitude is not None:
    if name not in _GAAF:
      raise ValueError(
          f"gaaf_amplitude applies to {sorted(_GAAF)} only; got act={name!r}.")
    act = functools.partial(act, amplitude=amplitude)
  return act


def build_model(config, num_classes: int) -> nn.Module:
  """The config's model with its activation and dtype."""
  kwargs = dict(config.model_kwargs or {})
  kwargs["num_classes"] = num_classes
  kwargs["act"] = get_activation(config.act, config.gaaf_amplitude)
  if config.half_precision:
    kwargs["dtype"] = jnp.bfloat16
  return models_lib.get(config.model, **kwargs)


def build_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Learning-rate schedule: "cosine" (with warm-up), "step" or "constant"."""
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  lr = config.learning_rate
  if config.schedule == "cosine":
    if warmup:
      return optax.warmup_cosine_decay_schedule(
          0.0, lr, warmup, max(total, warmup + 1), end_value=0.0)
    return optax.cosine_decay_schedule(lr, max(total, 1))
  if config.schedule == "step":
    boundaries = {
        int(e * steps_per_epoch): config.decay_factor
        for e in config.decay_epochs}
    sched = optax.piecewise_constant_schedule(lr, boundaries)
    if warmup:
      sched = optax.join_schedules(
          [optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  raise _unknown("schedule", config.schedule, ("cosine", "step", "constant"))


def _decay_mask(params):
  """True for kernels (ndim > 1): excludes BN scales/offsets and biases."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _sgd(cfg, lr, wd):
  return optax.chain(optax.add_decayed_weights(wd, cfg.wd_mask),
                     optax.sgd(lr, cfg.momentum, nesterov=cfg.nesterov))


def _adam(cfg, lr, wd):
  return optax.chain(optax.add_decayed_weights(wd, cfg.wd_mask),
                     optax.adam(lr, cfg.b1, cfg.b2, cfg.eps))


def _clip_norm(cfg, lr, wd):
  return optax.chain(optax.clip_by_global_norm(cfg.clip), _sgd(cfg, lr, wd))


def _clip_value(cfg, lr, wd):
  return optax.chain(optax.clip(cfg.clip), _sgd(cfg, lr, wd))


def _none_if_zero(value):
  # The config's static values: 0 means "no stage" here, so a run with
  # weight_decay=0 or momentum=0 keeps no decay stage or momentum buffer.
  return value if value else None


def _sgd_gaf(cfg, lr, wd):
  return gaf_optax.sgd_gaf(
      lr, _none_if_zero(cfg.momentum), nesterov=cfg.nesterov,
      weight_decay=_none_if_zero(wd),
      weight_decay_mask=cfg.wd_mask if wd else None, **cfg.gaf)


def _adam_gaf(cfg, lr, wd):
  gaf = {k: cfg.gaf[k] for k in ("alpha", "beta", "fn")}
  return gaf_optax.adam_gaf(
      lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=_none_if_zero(wd),
      weight_decay_mask=cfg.wd_mask if wd else None, **gaf)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
    "clip_norm": _clip_norm,
    "clip_value": _clip_value,
    "sgd_gaf": _sgd_gaf,
    "adam_gaf": _adam_gaf,
}


class _OptConfig:
  """The optimizer fields of a config (defaults: configs/default.py only)."""

  def __init__(self, config, wd_mask):
    self.momentum = config.momentum
    self.nesterov = config.nesterov
    self.b1 = config.b1
    self.b2 = config.b2
    self.eps = config.eps
    self.clip = config.clip
    self.gaf = {k: v for k, v in dict(config.gaf).items() if v is not None}
    self.wd_mask = wd_mask


def layer_labels(params) -> tuple[dict, int]:
  """Layer ids for weight-gradient amplification: one per top-level module.

  Args:
    params: a model's parameters (a dict of top-level modules).

  Returns:
    ``(labels, num_layers)``: a pytree like ``params`` whose leaves are the
    module's index in sorted name order, as the ``labels`` argument of
    :func:`gaf_optax.gradient_amplification` takes, and the module count.

  Example:
    >>> import jax.numpy as jnp
    >>> from gaf_optax.training import layer_labels
    >>> layer_labels({"fc2": {"kernel": jnp.ones(2)},
    ...               "fc1": {"kernel": jnp.ones(2), "bias": jnp.ones(1)}})
    ({'fc1': {'bias': 0, 'kernel': 0}, 'fc2': {'kernel': 1}}, 2)
  """
  top = sorted(params)
  return {name: jax.tree.map(lambda _, i=i: i, params[name])
          for i, name in enumerate(top)}, len(top)


def build_optimizer(config, *, steps_per_epoch: int, params,
                    num_points: int = 0):
  """The config's optimizer, with amplification chained first if enabled.

  Args:
    config: the training config.
    steps_per_epoch: optimizer steps per epoch.
    params: the model parameters (for masks and layer labels).
    num_points: the model's amplification points.

  Returns:
    ``(tx, uses_points)``: the transformation and whether its ``update``
    takes ``layer_stats`` from the model's amplification points.
  """
  if config.optimizer not in OPTIMIZERS:
    raise _unknown("optimizer", config.optimizer, OPTIMIZERS)
  wd_mask = None if config.decay_bn_and_bias else _decay_mask(params)
  lr = build_schedule(config, steps_per_epoch)
  tx = OPTIMIZERS[config.optimizer](
      _OptConfig(config, wd_mask), lr, config.weight_decay)
  amp = config.amplification
  if not amp.enabled:
    return tx, False
  kwargs = dict(factor=amp.factor, start_epoch=amp.start_epoch,
                end_epoch=amp.end_epoch, selection=amp.selection,
                threshold=amp.threshold, ratio=amp.ratio,
                reselect=amp.reselect, seed=amp.seed)
  if amp.mode == "points":
    if num_points < 1:
      raise ValueError(
          f"amplification.mode='points' needs a model with amplification "
          f"points; {config.model!r} has none. Use mode='weights'.")
    controller = gaf_optax.gradient_amplification(
        num_points, steps_per_epoch, **kwargs)
    return optax.chain(controller, tx), True
  if amp.mode == "weights":
    labels, num_layers = layer_labels(params)
    controller = gaf_optax.gradient_amplification(
        num_layers, steps_per_epoch, labels=labels, **kwargs)
    return optax.chain(controller, tx), False
  raise _unknown("amplification.mode", amp.mode, ("points", "weights"))


def build_telemetry(config) -> Telemetry | None:
  """``config.telemetry`` as a :class:`Telemetry` (None when disabled).

  GAF's saturation share uses ``config.gaf.beta`` for the GAF optimizers, on
  the momentum buffer for ``sgd_gaf`` in its default ``position="momentum"``
  (SGD_atanMom) and on the gradient otherwise.
  """
  t = config.telemetry
  if not t.enabled:
    return None
  beta, where = None, "gradient"
  if config.optimizer in ("sgd_gaf", "adam_gaf"):
    beta = config.gaf.beta
    if config.optimizer == "sgd_gaf" and config.gaf.position == "momentum":
      where = "momentum"
  return Telemetry(layers=t.layers, gaf_beta=beta, gaf_input=where,
                   signals=t.signals, every=t.every)


# Fields that say how to run, not what a step is: a resume may change them.
RESUMABLE_FIELDS = frozenset({
    "data_dir", "data_workers", "device_data", "num_devices", "sharding", "fsdp_min_bytes", "eval_batch_size",
    "checkpoint_every_steps", "checkpoint_at_end", "keep_checkpoints", "restore_step", "tensorboard",
    "progress", "log_to_stdout", "check_every", "telemetry", "distributed"})


def step_defining_fields(config) -> dict[str, Any]:
  """The config's fields but :data:`RESUMABLE_FIELDS`, as plain values.

  A resume must keep them (``Trainer.run_info``): they set the data, its
  order, the model and the optimizer, and so what step ``t`` of the run is.
  """
  return {k: v for k, v in config.to_dict().items()
          if k not in RESUMABLE_FIELDS}


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int_at_least(low):
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and
          v >= low), f"an int >= {low}"


def _float_in(low, high, *, open_high=False, open_low=False):
  def ok(v):
    if not _number(v) or not math.isfinite(v):
      return False
    return ((v > low if open_low else v >= low) and
            (high is None or (v < high if open_high else v <= high)))
  hi = "" if high is None else f", {high}{')' if open_high else ']'}"
  what = (f"a finite number {'>' if open_low else '>='} {low}" if high is None
          else f"a number in {'(' if open_low else '['}{low}{hi}")
  return ok, what


def _optional(rule):
  ok, what = rule
  return (lambda v: v is None or ok(v)), f"None or {what}"


_RULES = {
    "batch_size": _int_at_least(1),
    "eval_batch_size": _int_at_least(1),
    "num_epochs": _int_at_least(1),
    "seed": _int_at_least(0),
    "keep_checkpoints": _int_at_least(1),
    "checkpoint_every_steps": _int_at_least(0),
    "check_every": _int_at_least(1),
    "data_workers": _int_at_least(0),
    "skip_nonfinite_steps": _int_at_least(0),
    "restore_step": _optional(_int_at_least(0)),
    "num_devices": _optional(_int_at_least(1)),
    "train_size": _optional(_int_at_least(1)),
    "test_size": _optional(_int_at_least(1)),
    "image_size": _optional(_int_at_least(1)),
    "crop_padding": _int_at_least(0),
    "learning_rate": _float_in(0, None),
    "momentum": _float_in(0, 1),
    "b1": _float_in(0, 1, open_high=True),
    "b2": _float_in(0, 1, open_high=True),
    "eps": _float_in(0, None, open_low=True),
    "clip": _float_in(0, None, open_low=True),
    "weight_decay": _float_in(0, None),
    "warmup_epochs": _float_in(0, None),
    "decay_factor": _float_in(0, None),
    "telemetry.every": _int_at_least(1),
    "fsdp_min_bytes": _int_at_least(0),
    "amplification.factor": _float_in(0, None, open_low=True),
    "amplification.start_epoch": _int_at_least(0),
}


def validate_config(config) -> None:
  """Checks a config's values before any work is done.

  Raises:
    ValueError: naming the first field whose value is not accepted, and
      what is (e.g. ``config.batch_size must be an int >= 1; got 0``), or a
      ``model_kwargs`` field the model does not take.
  """
  for field, (ok, what) in _RULES.items():
    value = config
    for part in field.split("."):
      value = value[part]
    if not ok(value):
      raise ValueError(f"config.{field} must be {what}; got {value!r}.")
  if config.sharding not in ("replicated", "fsdp"):
    raise ValueError("config.sharding must be 'replicated' or 'fsdp'; got "
                     f"{config.sharding!r}.")
  for epoch in config.decay_epochs:
    if not _number(epoch) or epoch < 0:
      raise ValueError("config.decay_epochs must hold numbers >= 0; got "
                       f"{tuple(config.decay_epochs)!r}.")
  if config.model in models_lib.names():
    accepted = models_lib.accepted_kwargs(config.model)
    unknown = sorted(set(config.model_kwargs or {}) - accepted)
    if unknown:
      raise ValueError(
          f"config.model_kwargs has field(s) {', '.join(map(repr, unknown))} "
          f"that model {config.model!r} does not take; it takes: "
          f"{', '.join(sorted(accepted))}.")
