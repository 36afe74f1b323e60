"""One contract, checked for every transformation and preset of gaf_optax.

Each case is a factory and its keyword arguments, so the same case can be
built plainly and through `optax.inject_hyperparams`. Methods added later
register their cases in CASES.

Besides our own checks, this covers what optax checks for its own optimizers
(optax/contrib/_common_test.py and _sharding_test.py): extra keyword
arguments in `update` without recompiling, `optax.tree.map_params`, 30,000
steps under `lax.scan` on four targets, equal updates AND states under
`inject_hyperparams`, dtype stability under `lax.cond` (f16, bf16, f32,
f64), `init` on `jax.ShapeDtypeStruct`, stable state types under an
explicit-sharding mesh, and the bare transformations chained before optax's
common optimizers.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gaf_optax


@dataclasses.dataclass(frozen=True)
class Case:
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  # Bare shaping transformations are completed into an optimizer by this.
  complete: Callable[[optax.GradientTransformation],
                     optax.GradientTransformation] = lambda tx: tx
  static_args: tuple[str, ...] = ()
  # Injected hyperparameters are float32 arrays; Python floats are not
  # rounded first. For Adam's b2 = 0.999 that alone moves updates by ~7e-6
  # relative and the second moment by 1.3e-5 (1 - float32(0.999) is that far
  # from 1e-3; optax.adam vs inject_hyperparams(optax.adam) shows the same).
  inject_rtol: float = 1e-6
  # Overrides for the 30,000-step convergence test (presets: a learning
  # rate). GAF bounds every step, so the rate must let ~11 units be
  # travelled in 30,000 steps and Rosenbrock's curvature (~1000 at the
  # minimum) stay stable.
  converge: dict[str, Any] = dataclasses.field(default_factory=dict)

  def build(self, **overrides):
    return self.factory(**{**self.kwargs, **overrides})

  def optimizer(self, **overrides):
    return self.complete(self.build(**overrides))


def _with_sgd(tx):
  return optax.chain(tx, optax.sgd(0.01, momentum=0.9))


def _kernels(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _soft(x):
  return x / (1 + jnp.abs(x))


def _amplification_labels(params):
  # "b" is layer 1, every other leaf layer 0 (masked-out leaves are absent).
  return jax.tree_util.tree_map_with_path(
      lambda path, _: int(jax.tree_util.keystr(path) == "['b']"), params)


CASES = {
    "gaf_arctan": Case(gaf_optax.gaf, dict(alpha=0.3, beta=4.5), _with_sgd),
    "gaf_tanh": Case(gaf_optax.gaf, dict(alpha=0.3, beta=4.5, fn="tanh"),
                     _with_sgd),
    "gaf_log": Case(gaf_optax.gaf, dict(alpha=0.3, beta=4.5, fn="log"),
                    _with_sgd),
    "gaf_callable": Case(gaf_optax.gaf, dict(alpha=0.3, beta=4.5, fn=_soft),
                         _with_sgd, static_args=("fn",)),
    "gaf_schedule": Case(
        gaf_optax.gaf,
        dict(alpha=optax.linear_schedule(0.3, 0.1, 50), beta=4.5), _with_sgd),
    "adaptive_gaf": Case(gaf_optax.adaptive_gaf, dict(shrink=2.0, gamma=1.0),
                         _with_sgd),
    "sgd_gaf_momentum": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, weight_decay=1e-4),
        converge=dict(learning_rate=1e-3, weight_decay=None)),
    # Zero values keep their stages (the state must not depend on whether a
    # value was injected); None leaves them out.
    "sgd_gaf_zero_momentum_zero_decay": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.0, weight_decay=0.0),
        converge=dict(learning_rate=1e-2)),
    "sgd_gaf_no_momentum": Case(
        gaf_optax.sgd_gaf, dict(learning_rate=0.01, momentum=None),
        converge=dict(learning_rate=1e-2)),
    "sgd_gaf_masked_decay": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
             weight_decay_mask=_kernels),
        static_args=("weight_decay_mask",),
        converge=dict(learning_rate=1e-3, weight_decay=None,
                      weight_decay_mask=None)),
    "sgd_gaf_gradient": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, position="gradient"),
        converge=dict(learning_rate=1e-3)),
    # tanh bounds each step by lr * alpha: 1e-3 could not travel far enough.
    "sgd_gaf_nesterov_tanh": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, nesterov=True, fn="tanh"),
        converge=dict(learning_rate=3e-3)),
    "sgd_gaf_adaptive": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, fn="adaptive", shrink=2.0,
             gamma=1.0),
        converge=dict(learning_rate=1e-3)),
    "sgd_gaf_schedule": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=optax.cosine_decay_schedule(0.01, 300),
             momentum=0.9),
        converge=dict(learning_rate=optax.cosine_decay_schedule(
            3e-3, 30_000, alpha=0.3))),
    "adam_gaf": Case(gaf_optax.adam_gaf,
                     dict(learning_rate=0.01, weight_decay=1e-4),
                     inject_rtol=2e-5,
                     converge=dict(learning_rate=1e-3, weight_decay=None)),
    "adam_gaf_masked_decay": Case(
        gaf_optax.adam_gaf,
        dict(learning_rate=0.01, weight_decay=1e-4,
             weight_decay_mask=_kernels),
        static_args=("weight_decay_mask",), inject_rtol=2e-5,
        converge=dict(learning_rate=1e-3, weight_decay=None,
                      weight_decay_mask=None)),
    "adam_gaf_official_eps": Case(
        gaf_optax.adam_gaf,
        dict(learning_rate=0.01, eps_before_bias_correction=True),
        inject_rtol=2e-5, converge=dict(learning_rate=1e-3)),
    "rmsprop_gaf": Case(gaf_optax.rmsprop_gaf,
                        dict(learning_rate=0.003, momentum=0.5),
                        converge=dict(learning_rate=1e-3)),
    # The controller's weight-gradient variant needs no extra arguments;
    # labels are a function of the params so optax.masked can drop leaves.
    "amplification_weight_gradient": Case(
        gaf_optax.gradient_amplification,
        dict(num_layers=2, steps_per_epoch=2, start_epoch=1, selection="cv",
             labels=_amplification_labels),
        _with_sgd, static_args=gaf_optax.AMPLIFICATION_STATIC_ARGS),
    "amplification_random": Case(
        gaf_optax.gradient_amplification,
        dict(num_layers=2, steps_per_epoch=1, start_epoch=0,
             selection="random", ratio=0.5, key=jax.random.key(0),
             labels=_amplification_labels),
        _with_sgd, static_args=gaf_optax.AMPLIFICATION_STATIC_ARGS),
}
NAMES = sorted(CASES)


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {
      "w": jnp.asarray(rng.normal(size=(16, 4)), dtype),
      "b": jnp.asarray(rng.normal(size=(8,)), dtype),
      "s": jnp.asarray(rng.normal(), dtype),
  }


def _grads(t, dtype=jnp.float32):
  rng = np.random.default_rng([1, t])
  p = _params()
  return {k: jnp.asarray(rng.normal(size=v.shape) * 10.0 ** rng.uniform(
      -5, 0, size=v.shape), dtype) for k, v in p.items()}


def _run(opt, steps=5, dtype=jnp.float32, jit=True):
  params = _params(dtype)
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  out = []
  for t in range(steps):
    updates, state = update(_grads(t, dtype), state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return params, state, out


def _assert_trees_equal(a, b, rtol=0.0):
  """Leaves agree to `rtol` relative to each leaf's largest magnitude."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.shape == y.shape and x.dtype == y.dtype
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    err = np.max(np.abs(x - y), initial=0.0)
    assert err <= rtol * np.max(np.abs(y), initial=0.0), (err, np.abs(y).max())


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_compiles_once(name):
  opt = CASES[name].build()
  eager, _, _ = _run(opt, jit=False)
  jitted, _, _ = _run(opt, jit=True)
  _assert_trees_equal(eager, jitted, rtol=1e-6)

  params = _params()
  chex.clear_trace_counter()  # the counter is shared across parameters

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    return opt.update(grads, state, params)

  state = opt.init(params)
  for t in range(3):  # new values, same shapes: one trace only
    _, state = step(params, state, _grads(t))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_identical_updates_and_states(name):
  case = CASES[name]
  injected = optax.inject_hyperparams(
      case.factory, static_args=case.static_args)(**case.kwargs)
  p1, s1, u1 = _run(case.build())
  p2, s2, u2 = _run(injected)
  _assert_trees_equal(u1, u2, rtol=case.inject_rtol)
  _assert_trees_equal(p1, p2, rtol=case.inject_rtol)
  # The same state, structure included: a checkpoint of one restores into
  # the other. (inject_hyperparams evaluates a schedule itself and passes
  # the value, so a scheduled case has no inner step count, as with optax's
  # own schedules.)
  if not any(callable(v) for k, v in case.kwargs.items()
             if k not in case.static_args):
    assert jax.tree.structure(s2.inner_state) == jax.tree.structure(s1)
    _assert_trees_equal(s2.inner_state, s1, rtol=case.inject_rtol)
  # The hyperparameters really are state: changing one changes the update.
  # (Scheduled ones are recomputed each step, and alpha/beta are unused with
  # fn="adaptive", so pick one that is in force.)
  live = [k for k in ("learning_rate", "shrink", "alpha")
          if k in case.kwargs and not callable(case.kwargs[k])]
  if live:
    k = live[0]
    s2.hyperparams[k] = s2.hyperparams[k] * 2
    a, _ = injected.update(_grads(9), s2, p2)
    b, _ = injected.update(_grads(9), s2._replace(
        hyperparams={**s2.hyperparams, k: s2.hyperparams[k] / 2}), p2)
    assert not np.allclose(a["w"], b["w"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes_are_kept(name, dtype):
  params, state, updates = _run(CASES[name].build(), steps=2, dtype=dtype)
  for tree in (params, updates[-1]):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(dtype)}
  shapes = {x.shape for x in jax.tree.leaves(params)}
  for x in jax.tree.leaves(state):
    # Per-parameter buffers follow the parameter dtype (O(layers) statistics,
    # like the amplification controller's, are float32).
    if x.ndim and x.shape in shapes:
      assert x.dtype == dtype, (name, x.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_multi_steps_accumulates_then_applies(name):
  opt = CASES[name].build()
  ms = optax.MultiSteps(opt, every_k_schedule=2)
  params = _params()
  ms_state = ms.init(params)
  u0, ms_state = ms.update(_grads(0), ms_state, params)
  chex.assert_trees_all_equal(u0, jax.tree.map(jnp.zeros_like, params))
  u1, ms_state = ms.update(_grads(1), ms_state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, _grads(0), _grads(1))
  expected, _ = opt.update(mean, opt.init(params), params)
  _assert_trees_equal(u1, expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_masked_leaves_pass_through(name):
  opt = CASES[name].build()
  mask = {"w": True, "b": False, "s": True}
  masked = optax.masked(opt, mask)
  params = _params()
  out, _ = masked.update(_grads(0), masked.init(params), params)
  full, _ = opt.update({"w": _grads(0)["w"], "s": _grads(0)["s"]},
                       opt.init({"w": params["w"], "s": params["s"]}),
                       {"w": params["w"], "s": params["s"]})
  np.testing.assert_array_equal(out["b"], _grads(0)["b"])
  _assert_trees_equal({"w": out["w"], "s": out["s"]}, full, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_ill_conditioned_quadratic(name):
  # f(x) = 0.5 * sum(h * x**2), curvatures 1 .. 100 (condition number 100).
  # GAF bounds each step (by lr * alpha * pi/2 for arctan), so the start is
  # within reach of 300 bounded steps.
  h = jnp.asarray(np.logspace(0, 2, 20), jnp.float32)
  loss = lambda x: 0.5 * jnp.sum(h * x**2)
  opt = CASES[name].optimizer()
  x = jnp.full(20, 0.1, jnp.float32)
  state = opt.init(x)

  @jax.jit
  def step(x, state):
    updates, state = opt.update(jax.grad(loss)(x), state, x)
    return optax.apply_updates(x, updates), state

  start = loss(x)
  for _ in range(300):
    x, state = step(x, state)
  assert loss(x) < 1e-3 * start, (name, float(loss(x)), float(start))


def _sharded_step(opt, mesh):
  spec = {"w": P("data"), "b": P("data"), "s": P()}
  sharding = jax.tree.map(lambda s: NamedSharding(mesh, s), spec)
  params = jax.device_put(_params(), sharding)
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(3):
    params, state = step(params, state, jax.device_put(_grads(t), sharding))
  return params


@pytest.mark.parametrize("name", NAMES)
def test_one_device_and_eight_device_mesh_agree(name):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 CPU devices"
  opt = CASES[name].build()
  one = _sharded_step(opt, Mesh(np.array(jax.devices()[:1]), ("data",)))
  eight = _sharded_step(opt, Mesh(np.array(jax.devices()), ("data",)))
  assert len(eight["w"].sharding.device_set) == 8
  _assert_trees_equal(one, eight, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_pmap_matches_single_device(name):
  opt = CASES[name].build()
  params = _params()
  state = opt.init(params)
  expected, _ = opt.update(_grads(0), state, params)
  n = jax.device_count()
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * n), tree)
  got, _ = jax.pmap(opt.update)(stack(_grads(0)), stack(state), stack(params))
  for i in (0, n - 1):
    _assert_trees_equal(jax.tree.map(lambda x: x[i], got), expected, rtol=1e-6)


# ---------------------------------------------------------------------------
# optax's own contract (optax/contrib/_common_test.py, _sharding_test.py)


@pytest.mark.parametrize("name", NAMES)
def test_accepts_unexpected_update_kwargs_without_recompiling(name):
  opt = CASES[name].build()  # not wrapped in optax.with_extra_args_support
  params = _params()
  traces = []

  @jax.jit
  def step(params, state, grads):
    traces.append(1)
    updates, state = opt.update(
        grads, state, params,
        unexpected_extra_args_your_optimizer_doesnt_expect=1)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for t in range(3):
    params, state = step(params, state, _grads(t))
  assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_reaches_exactly_the_per_parameter_state(name):
  opt = CASES[name].build()
  params = _params()
  state = opt.init(params)
  _, state = opt.update(_grads(0), state, params)
  same = optax.tree.map_params(opt, lambda v: v, state)
  assert jax.tree.structure(same) == jax.tree.structure(state)
  _assert_trees_equal(same, state)
  # Per-parameter buffers are mapped; step counts and the amplification
  # controller's O(layers) statistics are left alone.
  marked = optax.tree.map_params(opt, lambda v: jnp.full_like(v, 7), state)
  shapes = {x.shape for x in jax.tree.leaves(params) if x.ndim}
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(marked),
                      strict=True):
    if old.shape in shapes:
      np.testing.assert_array_equal(new, 7)
    elif not jnp.issubdtype(old.dtype, jnp.floating) or old.shape == (2,):
      np.testing.assert_array_equal(new, old)


def _targets(dtype=jnp.float32):
  """optax's four targets: (initial params, minimiser, objective) each."""
  parabola_min = jnp.array([1.0, -1.0, 1.0], dtype)
  matrix_min = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  mixed_min = (jnp.array([1.0, -1.0, 2.0], dtype),
               jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))

  def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2

  def sq(p, m):
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(
        jax.tree.leaves(p), jax.tree.leaves(m), strict=True))

  return {
      "parabola": (jnp.array([-1.0, 10.0, 1.0], dtype), parabola_min,
                   functools.partial(sq, m=parabola_min)),
      "rosenbrock": (jnp.zeros(2, dtype), jnp.ones(2, dtype), rosenbrock),
      "matrix_parabola": (jnp.zeros((2, 2), dtype), matrix_min,
                          functools.partial(sq, m=matrix_min)),
      "mixed_1d_2d": ((jnp.zeros(3, dtype), jnp.zeros((2, 2), dtype)),
                      mixed_min, functools.partial(sq, m=mixed_min)),
  }


TARGETS = sorted(_targets())


def _minimise(opt, target, steps=30_000):
  params, minimiser, objective = _targets()[target]

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(objective)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    carry = (params, opt.init(params))
    # A no-op map must keep the state usable (optax checks this too).
    carry = (params, optax.tree.map_params(opt, lambda v: v, carry[1]))
    (params, _), _ = jax.lax.scan(body, carry, length=steps)
    return params

  got = run(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(minimiser),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2)


PRESETS = [n for n in NAMES if CASES[n].converge]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", PRESETS)
def test_preset_converges_in_30000_scanned_steps(name, target):
  # The bare transformations are checked before optax's optimizers below.
  _minimise(CASES[name].build(**CASES[name].converge), target)


def _rosenbrock_labels(params):
  # Two amplification layers: the Rosenbrock leaves and all the others.
  return jax.tree_util.tree_map_with_path(
      lambda path, _: int("rosenbrock" in jax.tree_util.keystr(path)),
      params)


WRAPPERS = {
    "gaf": lambda: gaf_optax.gaf(0.3, 4.5),
    "adaptive_gaf": lambda: gaf_optax.adaptive_gaf(2.0, 1.0),
    "amplification_weight_gradient": lambda: gaf_optax.gradient_amplification(
        2, 100, selection="cv", start_epoch=1, labels=_rosenbrock_labels),
}
# optax's base optimizers; one learning rate for all (GAF keeps the gradient
# scale near 1, so these rates travel 11 units in 30,000 steps, and
# Rosenbrock's curvature of ~1000 stays stable for plain SGD).
BASES = {
    "sgd": lambda: optax.sgd(1e-3),
    "sgd_momentum": lambda: optax.sgd(1e-3, momentum=0.9),
    "adam": lambda: optax.adam(1e-3),
    "adamw": lambda: optax.adamw(1e-3),
    "lion": lambda: optax.lion(1e-3),
    "rmsprop": lambda: optax.rmsprop(1e-3),
    "adabelief": lambda: optax.adabelief(1e-3),
}


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_wrapper_before_optax_optimizer_converges(wrapper, base):
  # The four targets in one tree: every transformation here acts per leaf
  # (the controller groups leaves by label), so the runs are independent.
  opt = optax.chain(WRAPPERS[wrapper](), BASES[base]())
  targets = _targets()
  params = {k: v[0] for k, v in targets.items()}
  minimiser = {k: v[1] for k, v in targets.items()}

  def objective(p):
    return sum(targets[k][2](p[k]) for k in targets)

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = opt.update(
          jax.grad(objective)(params), state, params,
          unexpected_extra_args_your_optimizer_doesnt_expect=1)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)),
                                  length=30_000)
    return params

  got = run(params)
  for k in targets:
    for a, b in zip(jax.tree.leaves(got[k]), jax.tree.leaves(minimiser[k]),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2, err_msg=k)


def _x64(enabled):
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(enabled)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64(enabled)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32",
                                   "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_update_is_dtype_stable_under_lax_cond(name, dtype):
  with _x64(dtype == "float64"):
    dtype = jnp.dtype(dtype)
    opt = CASES[name].build()
    params = {k: v.astype(dtype) for k, v in _params().items()}
    params = {**params, "t": jnp.array([-1.0, 10.0, 1.0], dtype)}

    @jax.jit
    def step(params, state):
      grads = jax.grad(lambda p: sum(jnp.sum(x.astype(jnp.float32) ** 2)
                                     for x in jax.tree.leaves(p)))(params)
      # lax.cond needs both branches to give the same types: an update that
      # changed a dtype or a state type would fail to trace.
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
          cond, lambda: opt.update(grads, state, params),
          lambda: (params, state))
      return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(2):
      params, new_state = step(params, state)
      assert {x.dtype for x in jax.tree.leaves(params)} == {dtype}
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      state = jax.lax.cond(cond, lambda: state,  # noqa: B023
                           lambda: new_state)    # noqa: B023


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_structs(name):
  opt = CASES[name].build()
  params = _params()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  concrete = opt.init(params)
  expected = jax.tree.map(lambda x: (x.shape, x.dtype), concrete)
  for state in (opt.init(abstract), jax.eval_shape(opt.init, abstract)):
    assert jax.tree.structure(state) == jax.tree.structure(concrete)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == expected


def _jax_version():
  return tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())


@pytest.mark.skipif(_jax_version() < (0, 7, 2),
                    reason="sharding in types needs jax >= 0.7.2")
@pytest.mark.parametrize("name", NAMES)
def test_state_types_are_stable_under_an_explicit_sharding_mesh(name):
  mesh = jax.make_mesh((8,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  opt = CASES[name].build()
  with jax.set_mesh(mesh):
    sharded = NamedSharding(mesh, P(None, "x"))
    params = {
        "w": jnp.ones((2, 8, 4), jnp.float16, out_sharding=sharded),
        "b": jnp.full((16,), 0.5, jnp.float16,
                      out_sharding=NamedSharding(mesh, P("x"))),
    }
    grads = jax.tree.map(lambda p: p * 0.1, params)
    state0 = opt.init(params)
    types0 = jax.tree.map(jax.typeof, state0)
    assert jax.tree.map(jax.typeof, jax.jit(opt.init)(params)) == types0
    updates, state1 = opt.update(grads, state0, params)
    assert jax.tree.map(jax.typeof, state1) == types0
    _, state2 = jax.jit(opt.update)(grads, state0, params)
    assert jax.tree.map(jax.typeof, state2) == types0
    assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof,
                                                             params)


@pytest.mark.parametrize("name", ["sgd_gaf", "adam_gaf", "rmsprop_gaf",
                                  "gaf", "adaptive_gaf",
                                  "gradient_amplification"])
def test_schedule_arguments_are_annotated_as_optax_sees_them(name):
  # optax's own tests find the arguments that take a schedule by comparing
  # inspect.signature's annotations with optax.ScalarOrSchedule: string
  # annotations (from __future__ import annotations) would hide them.
  import inspect  # pylint: disable=g-import-not-at-top
  fn = getattr(gaf_optax, name)
  annotated = [p.name for p in inspect.signature(fn).parameters.values()
               if p.annotation == optax.ScalarOrSchedule]
  expected = {"sgd_gaf": ["learning_rate", "alpha", "beta"],
              "adam_gaf": ["learning_rate", "alpha", "beta"],
              "rmsprop_gaf": ["learning_rate", "alpha", "beta"]}
  if name in expected:
    assert set(expected[name]) <= set(annotated), annotated
  for p in inspect.signature(fn).parameters.values():
    assert not isinstance(p.annotation, str), (name, p.name, p.annotation)
