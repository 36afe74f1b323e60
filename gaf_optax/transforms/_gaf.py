"""GAF: gradient activation functions as optax transformations.

Liu, Chen, Du, Jin, Shang, "Activated Gradients for Deep Neural Networks",
IEEE TNNLS, https://arxiv.org/abs/2107.04228.

A gradient activation function is a bounded, odd, monotone function applied
elementwise to an update, ``alpha * fn(beta * u)``: small components are
enlarged (slope ``alpha * beta`` at 0) and large ones are limited. This module
provides the bare transformation (:func:`gaf`, :func:`adaptive_gaf`) and the
authors' optimizer variants as optax chains (:func:`sgd_gaf`,
:func:`adam_gaf`, :func:`rmsprop_gaf`).

The placements reproduce the official PyTorch optimizers
(github.com/LongJin-lab/Activated-Gradients-for-Deep-Neural-Networks):

===================  =========================================================
official optimizer   optax chain built here
===================  =========================================================
SGD_atan             gaf, add_decayed_weights, trace, scale(-lr)
SGD_atanMom          add_decayed_weights, trace, gaf, scale(-lr)
SGD_tanh_Mom         as SGD_atanMom with ``fn="tanh"``
SGD_log_Mom          as SGD_atanMom with ``fn="log"``
SGD_atanMom_Ada      as SGD_atanMom with :func:`adaptive_gaf`
Adam_atan            gaf, add_decayed_weights, scale_by_adam, scale(-lr)
===================  =========================================================

Validation: what is static is checked when the transformation is built (a
ValueError naming the function, the argument, the value and what is
accepted) or, for shapes and dtypes, in ``init`` and ``update`` (at trace
time, no host sync). Schedules and traced values (``optax.inject_hyperparams``
under jit) are not checked. Parameters and updates must have floating dtypes:
complex or integer leaves raise a TypeError (leave them out with
:func:`optax.masked`); Python floats are taken as float32 leaves. A
``weight_decay_mask`` whose tree structure is neither the parameters' nor a
prefix of it is a ValueError naming it and both structures. float16
parameters work in :func:`adam_gaf` and :func:`rmsprop_gaf` (their second
moment is kept in float32).

Sharding: every transformation keeps each parameter's sharding for its
state and its update (FSDP included, on auto and explicit-axes meshes): the
per-leaf passes of :func:`sgd_gaf` and :func:`adam_gaf` reshape a leaf to a
wider view on CPU (faster loops) only where that cannot merge a dimension
split across devices, and otherwise run on the leaf's own shape.

Non-finite gradients are not checked either (a check would cost a host sync
per step, or skip steps silently). arctan and tanh map ``+-inf`` to their
bound and NaN stays NaN, so a non-finite gradient that reaches a moment or
momentum buffer stays in it for ever: see :func:`sgd_gaf` for exactly what
happens. Remedies: ``optax.apply_if_finite(tx, max_consecutive_errors)``
around the bare transformation skips such steps, and
:class:`gaf_optax.training.Trainer` stops the run at the first non-finite
step, or rides out a few with its ``skip_nonfinite_steps`` argument.
"""


import functools
import math
import re
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Union

import chex
import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import optax
from jax.interpreters import mlir

__all__ = [
    "GafState",
    "adam_gaf",
    "adaptive_gaf",
    "fast_arctan",
    "gaf",
    "rmsprop_gaf",
    "sgd_gaf",
]

ElementwiseFn = Callable[[jax.Array], jax.Array]
FnName = Literal["arctan", "tanh", "log"]
FnLike = Union[FnName, ElementwiseFn]
SgdFnLike = Union[Literal["arctan", "tanh", "log", "adaptive"], ElementwiseFn]
Position = Literal["momentum", "gradient"]
# optax's mask convention (`optax.masked`, `optax.add_decayed_weights`): a
# pytree of bools like the params, or a callable that returns one.
MaskOrFn = Union[Any, Callable[[Any], Any], None]

# Minimax-style fit (our own, iteratively reweighted least squares) of
# (atan(t)/t - 1)/t**2 as a polynomial in z = t**2 on [0, 1]; lowest order
# first. Evaluated in float32 the result is within 2.5 ulp of atan.
_ATAN_COEFFS = (
    -0.33333155512809753,
    0.19993837177753448,
    -0.1421167552471161,
    0.10668548196554184,
    -0.07557567209005356,
    0.04327240586280823,
    -0.016402926295995712,
    0.0029288013465702534,
)


def _newton_reciprocal(a: jax.Array) -> jax.Array:
  """1/a for float32 a in [1, 1e30], to about 1 ulp, without a division.

  A bit-pattern initial guess (relative error < 12.5%) and three Newton steps
  (the error squares each step: 1.6e-2, 2.4e-4, 6e-8).
  """
  bits = jax.lax.bitcast_convert_type(a, jnp.int32)
  r = jax.lax.bitcast_convert_type(jnp.int32(0x7EF311C3) - bits, jnp.float32)
  for _ in range(3):
    r = r * (2.0 - a * r)
  return r


def _arctan_f32(x: jax.Array, newton: bool, signed: bool = True
                ) -> jax.Array:
  """`fast_arctan`'s arithmetic; ``signed=False`` is for ``x >= 0`` only."""
  x = jnp.asarray(x)
  if x.dtype == jnp.float64:
    return jnp.arctan(x)
  y = x.astype(jnp.float32)
  a = jnp.abs(y)
  big = a > 1.0
  if newton:  # for |x| > 1e30, 1/x is taken as 1e-30: the result is pi/2.
    inv = _newton_reciprocal(jnp.clip(a, 1.0, 1e30))
  else:
    inv = 1.0 / a
  t = jnp.where(big, inv, a)
  z = t * t
  p = jnp.float32(_ATAN_COEFFS[-1])
  for c in _ATAN_COEFFS[-2::-1]:
    p = p * z + jnp.float32(c)
  r = t + t * z * p
  r = jnp.where(big, jnp.float32(math.pi / 2) - r, r)
  return (jnp.copysign(r, y) if signed else r).astype(x.dtype)


def _with_exact_derivative(f, *, magnitude: bool = False):
  """``f`` (an arctan) with the exact derivative ``1 / (1 + x**2)``.

  ``magnitude=True`` for an ``f`` that computes ``|arctan(x)|``: the
  derivative is multiplied by ``sign(x)``.
  """
  f = jax.custom_jvp(f)

  @f.defjvp
  def jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    x = jnp.asarray(x)
    d = t / (1 + x * x)
    return f(x), d * jnp.sign(x) if magnitude else d

  return f


@_with_exact_derivative
def fast_arctan(x: jax.Array) -> jax.Array:
  """Float32 arctan within 2.5 ulp, much cheaper than XLA's on CPU.

  Uses ``atan(x) = pi/2 - atan(1/x)`` for ``|x| > 1`` and a degree-17 odd
  polynomial on ``[0, 1]`` (our own fit). ``+-inf`` map to ``+-pi/2``, NaN
  stays NaN and the sign of zero is kept. Inputs of another floating dtype
  are computed in float32 (float64 inputs use :func:`jax.numpy.arctan`, to
  stay exact). Its derivative is the exact ``1 / (1 + x**2)``.

  Args:
    x: a floating-point array.

  Returns:
    ``arctan(x)`` with the dtype of ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from gaf_optax import fast_arctan
    >>> [round(float(v), 6) for v in fast_arctan(jnp.array([0.0, 1.0, -jnp.inf]))]
    [0.0, 0.785398, -1.570796]
  """
  return _arctan_f32(x, newton=False)


@_with_exact_derivative
def _fusible_arctan(x: jax.Array) -> jax.Array:
  """`fast_arctan` with multiplies and adds only (no division).

  XLA:CPU has no multi-output fusion and will not recompute an op it deems
  expensive (division, tanh, ...) in each consumer of a value. In
  ``rmsprop_gaf`` GAF has two consumers, so with a division its output would
  be written to memory and read back; this variant is recomputed in each
  consumer instead. With a single consumer the division is cheaper, and
  ``adam_gaf`` gives its two consumers two different expressions instead.
  """
  return _arctan_f32(x, newton=True)


def _log_fn(x: jax.Array) -> jax.Array:
  return jnp.copysign(jnp.log1p(jnp.abs(x)), x)


_FNS: dict[str, ElementwiseFn] = {
    "arctan": fast_arctan,
    "tanh": jnp.tanh,
    "log": _log_fn,
}

# abs(fast_arctan(x)) bit for bit, without the sign's arithmetic.
_arctan_magnitude = _with_exact_derivative(
    lambda x: _arctan_f32(x, newton=False, signed=False), magnitude=True)


# |fn(x)| for the functions that are odd by construction (`copysign(f(|x|),
# x)`), for a consumer that squares the result and can skip the sign.
_MAGNITUDES: dict[str, ElementwiseFn] = {
    "arctan": _arctan_magnitude,
    "log": lambda x: jnp.log1p(jnp.abs(x)),
}


class GafState(NamedTuple):
  """State of :func:`gaf` when ``alpha`` or ``beta`` is a schedule."""

  count: chex.Array  # int32 number of updates applied so far.


# --------------------------------------------------------------------------
# Validation helpers (static values only: traced values, as produced by
# `optax.inject_hyperparams` under jit, and schedules are not checked).


def _static_value(value: Any) -> np.ndarray | None:
  """The value as a NumPy array if it is known now, else None."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def _check(where: str, name: str, value: Any,
           ok: Callable[[np.ndarray], Any], accepted: str, *,
           schedule_ok: bool = True) -> None:
  """Raises a ValueError naming `where`, `name`, the value and `accepted`.

  Only static values are checked: a schedule (allowed when `schedule_ok`) or a
  traced value passes, so `optax.inject_hyperparams` works under jit.
  """
  if callable(value):
    if schedule_ok:
      return
    raise ValueError(f"{where}: {name} must be {accepted}, not schedules; "
                     f"got {value!r}.")
  arr = _static_value(value)
  if arr is None:
    return
  real = (np.issubdtype(arr.dtype, np.floating)
          or np.issubdtype(arr.dtype, np.integer))
  if not real or not np.all(ok(arr)):
    raise ValueError(f"{where}: {name} must be {accepted}; got {value!r}.")


def _or_schedule(accepted: str, schedule_ok: bool) -> str:
  return accepted + (", or an optax schedule" if schedule_ok else "")


def _check_positive(where: str, name: str, value: Any, *,
                    schedule_ok: bool = True) -> None:
  _check(where, name, value, lambda a: np.isfinite(a) & (a > 0),
         _or_schedule("a positive finite number or array", schedule_ok),
         schedule_ok=schedule_ok)


def _check_non_negative(where: str, name: str, value: Any, *,
                        schedule_ok: bool = True) -> None:
  _check(where, name, value, lambda a: np.isfinite(a) & (a >= 0),
         _or_schedule("a non-negative finite number or array", schedule_ok),
         schedule_ok=schedule_ok)


def _check_decay(where: str, name: str, value: Any) -> None:
  # A moment's decay: 1 would never forget (and Adam's bias correction
  # would divide by zero).
  _check(where, name, value, lambda a: (a >= 0) & (a < 1),
         "a number or array in [0, 1)", schedule_ok=False)


def _check_momentum(where: str, value: Any) -> None:
  # 1 is allowed (the buffer never decays); > 1 would grow geometrically.
  _check(where, "momentum", value, lambda a: (a >= 0) & (a <= 1),
         "a non-negative number or array at most 1, i.e. in [0, 1]",
         schedule_ok=False)


def _check_leaves(where: str, what: str, tree: Any,
                  scales: dict[str, Any]) -> None:
  """Checks each leaf's dtype, and that `scales` keep each leaf's shape.

  Shapes and dtypes are static (known at trace time under jit): no host sync.

  Args:
    where: the public function, for the message.
    what: ``"parameter"`` or ``"update"``, for the message.
    tree: the parameters or updates.
    scales: name -> numeric scale (a number or an array, possibly traced)
      that multiplies every leaf; schedules are left out by the caller.

  Raises:
    TypeError: a leaf has a dtype that is not floating.
    ValueError: a scale's shape does not broadcast to a leaf's shape without
      changing it.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    label = f"{what} {jax.tree_util.keystr(path)}".rstrip()
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"{where}: {label} has dtype {dtype}; only floating dtypes "
          "(float16, bfloat16, float32, float64) are accepted. Leave complex "
          "or integer leaves out with optax.masked.")
    shape = tuple(np.shape(leaf))
    for name, value in scales.items():
      scale_shape = tuple(np.shape(value))
      try:
        fits = np.broadcast_shapes(scale_shape, shape) == shape
      except ValueError:
        fits = False
      if not fits:
        raise ValueError(
            f"{where}: {name} of shape {scale_shape} does not fit {label} of "
            f"shape {shape}; {name} must be a scalar or an array that "
            "broadcasts to every leaf's shape without changing it.")


def _resolve_fn(where: str, fn: FnLike, *, allowed: tuple[str, ...],
                fusible: bool = False) -> ElementwiseFn:
  if callable(fn):
    return fn
  if isinstance(fn, str) and fn in allowed:
    if fusible and fn == "arctan":
      return _fusible_arctan
    return _FNS[fn]
  names = ", ".join(repr(n) for n in allowed)
  raise ValueError(f"{where}: fn must be one of {names} or a callable; got "
                   f"{fn!r}.")


def _compute_dtype(dtype: Any) -> Any:
  # Transcendentals run in float32 at least (bf16/f16 are upcast), float64
  # stays float64.
  return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------
# Flat views of leaves (XLA:CPU).

# A view's minor dimension is made at least this wide.
_MIN_MINOR = 128


def _flat_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Merges trailing dimensions until the minor one is >= `_MIN_MINOR`."""
  dims = list(shape)
  while len(dims) > 1 and dims[-1] < _MIN_MINOR:
    last = dims.pop()
    dims[-1] *= last
  return tuple(dims)


def _split_on(mesh: Any, spec: Any, merged_from: int) -> bool:
  """Whether ``spec`` on ``mesh`` splits a dimension after ``merged_from``."""
  sizes = dict(mesh.shape)
  for entry in tuple(spec or ())[merged_from + 1:]:
    names = entry if isinstance(entry, tuple) else (entry,)
    if any(n is not None and sizes.get(n, 1) > 1 for n in names):
      return True
  return False


def _leaf_split(x: Any, merged_from: int) -> bool | None:
  """Whether ``x`` is split across devices on a dimension > ``merged_from``.

  The wide view merges dimensions ``merged_from`` and up into its minor one:
  a split of ``merged_from`` itself stays a contiguous split of the merged
  dimension, a split of a later one would not. True or False where the
  array or its type tells; None where only the compiled program knows: a
  traced leaf whose type carries no mesh (an uncommitted argument that
  ``jax.jit(in_shardings=...)`` places, a value made inside the function).
  Types tell on an explicit-axes mesh (the spec names the split dimensions)
  and on one device; on an auto mesh (``jax.sharding.Mesh``'s default) of
  several devices XLA picks the split after tracing, so any may be.
  """
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    sharding = x.sharding
    if len(sharding.device_set) == 1 or sharding.is_fully_replicated:
      return False
    if isinstance(sharding, jax.sharding.NamedSharding):
      return _split_on(sharding.mesh, sharding.spec, merged_from)
    return True
  typeof = getattr(jax, "typeof", None)
  sharding = getattr(typeof(x), "sharding", None) if typeof else None
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or getattr(mesh, "empty", True):
    return None
  if mesh.size == 1:
    return False
  axis_type = getattr(jax.sharding, "AxisType", None)
  types = tuple(getattr(mesh, "axis_types", ()))
  if axis_type is None or len(types) != len(mesh.axis_names):
    return True  # axis types unknown: any dimension may be split
  sizes = dict(mesh.shape)
  if any(kind == axis_type.Auto and sizes[name] > 1
         for name, kind in zip(mesh.axis_names, types)):
    return True
  # Explicit axes name the split dimensions; manual ones (inside shard_map)
  # are already this device's shard.
  return _split_on(mesh, sharding.spec, merged_from)


def _unpartitioned(ctx: Any) -> bool:
  """Whether the program being lowered runs whole on each of its devices.

  Read from the lowering context: ``jax.jit`` over one device, ``jax.pmap``
  (one program per device) or ``shard_map`` with every mesh axis of size > 1
  manual. Anything else, or a context this jax does not describe as we
  expect, counts as partitioned (the safe choice: no view).
  """
  context = getattr(getattr(ctx, "module_context", None), "axis_context",
                    None)
  if hasattr(context, "num_devices"):  # jax.jit
    return context.num_devices == 1
  if hasattr(context, "manual_axes") and hasattr(context, "mesh"):
    return all(size == 1 or name in context.manual_axes
               for name, size in dict(context.mesh.shape).items())
  return hasattr(context, "axis_env")  # jax.pmap


# `_unpartitioned_p.bind()` is 1 in a program that runs whole on each of its
# devices and 0 in a partitioned one: a constant, set when the program is
# lowered (once its devices are known), that picks a `lax.switch` branch.
# XLA folds the switch away before it partitions the program, so only the
# chosen branch is left; transformations see an ordinary switch.
_unpartitioned_p = jex_core.Primitive("gaf_optax_unpartitioned")
_unpartitioned_p.def_impl(lambda: np.int32(1))  # eager: one device
_unpartitioned_p.def_abstract_eval(
    lambda: jax.core.ShapedArray((), jnp.int32))
mlir.register_lowering(
    _unpartitioned_p,
    lambda ctx: [mlir.ir_constant(np.int32(_unpartitioned(ctx)))])


@functools.cache
def _fences_hold() -> bool:
  """Whether this XLA:CPU keeps optimization barriers until it fuses loops.

  The wide views need them there: a loop follows its fusion's root shape,
  and without a fence XLA fuses the reshape back to the leaf's shape into
  the loop. The XLA of jax 0.12 keeps them; the XLAs of jax 0.10.2 and
  0.5.3 expand them before fusion, where a fenced view only costs: the
  fused loops are still scalar, and the expanded barriers leave a copy of
  each donated leaf (up to 170 MiB of temporaries and 5x a step on
  ResNet-18 in PyTorch's layout). So we probe the compiler, once per
  process, instead of trusting a version number: compile a fenced view of
  a small (4, 32, 3, 3) array and look for a loop over the (4, 288) view.
  Any failure reads as "no" (the leaves keep their shape, as in optax).
  """
  shape, flat = (4, 32, 3, 3), (4, 288)

  def probe(x):
    v = jax.lax.optimization_barrier(x.reshape(flat))
    return jax.lax.optimization_barrier(jnp.sin(v) * 3.0).reshape(shape)

  try:
    cpu = jax.devices("cpu")[0]
    arg = jax.ShapeDtypeStruct(
        shape, jnp.float32, sharding=jax.sharding.SingleDeviceSharding(cpu))
    text = jax.jit(probe).lower(arg).compile().as_text()
  except Exception:  # pylint: disable=broad-except
    return False
  entry = text[text.find("ENTRY"):]
  return re.search(r"= f32\[4,288\]\{1,0\} fusion\(", entry) is not None


def _on_cpu_views(fn: Callable[..., tuple[jax.Array, ...]],
                  leaves: list[jax.Array], flat: tuple[int, ...],
                  fence_wide: bool) -> tuple[jax.Array, ...]:
  """``fn(*leaves)``, on CPU on ``flat`` views (see `_on_flat_views`)."""
  shape = tuple(leaves[0].shape)
  if flat == shape and not fence_wide:
    return tuple(fn(*leaves))

  def on_views(*xs):
    if not _fences_hold():  # views without fences only cost (see there)
      return tuple(fn(*xs))
    if flat != shape:
      xs = jax.lax.optimization_barrier(tuple(x.reshape(flat) for x in xs))
    # Fenced outputs also stop XLA from recomputing fn in their consumers.
    outs = jax.lax.optimization_barrier(tuple(fn(*xs)))
    return tuple(o.reshape(shape) for o in outs)

  return tuple(jax.lax.platform_dependent(
      *leaves, cpu=on_views, default=lambda *xs: tuple(fn(*xs))))


def _on_flat_views(fn: Callable[..., tuple[jax.Array, ...]],
                   leaves: list[jax.Array], *, enabled: bool = True,
                   fence_wide: bool = True) -> tuple[jax.Array, ...]:
  """``fn(*leaves)``, elementwise, computed on wide views of the leaves on CPU.

  ``fn`` returns a tuple of arrays of the leaves' (common) shape. Why we
  write this ourselves: XLA:CPU vectorizes an elementwise loop along its
  output's minor dimension, so on a leaf whose minor dimension is small (a
  PyTorch-layout conv kernel ``(out, in, 3, 3)``, an ``(n, 1)`` leaf) a loop
  of transcendental functions runs scalar, several times slower. A reshape
  alone does not help: XLA moves it back into the fusion, whose loop follows
  the root's shape. So on CPU the leaves are reshaped to views whose minor
  dimension is at least 128 (a free bitcast) and fenced with
  ``jax.lax.optimization_barrier``, which keeps the loops on the views. Only
  for state buffers: ``fn``'s outputs are materialized (fenced also for
  leaves already wide, so that their consumers read them instead of
  recomputing ``fn``), which is free for a buffer the state keeps anyway.
  Where XLA:CPU drops the fences before it fuses loops (`_fences_hold`:
  the XLAs of jax 0.10.2 and 0.5.3), the leaves keep their shape, as in
  optax: the loops run scalar on a small minor dimension, which costs less
  than the copies the dropped fences leave. Other platforms (their loop
  emitters are not sensitive to the layout) run ``fn`` as it is; ``enabled=False`` (a non-scalar hyper-parameter that must
  broadcast against the leaf's real shape) keeps the shape too.
  ``fence_wide=False`` runs ``fn`` as it is on leaves that keep their shape.

  Sharded leaves keep their shape, by our design: a view that merged a
  dimension split across devices would make XLA gather the whole leaf on
  every device and return it replicated, undoing FSDP. Where the leaves or
  their types tell the split (`_leaf_split`: concrete arrays, explicit-axes
  meshes, one device), the view is taken unless a merged dimension is split;
  a split of its first merged dimension stays contiguous. Where they do not
  (traced leaves on an auto mesh, the default of ``jax.sharding.Mesh``, or
  without a mesh in their type), the view is taken only in a program that is
  not partitioned, which is known when it is lowered (`_unpartitioned_p`):
  one device under ``jax.jit``, ``jax.pmap``, or inside a ``shard_map`` over
  every axis. A partitioned program on an auto mesh runs ``fn`` on the
  leaves' own shape, its loops on their minor dimension, replicated leaves
  included (XLA's split is chosen after tracing).
  """
  shape = tuple(leaves[0].shape)
  flat = _flat_shape(shape) if enabled else shape
  if flat == shape:
    return _on_cpu_views(fn, leaves, shape, fence_wide)
  splits = [_leaf_split(x, len(flat) - 1) for x in leaves]
  if any(splits):
    return _on_cpu_views(fn, leaves, shape, fence_wide)
  if all(s is False for s in splits):
    return _on_cpu_views(fn, leaves, flat, fence_wide)
  # Known when lowering.
  return tuple(jax.lax.switch(_unpartitioned_p.bind(), [
      lambda *xs: _on_cpu_views(fn, list(xs), shape, fence_wide),
      lambda *xs: _on_cpu_views(fn, list(xs), flat, fence_wide)], *leaves))


def _is_scalar(value: Any) -> bool:
  return callable(value) or np.ndim(value) == 0


def _brief_structure(tree: Any, limit: int = 160) -> str:
  text = str(jax.tree.structure(tree))
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _mask_tree(where: str, mask: MaskOrFn, tree: Any) -> Any:
  """The mask as a tree (a callable is called), checked against `tree`.

  As in optax, the mask's structure must be the tree's or a prefix of it;
  otherwise a ValueError names ``weight_decay_mask`` and shows both
  structures (optax's own error names neither).
  """
  mask_tree = mask(tree) if callable(mask) else mask
  try:
    jax.tree.map(lambda m, sub: None, mask_tree, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"{where}: weight_decay_mask must have the parameters' tree "
        "structure (or a prefix of it), one bool per parameter; got a mask "
        f"of structure {_brief_structure(mask_tree)} for parameters of "
        f"structure {_brief_structure(tree)}.") from e
  return mask_tree


def _mask_leaves(where: str, mask: MaskOrFn, updates: Any) -> list[bool]:
  """optax.masked's reading of a mask: one bool per leaf of `updates`."""
  if mask is None:
    return [True] * len(jax.tree.leaves(updates))
  tree = _mask_tree(where, mask, updates)
  full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub),
                      tree, updates)
  return [bool(m) for m in jax.tree.leaves(full)]


def _is_float16(x: Any) -> bool:
  return getattr(x, "dtype", None) == jnp.float16


def _moment_dtype(dtype: Any) -> Any:
  """The dtype a second moment (a running mean of squares) is kept in.

  float32 for float16 leaves: float16 cannot hold a squared gradient below
  about 6e-8 (``(1 - b2) * d**2`` of a ``|d| < 8e-3`` underflows to 0 at
  ``b2 = 0.999``), so ``m / (sqrt(v) + eps)`` would divide by 0 (eps 1e-8
  is 0 in float16 too). Every other dtype keeps its own (bfloat16 has
  float32's range).
  """
  return jnp.float32 if dtype == jnp.float16 else dtype


def _advance(stage_state: Any) -> Any:
  """The next state of a stage whose state is empty or a step count only."""
  if not jax.tree.leaves(stage_state):
    return stage_state
  return stage_state._replace(count=optax.safe_increment(stage_state.count))


# --------------------------------------------------------------------------
# Transformations.


def gaf(
    alpha: optax.ScalarOrSchedule = 0.3,
    beta: optax.ScalarOrSchedule = 4.5,
    fn: FnLike = "arctan",
) -> optax.GradientTransformationExtraArgs:
  r"""Applies a gradient activation function elementwise to every leaf.

  Each update ``u`` becomes ``alpha * fn(beta * u)``. With ``fn="arctan"``
  the output is bounded by ``alpha * pi / 2`` and has slope ``alpha * beta``
  at 0; ``"tanh"`` is bounded by ``alpha``; ``"log"`` is
  ``alpha * sign(u) * log1p(beta * |u|)``, unbounded. The function is applied
  to each element independently (never to a global norm).

  Computation happens in float32 for bf16/f16 leaves (float64 stays float64)
  and the result has the leaf's dtype. ``"arctan"`` uses :func:`fast_arctan`
  for float32, accurate to 2.5 ulp.

  Non-finite updates: arctan and tanh map ``+-inf`` to ``+-bound``, log keeps
  ``+-inf``; NaN stays NaN for every function.

  Place it where the paper does: before momentum for SGD_atan and
  Adam_atan, after momentum for SGD_atanMom (see :func:`sgd_gaf`). To shape
  only some layers, wrap it in :func:`optax.masked`. In front of Adam prefer
  :func:`adam_gaf`: on CPU it is faster than
  ``optax.chain(gaf(), optax.adam(...))`` (its arctan stays fused into both
  moments, with no parameter-sized temporary; figures in the benchmarks
  guide, docs/guides/benchmarks.md).

  ``alpha`` and ``beta`` are one value for every leaf: a number, or an array
  that broadcasts to every leaf's shape without changing it (e.g. shape
  ``(n,)`` for leaves whose last axis is ``n``); anything that would change a
  leaf's shape is a ValueError in ``init``/``update``. A pytree of per-leaf
  values is not supported: give layers different values with
  :func:`optax.partition`. Leaves must have a floating dtype (TypeError
  otherwise).

  Args:
    alpha: output scale; a positive finite float, array or optax schedule.
    beta: input scale; a positive finite float, array or optax schedule.
    fn: ``"arctan"``, ``"tanh"``, ``"log"`` or an elementwise callable
      (ideally odd, monotone and bounded, with slope 1 at 0).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (``update`` ignores
    extra keyword arguments). Its state is empty, or a :class:`GafState`
    step count when ``alpha`` or ``beta`` is a schedule.

  Raises:
    ValueError: ``alpha`` or ``beta`` is a static number or array that is not
      positive and finite, or ``fn`` is unknown.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import gaf_optax
    >>> opt = optax.chain(gaf_optax.gaf(alpha=0.1, beta=20.0), optax.adam(1e-3))
    >>> params = {'w': jnp.ones(3)}
    >>> state = opt.init(params)
    >>> grads = {'w': jnp.array([1e-4, -1.0, 100.0])}
    >>> shaped, _ = gaf_optax.gaf(alpha=0.1, beta=20.0).update(grads, None)
    >>> [round(float(v), 5) for v in shaped['w']]  # slope 2 at 0, bound 0.157
    [0.0002, -0.15208, 0.15703]

    Shaping only the weight matrices of a model:

    >>> mask = {'w': True, 'b': False}
    >>> opt = optax.chain(optax.masked(gaf_optax.gaf(), mask), optax.sgd(0.1))

  References:
    Liu et al., `Activated Gradients for Deep Neural Networks
    <https://arxiv.org/abs/2107.04228>`_, IEEE TNNLS.
  """
  return _gaf(alpha, beta, fn, fusible=False, where="gaf")


def _gaf(alpha, beta, fn, *, fusible: bool,
         where: str) -> optax.GradientTransformationExtraArgs:
  """`gaf`; `fusible` picks the arctan for a value with several consumers.

  `where` is the public function the user called, for error messages.
  """
  act = _resolve_fn(where, fn, allowed=("arctan", "tanh", "log"),
                    fusible=fusible)
  _check_positive(where, "alpha", alpha)
  _check_positive(where, "beta", beta)
  scheduled = callable(alpha) or callable(beta)
  static_scales = {k: v for k, v in (("alpha", alpha), ("beta", beta))
                   if not callable(v)}

  def shape_leaf(u, a, b):
    u = jnp.asarray(u)
    cdt = _compute_dtype(u.dtype)
    a = jnp.asarray(a, cdt)
    b = jnp.asarray(b, cdt)
    return (a * act(b * u.astype(cdt))).astype(u.dtype)

  def apply(updates, a, b):
    _check_leaves(where, "update", updates, {"alpha": a, "beta": b})
    return jax.tree.map(lambda u: shape_leaf(u, a, b), updates)

  def init_fn(params):
    _check_leaves(where, "parameter", params, static_scales)
    if not scheduled:
      return optax.EmptyState()
    return GafState(count=jnp.zeros([], jnp.int32))

  if not scheduled:

    def update_fn(updates, state, params=None, **extra_args):
      del params, extra_args
      return apply(updates, alpha, beta), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    a = alpha(state.count) if callable(alpha) else alpha
    b = beta(state.count) if callable(beta) else beta
    return apply(updates, a, b), GafState(optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adaptive_gaf(
    shrink: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike,
) -> optax.GradientTransformationExtraArgs:
  r"""Adaptive arctan GAF, with scale and bound set per leaf and per step.

  For each leaf ``d``: ``m = max|d|``, ``alpha_t = 2 m / (pi * shrink)``,
  ``beta_t = gamma / alpha_t`` and the output is
  ``alpha_t * arctan(beta_t * d)``. So the output is bounded by
  ``m / shrink`` and its slope at 0 is ``gamma``. This is the rule of the
  official ``SGD_atanMom_Ada`` optimizer (use it through
  ``sgd_gaf(..., fn="adaptive", shrink=..., gamma=...)``).

  Deviation from the official code, by our design: the official code uses the
  signed ``max(d)``; we use ``max|d|``, the magnitude that sets the bound.
  Since arctan is odd, the two agree whenever ``max(d) == max|d|`` and our
  version never divides by a zero or negative maximum. A leaf that is all
  zeros maps to zeros (no NaN).

  Non-finite input: NaN anywhere in a leaf makes the whole leaf NaN, and so
  does ``+-inf`` (the bound ``m / shrink`` is then infinite); a non-finite
  gradient is never silently replaced.

  Args:
    shrink: a positive finite number or array (not a schedule); the output
      bound is ``max|d| / shrink``.
    gamma: a positive finite number or array (not a schedule); the slope at
      0. Arrays must broadcast to every leaf's shape without changing it.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with an empty state.

  Raises:
    ValueError: ``shrink`` or ``gamma`` is a schedule, or a static value that
      is not positive and finite.

  Example:
    >>> import jax.numpy as jnp
    >>> import gaf_optax
    >>> tx = gaf_optax.adaptive_gaf(shrink=2.0, gamma=1.0)
    >>> out, _ = tx.update({'w': jnp.array([-4.0, 1e-3, 0.0])}, tx.init(None))
    >>> [round(float(v), 4) for v in out['w']]  # bound max|d|/shrink = 2
    [-1.6076, 0.001, 0.0]

  References:
    Liu et al., `Activated Gradients for Deep Neural Networks
    <https://arxiv.org/abs/2107.04228>`_, IEEE TNNLS.
  """
  return _adaptive_gaf(shrink, gamma, where="adaptive_gaf")


def _adaptive_gaf(shrink, gamma, *,
                  where: str) -> optax.GradientTransformationExtraArgs:
  """`adaptive_gaf`; `where` is the public function, for error messages."""
  # Numbers or arrays only: a schedule is not offered (the rule already
  # rescales every step from max|d|), and one is refused with this message.
  _check_positive(where, "shrink", shrink, schedule_ok=False)
  _check_positive(where, "gamma", gamma, schedule_ok=False)
  scales = {"shrink": shrink, "gamma": gamma}

  def init_fn(params):
    _check_leaves(where, "parameter", params, scales)
    return optax.EmptyState()

  def shape_leaf(d):
    d = jnp.asarray(d)
    if d.size == 0:
      return d
    cdt = _compute_dtype(d.dtype)
    x = d.astype(cdt)
    m = jnp.max(jnp.abs(x))
    is_zero = m == 0
    # Same operation order as the official code: alpha = m*2/(pi*shrink).
    alpha = jnp.where(is_zero, 1.0, m) * 2 / (math.pi * jnp.asarray(shrink, cdt))
    beta = jnp.asarray(gamma, cdt) / alpha
    out = jnp.where(is_zero, jnp.zeros_like(x), alpha * fast_arctan(beta * x))
    return out.astype(d.dtype)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _check_leaves(where, "update", updates, scales)
    return jax.tree.map(shape_leaf, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------
# The authors' optimizers as chains.


def _decay(where: str, weight_decay: Any,
           mask: MaskOrFn) -> list[optax.GradientTransformation]:
  """Coupled L2 decay (``d += wd * p``), as in the official optimizers.

  As in optax, the stage is absent when ``weight_decay`` is None, never
  because of its value: the state's structure must not depend on whether
  the value was injected (``optax.inject_hyperparams``).
  """
  if weight_decay is None:
    if mask is not None:
      raise ValueError(f"{where}: weight_decay_mask needs a weight_decay; got "
                       "weight_decay=None.")
    return []
  _check_non_negative(where, "weight_decay", weight_decay)
  stage = optax.add_decayed_weights(weight_decay, mask)
  if mask is None:
    return [stage]

  # The same stage, with the mask's structure checked first (a clear error).
  def init_fn(params):
    _mask_tree(where, mask, params)
    return stage.init(params)

  def update_fn(updates, state, params=None):
    _mask_tree(where, mask, updates)
    return stage.update(updates, state, params)

  return [optax.GradientTransformation(init_fn, update_fn)]


def _momentum(momentum: Any,
              nesterov: bool) -> list[optax.GradientTransformation]:
  # PyTorch starts its buffer at the first d; optax.trace starts at 0 and adds
  # d, which is the same. As in optax.sgd, None keeps no buffer; any number
  # (0 included) keeps one.
  if momentum is None:
    return []
  return [optax.trace(decay=momentum, nesterov=nesterov)]


def _shaping(where: str, fn: SgdFnLike, alpha, beta, shrink, gamma):
  if isinstance(fn, str) and fn == "adaptive":
    if shrink is None or gamma is None:
      raise ValueError(f'{where}: fn="adaptive" needs both shrink and gamma; '
                       f"got shrink={shrink!r}, gamma={gamma!r}.")
    return _adaptive_gaf(shrink, gamma, where=where)
  if shrink is not None or gamma is not None:
    raise ValueError(f'{where}: shrink and gamma only apply with '
                     f'fn="adaptive"; got fn={fn!r}.')
  _resolve_fn(where, fn, allowed=("arctan", "tanh", "log", "adaptive"))
  return _gaf(alpha, beta, fn, fusible=False, where=where)


def sgd_gaf(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: MaskOrFn = None,
    alpha: optax.ScalarOrSchedule = 0.3,
    beta: optax.ScalarOrSchedule = 4.5,
    fn: SgdFnLike = "arctan",
    position: Position = "momentum",
    shrink: jax.typing.ArrayLike | None = None,
    gamma: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and a gradient activation function (GAF).

  Reproduces the official PyTorch optimizers of the GAF paper (dampening 0):

  * ``position="gradient"``: ``SGD_atan``. GAF acts on the raw gradient, then
    coupled weight decay, momentum and the learning rate:
    ``chain(gaf, add_decayed_weights, trace, scale(-lr))``.
  * ``position="momentum"`` (default): ``SGD_atanMom`` (``fn="arctan"``),
    ``SGD_tanh_Mom`` (``"tanh"``), ``SGD_log_Mom`` (``"log"``). Weight decay
    and momentum first, GAF on the momentum output (the buffer itself stays
    raw): ``chain(add_decayed_weights, trace, gaf, scale(-lr))``.
  * ``fn="adaptive"`` with ``shrink`` and ``gamma``: ``SGD_atanMom_Ada``
    (see :func:`adaptive_gaf` for its documented deviation).

  The state holds exactly what ``optax.sgd(learning_rate, momentum)`` holds:
  one momentum buffer per parameter (none if ``momentum`` is None) and a
  step count only if a schedule needs one. GAF itself keeps no state. As in
  optax, a stage is left out only when its argument is None, never because
  of its value, so ``optax.inject_hyperparams(sgd_gaf)`` has the same state
  structure as ``sgd_gaf``. Under ``inject_hyperparams`` pass callables
  (``fn``, ``weight_decay_mask``) in ``static_args``, or they are taken for
  schedules.

  Non-finite gradients are not checked (a check would cost a host sync per
  step, or skip steps silently). With ``momentum > 0`` and
  ``position="momentum"``, an ``inf`` gradient element makes its buffer
  element ``inf`` for ever (``momentum * inf + g`` stays ``inf``): every later
  update of it is the saturated value, ``-lr * alpha * pi / 2`` for arctan
  (``-lr * alpha`` for tanh, ``-inf`` for log; the sign flips for ``-inf``;
  with ``fn="adaptive"`` its whole leaf is NaN), whatever the later
  gradients, even reversed ones. A NaN
  gradient, or an ``inf`` of the other sign later, makes the buffer NaN for
  ever, and so every later update. With ``position="gradient"`` arctan and
  tanh bound an ``inf`` before the buffer, but a NaN still stays in it.
  Remedies: ``optax.apply_if_finite(sgd_gaf(...), max_consecutive_errors)``
  skips a non-finite step (parameters and buffer unchanged), and
  :class:`gaf_optax.training.Trainer` stops the run with an error at the
  first non-finite step, or rides out up to ``skip_nonfinite_steps``
  consecutive ones.

  Args:
    learning_rate: a non-negative finite float or an optax schedule.
    momentum: momentum coefficient in ``[0, 1]``, or None for no momentum
      buffer (as ``optax.sgd``). 1 is allowed (the buffer never decays), > 1
      is refused (the buffer would grow geometrically). A number or array,
      not a schedule.
    nesterov: Nesterov momentum, as in PyTorch (``d + momentum * buf``).
    weight_decay: coupled L2 coefficient added to the gradient, >= 0, or
      None (default) for no decay stage.
    weight_decay_mask: which parameters decay, in optax's mask convention
      (as :func:`optax.add_decayed_weights`): a pytree of bools like the
      params, or a callable returning one. None decays every parameter.
    alpha: GAF output scale (positive finite float, array or schedule; see
      :func:`gaf` for the shapes accepted); not used with ``fn="adaptive"``,
      which sets it per leaf and step.
    beta: GAF input scale (positive finite float, array or schedule); not
      used with ``fn="adaptive"``.
    fn: ``"arctan"``, ``"tanh"``, ``"log"``, ``"adaptive"`` or a callable.
    position: ``"momentum"`` or ``"gradient"``, where GAF is applied.
    shrink: only with ``fn="adaptive"``: output bound is ``max|d|/shrink``.
    gamma: only with ``fn="adaptive"``: slope at 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Raises:
    ValueError: a static argument is out of range (the message names it),
      or the arguments do not go together (``shrink`` without
      ``fn="adaptive"``, ``nesterov`` without momentum,
      ``weight_decay_mask`` without ``weight_decay``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax, gaf_optax
    >>> params = {'w': jnp.array([1.0, -2.0])}
    >>> loss = lambda p: jnp.sum(p['w'] ** 2)
    >>> opt = gaf_optax.sgd_gaf(0.1, momentum=0.9, weight_decay=5e-4)
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...   updates, state = opt.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> [round(float(v), 4) for v in params['w']]
    [0.865, -1.8618]

    Decaying only the kernels (leaves with more than one dimension):

    >>> opt = gaf_optax.sgd_gaf(
    ...     0.1, weight_decay=5e-4,
    ...     weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

  References:
    Liu et al., `Activated Gradients for Deep Neural Networks
    <https://arxiv.org/abs/2107.04228>`_, IEEE TNNLS.
  """
  where = "sgd_gaf"
  _check_non_negative(where, "learning_rate", learning_rate)
  if momentum is not None:
    _check_momentum(where, momentum)
  if position not in ("momentum", "gradient"):
    raise ValueError(f"{where}: position must be 'momentum' or 'gradient'; "
                     f"got {position!r}.")
  if nesterov and momentum is None:
    raise ValueError(f"{where}: nesterov=True needs a momentum; got "
                     "momentum=None.")
  shaping = _shaping(where, fn, alpha, beta, shrink, gamma)
  decay_stage = _decay(where, weight_decay, weight_decay_mask)
  trace_stage = _momentum(momentum, nesterov)
  core = decay_stage + trace_stage
  if position == "gradient":
    parts = [shaping] + core
  else:
    parts = core + [shaping]
  lr_stage = optax.scale_by_learning_rate(learning_rate)
  chain = optax.chain(*parts, lr_stage)
  if not trace_stage:
    return chain  # No state to compute per leaf: XLA fuses the chain whole.
  # With a momentum buffer, the chain's stages run per leaf in one function,
  # on wide views on CPU (see _on_flat_views); the state is the chain's.
  kinds = [("shaping" if t is shaping else "decay" if t in decay_stage
            else "trace") for t in parts]
  scalars = [v for v in (alpha, beta, shrink, gamma, weight_decay, momentum)
             if v is not None]
  flat_ok = all(_is_scalar(v) for v in scalars)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    *stage_states, lr_state = state
    states = dict(zip(kinds, stage_states))
    if decay_stage and params is None:
      raise ValueError(f"{where}: weight_decay needs the params in update.")
    decays = (_mask_leaves(where, weight_decay_mask, updates) if decay_stage
              else [False] * len(jax.tree.leaves(updates)))
    treedef = jax.tree.structure(updates)
    g_leaves = [jnp.asarray(g) for g in jax.tree.leaves(updates)]
    p_leaves = (jax.tree.leaves(params) if params is not None
                else [None] * len(g_leaves))
    bufs = jax.tree.leaves(states["trace"].trace)
    # The plain SGD_atan buffer is the update itself: no second output.
    buf_is_out = position == "gradient" and not nesterov

    def leaf_fn(g, buf, *p):
      x = {"x": g}
      for kind in kinds:
        if kind == "shaping":
          x, _ = shaping.update(x, states["shaping"])
        elif kind == "decay":
          if p:  # optax.add_decayed_weights's arithmetic
            x = {"x": x["x"] + weight_decay * p[0]}
        else:
          x, new_trace = trace_stage[0].update(
              x, optax.TraceState(trace={"x": buf}))
      new_buf = new_trace.trace["x"]
      return (new_buf,) if buf_is_out else (new_buf, x["x"])

    new_bufs, outs = [], []
    for g, buf, p, dec in zip(g_leaves, bufs, p_leaves, decays, strict=True):
      res = _on_flat_views(leaf_fn, [g, buf] + ([p] if dec else []),
                           enabled=flat_ok, fence_wide=False)
      new_bufs.append(res[0])
      outs.append(res[0] if buf_is_out else res[1])
    new_updates, lr_state = lr_stage.update(
        jax.tree.unflatten(treedef, outs), lr_state)
    new_states = []
    for kind, st in zip(kinds, stage_states):
      if kind == "trace":
        new_states.append(optax.TraceState(
            trace=jax.tree.unflatten(treedef, new_bufs)))
      else:
        new_states.append(_advance(st))
    return new_updates, (*new_states, lr_state)

  return optax.GradientTransformationExtraArgs(chain.init, update_fn)


def _scale_by_adam_eps_first(b1, b2, eps, mu_dtype=None):
  """Adam moments with eps added before bias correction (official Adam_atan).

  ``m / (sqrt(v) + eps) * sqrt(1 - b2**t) / (1 - b1**t)``; the state is
  :class:`optax.ScaleByAdamState`, the same as :func:`optax.scale_by_adam`'s.
  """

  def init_fn(params):
    return optax.ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.result_type(float))
    # 1 - b**t as -expm1(t * log1p(-(1 - b))): accurate in float32 too, where
    # the plain form loses up to 1e-4 relative for b2 = 0.999 at small t.
    bc1 = -jnp.expm1(t * jnp.log1p(-(1 - b1)))
    bc2 = -jnp.expm1(t * jnp.log1p(-(1 - b2)))
    step_size = jnp.sqrt(bc2) / bc1
    updates = jax.tree.map(
        lambda m, v, u: (step_size * (m / (jnp.sqrt(v) + eps))).astype(u.dtype),
        mu, nu, updates)
    return updates, optax.ScaleByAdamState(
        count=count, mu=optax.tree.cast(mu, mu_dtype),
        nu=optax.tree.cast_like(nu, state.nu))

  return optax.GradientTransformation(init_fn, update_fn)


def adam_gaf(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: MaskOrFn = None,
    alpha: optax.ScalarOrSchedule = 0.1,
    beta: optax.ScalarOrSchedule = 15.0,
    fn: FnLike = "arctan",
    mu_dtype: Any | None = None,
    eps_before_bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with a gradient activation function: the official ``Adam_atan``.

  GAF acts on the raw gradient, before coupled L2 weight decay and both
  moments: ``chain(gaf, add_decayed_weights, scale_by_adam, scale(-lr))``.

  Our choice of default: the moments use standard optax Adam, which adds
  ``eps`` after bias correction. The official code adds it before,
  ``m / (sqrt(v) + eps) * sqrt(1 - b2**t) / (1 - b1**t)``; pass
  ``eps_before_bias_correction=True`` to reproduce that exactly. The two
  differ only where ``|gaf(g)|`` is not much larger than ``eps`` (below 1e-3
  relative in our reference test once ``|g| >= 1e-3``).

  float16 parameters, by our design: the second moment of a float16 leaf is
  kept in float32 and the update computed in float32, then rounded to
  float16. In float16, ``(1 - b2) * d**2`` underflows to 0 for ``|d| <
  8e-3`` (and ``eps=1e-8`` is 0), so ``optax.adam`` returns ``-inf`` there;
  this costs 2 bytes of state more per float16 parameter. The first moment
  stays in ``mu_dtype`` (the parameter's dtype by default, as in optax):
  below about 6e-5 it is subnormal in float16 and loses precision, so pass
  ``mu_dtype=jnp.float32`` for float16 parameters with small gradients.
  Other dtypes (bfloat16 has float32's range) keep their own, and their
  results are unchanged.

  Args:
    learning_rate: a non-negative finite float or an optax schedule.
    b1: decay of the first moment, in ``[0, 1)``.
    b2: decay of the second moment, in ``[0, 1)``.
    eps: added to the root of the second moment, > 0.
    weight_decay: coupled L2 coefficient added after GAF, >= 0, or None
      (default) for no decay stage.
    weight_decay_mask: which parameters decay: a pytree of bools like the
      params or a callable returning one (optax's mask convention); None
      decays every parameter.
    alpha: GAF output scale (the official default is 0.1); as in :func:`gaf`.
    beta: GAF input scale (the official default is 15); as in :func:`gaf`.
    fn: ``"arctan"``, ``"tanh"``, ``"log"`` or a callable.
    mu_dtype: optional dtype of the first moment, as in :func:`optax.adam`.
      Our design: the update reads the stored (rounded) first moment, where
      ``optax.adam`` uses this step's unrounded one (they differ by the
      rounding of ``mu_dtype``).
    eps_before_bias_correction: add ``eps`` before bias correction, exactly
      as the official ``Adam_atan`` does (default False: optax's Adam).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import gaf_optax
    >>> opt = gaf_optax.adam_gaf(1e-3)
    >>> params = {'w': jnp.zeros(2)}
    >>> updates, _ = opt.update({'w': jnp.array([1e-3, 3.0])}, opt.init(params))
    >>> [round(float(v), 6) for v in updates['w']]  # first Adam step: -lr*sign
    [-0.001, -0.001]

  References:
    Liu et al., `Activated Gradients for Deep Neural Networks
    <https://arxiv.org/abs/2107.04228>`_, IEEE TNNLS.
  """
  where = "adam_gaf"
  _check_non_negative(where, "learning_rate", learning_rate)
  _check_decay(where, "b1", b1)
  _check_decay(where, "b2", b2)
  _check_positive(where, "eps", eps, schedule_ok=False)
  decay_stage = _decay(where, weight_decay, weight_decay_mask)
  moments = (_scale_by_adam_eps_first if eps_before_bias_correction
             else optax.scale_by_adam)
  # The chain this preset is; its update below computes the same in one pass
  # per leaf. The chain gives the state (structure and init).
  stages = [_gaf(alpha, beta, fn, fusible=True, where=where), *decay_stage,
            moments(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
            optax.scale_by_learning_rate(learning_rate)]
  chain = optax.chain(*stages)
  act = _resolve_fn(where, fn, allowed=("arctan", "tanh", "log"))
  # arctan and log are odd by construction (copysign of a function of |x|).
  magnitude = _MAGNITUDES.get(fn) if isinstance(fn, str) else None
  wd = weight_decay

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    gaf_state, *decay_states, adam_state, lr_state = state
    count = getattr(gaf_state, "count", None)
    a = alpha(count) if callable(alpha) else alpha
    b = beta(count) if callable(beta) else beta
    _check_leaves(where, "update", updates, {"alpha": a, "beta": b})
    if decay_stage and params is None:
      raise ValueError(f"{where}: weight_decay needs the params in update.")
    decays = (_mask_leaves(where, weight_decay_mask, updates) if decay_stage
              else [False] * len(jax.tree.leaves(updates)))
    flat_ok = all(_is_scalar(v) for v in (a, b, wd, b1, b2))
    step = optax.safe_increment(adam_state.count)

    def moments_of(g, mu, nu, *p):
      # One pass per buffer. GAF has two consumers here and each computes it
      # itself (XLA:CPU has no multi-output fusion; a shared GAF would be
      # written to memory and read back twice). So that XLA does not merge
      # the two computations, the second moment's starts from a different
      # expression, b * |x|. Without decay it squares GAF, so for arctan and
      # log it takes the magnitude alone: (a * |fn(b * |x|)|)**2 equals
      # (a * fn(b * x))**2 bit for bit, with less arithmetic.
      cdt = _compute_dtype(g.dtype)
      x = g.astype(cdt)
      ac, bc = jnp.asarray(a, cdt), jnp.asarray(b, cdt)
      d1 = ac * act(bc * x)
      odd = magnitude is not None
      if p:
        p_c = jnp.asarray(wd, cdt) * p[0].astype(cdt)
        d2 = (ac * act(bc * jnp.abs(x))) * jnp.sign(x) if odd else d1
        d1, d2 = d1 + p_c, d2 + p_c
      else:
        d2 = ac * magnitude(bc * jnp.abs(x)) if odd else d1
      # optax.tree.update_moment(_per_elem_norm)'s arithmetic.
      mu_new = (1 - b1) * d1 + b1 * mu.astype(cdt)
      nu_new = (1 - b2) * (d2 * d2) + b2 * nu.astype(cdt)
      return mu_new.astype(mu.dtype), nu_new.astype(nu.dtype)

    treedef = jax.tree.structure(updates)
    # jnp.asarray: Python-float leaves, as the other presets take them.
    g_leaves = [jnp.asarray(g) for g in jax.tree.leaves(updates)]
    p_leaves = ([jnp.asarray(p) for p in jax.tree.leaves(params)]
                if params is not None else [None] * len(g_leaves))
    mus, nus = [], []
    for g, mu, nu, p, dec in zip(
        g_leaves, jax.tree.leaves(adam_state.mu),
        jax.tree.leaves(adam_state.nu), p_leaves, decays, strict=True):
      leaves = [g, mu, nu] + ([p] if dec else [])
      mu_new, nu_new = _on_flat_views(moments_of, leaves, enabled=flat_ok)
      mus.append(mu_new)
      nus.append(nu_new)

    # A float16 leaf's direction is computed in float32 (its second moment
    # is float32, see _moment_dtype) and only the result rounded to float16.
    mus_d = [m.astype(jnp.float32) if _is_float16(g) else m
             for m, g in zip(mus, g_leaves)]
    t = step.astype(jnp.result_type(float))
    if eps_before_bias_correction:
      bc1 = -jnp.expm1(t * jnp.log1p(-(1 - b1)))
      bc2 = -jnp.expm1(t * jnp.log1p(-(1 - b2)))
      step_size = jnp.sqrt(bc2) / bc1
      direction = [(step_size * (m / (jnp.sqrt(v) + eps))).astype(g.dtype)
                   for m, v, g in zip(mus_d, nus, g_leaves)]
    else:
      # optax.scale_by_adam's bias correction, with one square root and one
      # division per element (they run in the caller's update loop).
      inv_bc1 = 1 / (1 - b1**step)
      inv_sqrt_bc2 = jax.lax.rsqrt(1 - b2**step)
      direction = [((m * inv_bc1) / (jnp.sqrt(v) * inv_sqrt_bc2 + eps)
                    ).astype(g.dtype)
                   for m, v, g in zip(mus_d, nus, g_leaves)]
    new_updates, lr_state = stages[-1].update(
        jax.tree.unflatten(treedef, direction), lr_state)
    new_adam = optax.ScaleByAdamState(
        count=step, mu=jax.tree.unflatten(treedef, mus),
        nu=jax.tree.unflatten(treedef, nus))
    return new_updates, (_advance(gaf_state),
                         *[_advance(s) for s in decay_states], new_adam,
                         lr_state)

  def init_fn(params):
    *head, adam_state, lr_state = chain.init(params)
    nu = jax.tree.map(lambda v: v.astype(_moment_dtype(v.dtype))
                      if _is_float16(v) else v, adam_state.nu)
    return (*head, adam_state._replace(nu=nu), lr_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _float16_in_float32(
    inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """``inner`` with its float16 leaves (state and arithmetic) in float32.

  For a stage that keeps a second moment (see `_moment_dtype`): its float16
  inputs are upcast, its outputs rounded back to float16. Other leaves pass
  to ``inner`` as they are, so its result on them is unchanged bit for bit.
  """

  def up(x):
    return jnp.asarray(x).astype(jnp.float32) if _is_float16(x) else x

  def init_fn(params):
    return inner.init(jax.tree.map(up, params))

  def update_fn(updates, state, params=None):
    out, state = inner.update(jax.tree.map(up, updates), state, params)
    out = jax.tree.map(lambda o, u: o.astype(u.dtype) if _is_float16(u)
                       else o, out, updates)
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def rmsprop_gaf(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    momentum: jax.typing.ArrayLike | None = None,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: MaskOrFn = None,
    alpha: optax.ScalarOrSchedule = 0.7,
    beta: optax.ScalarOrSchedule = 0.7,
    fn: FnLike = "arctan",
) -> optax.GradientTransformationExtraArgs:
  r"""RMSprop (PyTorch semantics) with a gradient activation function.

  ``chain(gaf, add_decayed_weights, scale_by_rms, trace, scale(-lr))``, i.e.
  ``v = decay * v + (1 - decay) * d**2``,
  ``buf = momentum * buf + d / (sqrt(v) + eps)``, ``p -= lr * buf``, with
  ``d = gaf(g) + weight_decay * p``, as in ``torch.optim.RMSprop``.

  Our design: the official repository contains an RMSprop with a hard-coded
  ``0.7 * atan(0.7 * g)`` that its training scripts do not use; we expose the
  same placement (GAF first) and those values as defaults.

  float16 parameters, by our design: the second moment ``v`` of a float16
  leaf is kept in float32 and ``d / (sqrt(v) + eps)`` computed in float32,
  then rounded to float16 (2 bytes of state more per float16 parameter). In
  float16 ``v`` underflows to 0 for small gradients and ``optax.rmsprop``
  returns ``inf``. Other dtypes keep their own.

  Args:
    learning_rate: a non-negative finite float or an optax schedule.
    decay: smoothing constant of the squared-gradient average (PyTorch
      ``alpha``), in ``[0, 1)``.
    eps: added to ``sqrt(v)``, > 0.
    momentum: momentum coefficient in ``[0, 1]``, or None (default) for no
      momentum buffer (as ``optax.rmsprop``); 1 is allowed (no decay), > 1 is
      refused.
    weight_decay: coupled L2 coefficient, >= 0, or None (default) for no
      decay stage.
    weight_decay_mask: which parameters decay (optax's mask convention: a
      pytree of bools or a callable returning one); None decays all.
    alpha: GAF output scale; as in :func:`gaf`.
    beta: GAF input scale; as in :func:`gaf`.
    fn: ``"arctan"``, ``"tanh"``, ``"log"`` or a callable.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> import gaf_optax
    >>> opt = gaf_optax.rmsprop_gaf(1e-2)
    >>> params = {'w': jnp.zeros(2)}
    >>> updates, _ = opt.update({'w': jnp.array([0.5, -2.0])}, opt.init(params))
    >>> [round(float(v), 4) for v in updates['w']]  # first step: -lr*sign(d)/0.1
    [-0.1, 0.1]
  """
  where = "rmsprop_gaf"
  _check_non_negative(where, "learning_rate", learning_rate)
  _check_decay(where, "decay", decay)
  _check_positive(where, "eps", eps, schedule_ok=False)
  if momentum is not None:
    _check_momentum(where, momentum)
  decay_stage = _decay(where, weight_decay, weight_decay_mask)
  return optax.chain(
      # Two consumers (the moments): the fusible arctan.
      _gaf(alpha, beta, fn, fusible=True, where=where),
      *decay_stage,
      _float16_in_float32(
          optax.scale_by_rms(decay=decay, eps=eps, eps_in_sqrt=False)),
      *_momentum(momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )
