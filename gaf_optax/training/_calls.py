"""How the trainer calls a model: the arguments its ``__call__`` takes.

The trainer runs any Flax Linen or NNX module, including ones that know
nothing of gaf_optax. It reads the module's ``__call__`` signature once,
when the step is built, and passes besides the batch only what the model
takes, by keyword:

- ``train``: the training mode (``True`` in a train step, ``False`` in
  evaluation and at ``init``), the convention of Flax's examples
  (``nn.BatchNorm(use_running_average=not train)``);
- ``deterministic``: its negation, the convention of Flax's own layers
  (``nn.Dropout``, attention). A model with both gets both. Other names
  (``training``, ``is_training``, ...) are not guessed;
- ``amp_factors`` (Linen): the amplification controller's factors, for a
  model with amplification points (every ``gaf_optax.models`` model; NNX
  models hold their factors as variables instead);
- ``rngs`` (NNX): in training, an ``nnx.Rngs`` keyed by the step, for a
  module that hands it to its layers (``nnx.Dropout(rate)(x, rngs=rngs)``,
  as Flax's NNX examples do); left at its default in evaluation.

Only named parameters count: a ``**kwargs`` catch-all gets nothing. A
model with any other required parameter (besides the batch) is refused
with an error naming it, rather than failing inside the first jitted step.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

__all__ = ["CallSignature", "call_signature"]

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY)


@dataclasses.dataclass(frozen=True)
class CallSignature:
  """Which of the trainer's arguments a model's ``__call__`` takes.

  Attributes:
    train: takes ``train`` (gets the training mode).
    deterministic: takes ``deterministic`` (gets ``not train``).
    amp_factors: takes ``amp_factors`` (Linen).
    rngs: takes ``rngs`` (NNX).
  """

  train: bool = False
  deterministic: bool = False
  amp_factors: bool = False
  rngs: bool = False

  @property
  def takes_mode(self) -> bool:
    return self.train or self.deterministic

  def kwargs(self, *, train: bool, amp_factors: Any = None,
             rngs: Any = None) -> dict[str, Any]:
    """The keyword arguments of one call, in training mode or not.

    ``amp_factors`` and ``rngs`` are passed where taken and not None.
    """
    out = {}
    if self.train:
      out["train"] = train
    if self.deterministic:
      out["deterministic"] = not train
    if self.amp_factors and amp_factors is not None:
      out["amp_factors"] = amp_factors
    if self.rngs and rngs is not None:
      out["rngs"] = rngs
    return out


def call_signature(module, *, nnx: bool = False) -> CallSignature:
  """Reads what ``module.__call__`` takes (see the module docstring).

  Args:
    module: a Flax Linen or NNX module.
    nnx: ``module`` is an NNX module: ``rngs`` is the trainer's to fill,
      ``amp_factors`` is not.

  Returns:
    The :class:`CallSignature`.

  Raises:
    TypeError: ``module`` is not callable with one positional batch, or
      has a required parameter the trainer cannot fill (named).

  Example:
    >>> import flax.linen as nn
    >>> from gaf_optax.training._calls import call_signature
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x, train: bool = False):
    ...     return nn.Dense(2)(nn.Dropout(0.5, deterministic=not train)(x))
    >>> sig = call_signature(MLP())
    >>> sig.kwargs(train=True, amp_factors=None)
    {'train': True}
  """
  name = type(module).__name__
  try:
    params = list(inspect.signature(module.__call__).parameters.values())
  except (TypeError, ValueError) as e:  # not callable, or a builtin
    raise TypeError(f"model {name} has no __call__ signature the trainer "
                    "can read.") from e
  positional = (inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.VAR_POSITIONAL)
  if not params or params[0].kind not in positional:
    raise TypeError(f"model {name}'s __call__ must take the batch as its "
                    "first positional argument.")
  names = {p.name for p in params[1:] if p.kind in _KEYWORD}
  known = {"train", "deterministic", "rngs" if nnx else "amp_factors"}
  for p in params[1:]:
    required = (p.default is inspect.Parameter.empty and p.kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD))
    if required and (p.name not in known or p.kind not in _KEYWORD):
      raise TypeError(
          f"model {name}'s __call__ has a required parameter {p.name!r} "
          f"that the trainer cannot fill: it calls model(x), adding "
          f"{', '.join(f'{k}=' for k in sorted(known))} by keyword where "
          "the model takes them. Give it a default, or wrap the model.")
  return CallSignature(train="train" in names,
                       deterministic="deterministic" in names,
                       amp_factors=not nnx and "amp_factors" in names,
                       rngs=nnx and "rngs" in names)
