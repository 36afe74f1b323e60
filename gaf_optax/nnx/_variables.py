"""Reading and writing NNX variables across Flax releases."""

from __future__ import annotations

from typing import Any

from flax import nnx


def set_value(variable: nnx.Variable, value: Any) -> None:
  """``variable``'s new value, in the spelling this Flax release wants.

  Flax 0.12 deprecates the ``.value`` setter for ``set_value`` (which 0.10
  lacks); reading works as ``variable[...]`` in both.
  """
  if hasattr(variable, "set_value"):
    variable.set_value(value)
  else:
    variable.value = value
