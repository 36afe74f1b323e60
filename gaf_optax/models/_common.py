"""Pieces shared by the reference models: activations, layers, counting."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gaf_optax.nn import AmplificationPoints
from gaf_optax.nn._anact import check_axis_name

__all__ = [
    "Activation",
    "amplification_points",
    "batch_norm",
    "check_fields",
    "check_sync",
    "conv",
    "dense",
    "make_activation",
    "num_params",
]

Activation = Callable[..., Any]
Dtype = Any

# He (Kaiming) normal with fan-out, as torchvision initializes its conv nets.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _unwrap(act: Any) -> tuple[Any, set[str]]:
  """The class under nested ``functools.partial`` and the keywords set."""
  keywords = set()
  while isinstance(act, functools.partial):
    keywords |= set(act.keywords)
    act = act.func
  return act, keywords


def _is_module_class(act: Any) -> bool:
  act, _ = _unwrap(act)
  return isinstance(act, type) and issubclass(act, nn.Module)


def make_activation(act: Activation, train: bool, *,
                    axis_name: Any = None,
                    axis_index_groups: Any = None
                    ) -> Callable[[jax.Array], jax.Array]:
  """Turns a model's ``act`` attribute into a function of one array.

  ``act`` may be a plain function (``nn.relu``, ``gaf_optax.nn.gaaf_relu``)
  or a Flax module class with state, such as ``gaf_optax.nn.NSwish`` (also
  ``functools.partial(NSwish, momentum=0.9)``). A module class is
  instantiated at each call of the returned function, so it must be called
  inside a module's compact method: every activation site then gets its own
  submodule (its own ``batch_stats``), called with
  ``use_running_average=not train``. A module class with an ``axis_name``
  field (ANAct has one) gets the model's ``axis_name`` and
  ``axis_index_groups`` unless the ``functools.partial`` already sets them
  (the user's explicit choice wins); other classes get neither.

  Args:
    act: an activation function or an ``nn.Module`` subclass.
    train: whether the model runs in training mode.
    axis_name: the model's mapped batch axis for synced statistics, or None.
    axis_index_groups: the model's groups along ``axis_name``, or None.

  Returns:
    A function ``x -> activated x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gaf_optax.models._common import make_activation
    >>> make_activation(jnp.tanh, train=True)(jnp.zeros(2)).tolist()
    [0.0, 0.0]
  """
  if _is_module_class(act):
    cls, keywords = _unwrap(act)
    fields = {f.name for f in dataclasses.fields(cls)}
    sync = {k: v for k, v in (("axis_name", axis_name),
                              ("axis_index_groups", axis_index_groups))
            if v is not None and k in fields and k not in keywords}
    return lambda x: act(**sync)(x, use_running_average=not train)
  if not callable(act):
    raise ValueError(f"act must be a function or an nn.Module class; got "
                     f"{act!r}.")
  return act


# --------------------------------------------------------------------------
# Argument checks by value, shared by every reference model (Linen, and NNX
# through `get_nnx`): each model's `__post_init__` calls `check_fields`, so a
# bad width fails when the model is built, naming the model and the field,
# not deep in Flax or XLA (or, for a width of 0, not at all: a zero-width
# layer trains silently with a constant loss).

Rule = tuple[Callable[[Any], bool], str]


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_positive_int(x: Any) -> bool:
  return _is_int(x) and x >= 1


def _is_sequence(x: Any) -> bool:
  return isinstance(x, Sequence) and not isinstance(x, str)


POSITIVE_INT: Rule = (_is_positive_int, "a positive int")
OPTIONAL_POSITIVE_INT: Rule = (lambda x: x is None or _is_positive_int(x),
                               "None or a positive int")
BOOL: Rule = (lambda x: isinstance(x, bool), "a bool")
ACTIVATION: Rule = (callable, "a function or an nn.Module class")


def positive_ints(what: str, *, nonempty: bool = False) -> Rule:
  """A tuple (or list) of positive ints, e.g. layer widths."""
  def ok(x):
    return (_is_sequence(x) and (len(x) > 0 or not nonempty)
            and all(_is_positive_int(v) for v in x))
  some = "a non-empty" if nonempty else "a"
  return ok, f"{some} tuple of positive ints ({what})"


def number_in(low: float, high: float, *, low_open: bool, high_open: bool
              ) -> Rule:
  """A finite real number in the interval."""
  def ok(x):
    return (_is_number(x) and math.isfinite(x)
            and (x > low if low_open else x >= low)
            and (x < high if high_open else x <= high))
  interval = (f"{'(' if low_open else '['}{low:g}, "
              f"{high:g}{')' if high_open else ']'}")
  return ok, f"in {interval}"


def one_of(*choices: Any) -> Rule:
  return (lambda x: x in choices,
          "one of " + ", ".join(repr(c) for c in choices))


# Fields every reference model has.
COMMON_RULES: dict[str, Rule] = {
    "num_classes": POSITIVE_INT,
    "act": ACTIVATION,
    "amplify_activations": BOOL,
}


def check_fields(model: Any, rules: dict[str, Rule]) -> None:
  """Checks a model's fields by value, with :data:`COMMON_RULES` first.

  Args:
    model: a reference model (its dataclass fields are read).
    rules: field name -> ``(predicate, what is accepted)``.

  Raises:
    ValueError: for the first field whose value is not accepted, e.g.
      ``MLP.features must be a tuple of positive ints (hidden widths); got
      (0,).`` (a wrong type too: one error class for every bad value).

  Example:
    >>> from gaf_optax import models
    >>> models.MLP(features=(64, 0))
    Traceback (most recent call last):
      ...
    ValueError: MLP.features must be a tuple of positive ints (hidden
    widths, one Dense layer each); got (64, 0).
  """
  for name, (ok, accepted) in {**COMMON_RULES, **rules}.items():
    if not hasattr(model, name):
      continue
    value = getattr(model, name)
    if not ok(value):
      raise ValueError(f"{type(model).__name__}.{name} must be {accepted}; "
                       f"got {value!r}.")


def check_sync(model: Any) -> None:
  """Raises TypeError / ValueError for a bad ``axis_name`` on a model."""
  check_axis_name(model.axis_name, model.axis_index_groups)


def amplification_points(amp_factors: jax.Array | None,
                         expected: int) -> AmplificationPoints:
  """Checks ``amp_factors`` against a model's point count and hands out points.

  Args:
    amp_factors: the model's ``amp_factors`` call argument, or None.
    expected: the model's ``num_amplification_points``.

  Returns:
    An ``AmplificationPoints`` over ``amp_factors``. The model still calls its
    ``check_used_all()`` at the end, which also checks ``expected`` against
    the points the forward pass really used.

  Raises:
    ValueError: if ``amp_factors`` is not of shape ``(expected,)``.
  """
  if amp_factors is not None and jnp.shape(amp_factors) != (expected,):
    raise ValueError(
        f"amp_factors must have shape ({expected},), one factor per "
        f"amplification point of this model; got {jnp.shape(amp_factors)}.")
  return AmplificationPoints(amp_factors)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  return tuple(value)


def conv(features: int, kernel_size: int, strides: int = 1, *,
         padding: str | int | None = None, use_bias: bool = False,
         groups: int = 1, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A 2-D convolution with PyTorch's conventions (NHWC).

  Args:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric padding on each side (PyTorch ``padding``), or a Flax
      padding string; ``None`` means ``kernel_size // 2``, PyTorch's usual
      "same" padding, which unlike Flax's ``"SAME"`` is symmetric also for
      stride 2.
    use_bias: whether the convolution has a bias.
    groups: feature groups (``groups=features`` is a depthwise conv).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    name: submodule name.

  Returns:
    An ``nn.Conv`` with He-normal (fan-out) kernel initialization.
  """
  if padding is None:
    padding = kernel_size // 2
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return nn.Conv(features, _pair(kernel_size), strides=_pair(strides),
                 padding=padding, use_bias=use_bias,
                 feature_group_count=groups, kernel_init=conv_init,
                 dtype=dtype, param_dtype=param_dtype, name=name)


def batch_norm(train: bool, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32,
               axis_name: Any = None, axis_index_groups: Any = None,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults: momentum 0.9, epsilon 1e-5.

  Batch statistics in training, running statistics in evaluation. The
  statistics are computed in float32 even for bf16 inputs (Flax promotes
  them), so ``dtype=jnp.bfloat16`` is safe. ``axis_name`` and
  ``axis_index_groups`` are ``flax.linen.BatchNorm``'s: under ``jax.pmap``
  or ``shard_map`` over that axis the batch statistics are the global
  batch's.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
                      axis_name=axis_name,
                      axis_index_groups=axis_index_groups, name=name)


def dense(features: int, *, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: str | None = None,
          init_scale: float = 1.0) -> nn.Dense:
  """A fully connected layer with bias (Flax's default initializers).

  ``init_scale`` multiplies the kernel's initial variance: LeCun normal is
  ``variance_scaling(1, "fan_in", "truncated_normal")``, so the kernel is
  drawn from ``variance_scaling(init_scale, ...)``, i.e. ``sqrt(init_scale)``
  times the default draw with the same key.
  """
  kernel_init = (nn.initializers.lecun_normal() if init_scale == 1.0 else
                 nn.initializers.variance_scaling(init_scale, "fan_in",
                                                  "truncated_normal"))
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=kernel_init)


def num_params(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Number of trainable parameters (the ``params`` collection).

  Shapes only (``jax.eval_shape``): nothing is computed or allocated. BatchNorm
  scale and bias count; running statistics (``batch_stats``) do not, as in
  PyTorch's ``sum(p.numel() for p in model.parameters())``.

  Args:
    model: a model of this package.
    input_shape: the input's shape, batch first (NHWC for images).

  Returns:
    The number of parameters.

  Example:
    >>> from gaf_optax import models
    >>> models.num_params(models.get("lenet"), (1, 32, 32, 3))
    62006
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
