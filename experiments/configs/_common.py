"""Helpers shared by the parameterised full-scale configs.

The full-scale configs take their variant from ml_collections' config
string: ``--config=experiments/configs/gaf_cifar.py:resnet18,cifar10,0.1,20``
calls ``get_config("resnet18,cifar10,0.1,20")``. These helpers split and
check that string and set the optimizer of a GAF run or of its baselines, so
that every config file reads the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# (alpha, beta) pairs of the GAF authors' final CIFAR sweeps and ImageNet runs
# (docs/methods/gaf.md). Both have slope alpha * beta = 2 at 0.
GAF_PAPER_PAIRS = ((0.1, 20.0), (0.2, 10.0))
# The official code's clipping baselines: clip-by-norm at the arctan bound
# 0.1*pi/2 and clip-by-value at 0.01*pi/2.
CLIP_NORM = 0.1 * math.pi / 2
CLIP_VALUE = 0.01 * math.pi / 2
GAF_BASELINES = ("sgd", "sgd_matched", "clip_norm", "clip_value")


def split_arg(arg: str | None, default: str, usage: str) -> list[str]:
  """The config string's comma-separated fields (``default`` when empty)."""
  arg = default if arg is None or not arg.strip() else arg
  fields = [f.strip() for f in arg.split(",")]
  if any(not f for f in fields):
    raise ValueError(f"empty field in config argument {arg!r}; {usage}")
  return fields


def check(value: str, known: Sequence[str], what: str, usage: str) -> str:
  if value not in known:
    raise ValueError(
        f"unknown {what} {value!r}; known: {', '.join(known)}. {usage}")
  return value


def set_gaf_variant(c, variant: Sequence[str], usage: str) -> str:
  """Sets GAF or one of its baselines from the variant fields; returns a tag.

  Args:
    c: the config; ``c.learning_rate`` must already hold the paper's rate.
    variant: ``[ALPHA, BETA]`` for GAF (``sgd_gaf``: SGD_atanMom, arctan on
      the momentum output, as the official presets), or one field:
      ``sgd`` (plain SGD at the paper's rate), ``sgd_matched`` (plain SGD at
      rate * alpha * beta = 2x, the fair baseline (docs/methods/gaf.md): near 0
      arctan is linear with slope alpha * beta), ``clip_norm`` or
      ``clip_value`` (the official code's clipping baselines).
    usage: the config's usage line, for error messages.

  Returns:
    a short tag naming the variant (``"gaf_a0.1_b20"``, ``"sgd"`` ...).
  """
  if len(variant) == 2:
    try:
      alpha, beta = float(variant[0]), float(variant[1])
    except ValueError:
      raise ValueError(f"ALPHA,BETA must be numbers; got {variant}. "
                       f"{usage}") from None
    if alpha <= 0 or beta <= 0:
      raise ValueError(f"ALPHA and BETA must be positive; got {variant}.")
    c.optimizer = "sgd_gaf"
    c.gaf.alpha = alpha
    c.gaf.beta = beta
    c.gaf.fn = "arctan"
    c.gaf.position = "momentum"  # SGD_atanMom
    return f"gaf_a{alpha:g}_b{beta:g}"
  if len(variant) != 1:
    raise ValueError(f"bad variant {list(variant)}. {usage}")
  name = check(variant[0], GAF_BASELINES, "baseline", usage)
  if name == "sgd_matched":
    slopes = {a * b for a, b in GAF_PAPER_PAIRS}
    assert len(slopes) == 1, slopes
    c.optimizer = "sgd"
    c.learning_rate = c.learning_rate * slopes.pop()
  elif name == "clip_norm":
    c.optimizer = "clip_norm"
    c.clip = CLIP_NORM
  elif name == "clip_value":
    c.optimizer = "clip_value"
    c.clip = CLIP_VALUE
  else:
    c.optimizer = "sgd"
  return name
