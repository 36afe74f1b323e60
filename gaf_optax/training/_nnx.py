"""Flax NNX modules in the trainer's functional step.

The trainer's step is a pure function of arrays (:mod:`._step`), written
against Linen's calling convention, ``model.init`` / ``model.apply``. An NNX
module holds its variables as attributes instead, so :func:`functional`
wraps one in :class:`NNXFunctional`: ``nnx.split`` once, then each ``apply``
is ``nnx.merge`` of the graph with the arrays it is given, the call, and
``nnx.state`` of what the call changed. Everything the trainer does with a
Linen model's variables (jit with shardings, FSDP, donation, Orbax
checkpoints, telemetry, the 1-vs-N-device and resume guarantees) then holds
for an NNX model unchanged, because the :class:`TrainState` holds the same
kind of pytree of arrays.

How the state is laid out: ``params`` are the ``nnx.Param`` variables,
``model_state`` holds the ``nnx.BatchStat`` ones under ``"batch_stats"`` and
any other variable type under ``"nnx_state"``, as pure dicts. For
:class:`gaf_optax.models.NNXModel` (a Linen model through ``nnx.bridge``)
the bridge's own level is left out, so the trees are exactly the Linen
model's: the same telemetry names, and checkpoints interchangeable.
Amplification factors (:class:`gaf_optax.nnx.AmplificationFactors`) are
not state: the step writes the controller's factors into them at each call
(``amp_factors``) and differentiates with respect to them. RNG streams
(``nnx.RngState``) are not state either: a training call reseeds them with
the step's key (``fold_in(rng, step)``, as for Linen's dropout), so a run's
randomness depends on ``(seed, step)`` only.

How the module is called: ``module.train()`` or ``module.eval()`` first
(NNX's idiom: they set ``deterministic`` and ``use_running_average`` on
the layers that have them), then ``module(x)``, adding ``train=``,
``deterministic=`` and, in training, ``rngs=`` (an ``nnx.Rngs`` keyed by
the step, for layers that draw from a call's ``rngs``) where its
``__call__`` takes them (:mod:`gaf_optax.training._calls`). So a module
written in any of those ways runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gaf_optax import models
from gaf_optax.nnx import AmplificationFactors
from gaf_optax.nnx import num_amplification_points
from gaf_optax.nnx import set_amplification_factors
from gaf_optax.training import _calls

__all__ = ["NNXFunctional", "functional"]

_STATS = "batch_stats"
_OTHER = "nnx_state"


def _copy(state):
  """A new State with the same values (replace_by_pure_dict mutates)."""
  return jax.tree.map(lambda a: a, state)


def _typed(key):
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def _filled(template, pure):
  state = _copy(template)
  if pure:
    nnx.replace_by_pure_dict(state, pure)
  return state


class NNXFunctional:
  """An NNX module with Linen's ``init`` / ``apply`` (see the module doc).

  Built by :func:`functional`; the trainer does that itself, so users pass
  the NNX module. The module is split when this is built: later changes to
  the module do not reach the trainer.

  Attributes:
    module_type: the NNX module's class.
    num_amplification_points: the module's amplification points.
  """

  def __init__(self, module: nnx.Module):
    self.module_type = type(module)
    self.num_amplification_points = num_amplification_points(module)
    # Factors are variables, not call arguments, in NNX.
    self._signature = _calls.call_signature(module, nnx=True)
    (self._graphdef, self._params, self._factors, self._rngs, self._stats,
     self._other) = nnx.split(module, nnx.Param, AmplificationFactors,
                              nnx.RngState, nnx.BatchStat, ...)
    # The bridge's attribute holds every Linen variable: drop that level.
    self._prefix = "linen" if isinstance(module, models.NNXModel) else None

  def _strip(self, pure: dict) -> dict:
    if self._prefix is None:
      return pure
    return pure.get(self._prefix, {})

  def _wrap(self, pure: dict) -> dict:
    if self._prefix is None or not pure:
      return pure
    return {self._prefix: pure}

  def _reseeded(self, key):
    """The RNG streams, each keyed from the step's key (when given).

    Every stream's key becomes ``fold_in(key, i)`` (i: its place in the
    state) and its count 0, so what a stochastic layer draws depends on the
    step only, whatever streams the module made and whatever their names.
    """
    state = _copy(self._rngs)
    if key is None:
      return state
    pure = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree.flatten(pure)
    fresh = [jax.random.fold_in(key, i)
             if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
             else jnp.zeros_like(leaf) for i, leaf in enumerate(leaves)]
    nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, fresh))
    return state

  def init(self, rng, x, train: bool = False) -> dict[str, Any]:
    """The module's variables as Linen-style collections of pure dicts.

    ``rng`` and ``x`` are ignored: an NNX module is created with its
    parameters, so the trainer's ``seed`` keys data order, augmentation and
    dropout, not the initialization.
    """
    del rng, x, train
    out = {"params": self._strip(nnx.to_pure_dict(self._params))}
    for name, state in ((_STATS, self._stats), (_OTHER, self._other)):
      pure = self._strip(nnx.to_pure_dict(state))
      if pure:
        out[name] = pure
    return out

  def apply(self, variables, x, *, train: bool, amp_factors=None,
            mutable=False, rngs=None):
    """Calls the module on ``x`` with ``variables``; Linen's return values."""
    key = _typed(next(iter(rngs.values()))) if rngs else None
    module = nnx.merge(
        self._graphdef,
        _filled(self._params, self._wrap(variables["params"])),
        _copy(self._factors), self._reseeded(key),
        _filled(self._stats, self._wrap(variables.get(_STATS, {}))),
        _filled(self._other, self._wrap(variables.get(_OTHER, {}))))
    if train:
      module.train()
    else:
      module.eval()
    if amp_factors is not None:
      set_amplification_factors(module, amp_factors)
    # A call's own nnx.Rngs (for a module that takes rngs): one more stream,
    # apart from the stored ones' fold_in(key, i).
    call_rngs = (nnx.Rngs(jax.random.fold_in(key, -1 % 2**31))
                 if train and key is not None else None)
    y = module(x, **self._signature.kwargs(train=train, rngs=call_rngs))
    if not mutable:
      return y
    _, _, stats, other = nnx.split(module, (nnx.Param, AmplificationFactors,
                                         nnx.RngState), nnx.BatchStat, ...)
    updates = {}
    for name, state in ((_STATS, stats), (_OTHER, other)):
      pure = self._strip(nnx.to_pure_dict(state))
      if pure and (mutable is True or name in mutable):
        updates[name] = pure
    return y, updates


def functional(model):
  """``model`` with Linen's ``init``/``apply``: NNX modules are wrapped.

  Linen modules and already wrapped models are returned as they are.
  """
  if isinstance(model, nnx.Module):
    return NNXFunctional(model)
  return model
