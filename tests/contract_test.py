"""One contract, checked for every transformation and preset of gaf_optax.

Each case is a factory and its keyword arguments, so the same case can be
built plainly and through `optax.inject_hyperparams`. Methods added later
register their cases in CASES.
"""

import dataclasses
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
  # relative (optax.adam vs inject_hyperparams(optax.adam) shows the same).
  inject_rtol: float = 1e-6

  def build(self, **overrides):
    return self.factory(**{**self.kwargs, **overrides})

  def optimizer(self, **overrides):
    return self.complete(self.build(**overrides))


def _with_sgd(tx):
  return optax.chain(tx, optax.sgd(0.01, momentum=0.9))


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
        dict(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)),
    "sgd_gaf_gradient": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, position="gradient")),
    "sgd_gaf_nesterov_tanh": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, nesterov=True, fn="tanh")),
    "sgd_gaf_adaptive": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=0.01, momentum=0.9, fn="adaptive", shrink=2.0,
             gamma=1.0)),
    "sgd_gaf_schedule": Case(
        gaf_optax.sgd_gaf,
        dict(learning_rate=optax.cosine_decay_schedule(0.01, 300),
             momentum=0.9)),
    "adam_gaf": Case(gaf_optax.adam_gaf,
                     dict(learning_rate=0.01, weight_decay=1e-4),
                     inject_rtol=1e-5),
    "adam_gaf_official_eps": Case(
        gaf_optax.adam_gaf,
        dict(learning_rate=0.01, eps_before_bias_correction=True),
        inject_rtol=1e-5),
    "rmsprop_gaf": Case(gaf_optax.rmsprop_gaf,
                        dict(learning_rate=0.003, momentum=0.5)),
    # The controller's weight-gradient variant needs no extra arguments;
    # labels are a function of the params so optax.masked can drop leaves.
    "amplification_weight_gradient": Case(
        gaf_optax.gradient_amplification,
        dict(num_layers=2, steps_per_epoch=2, start_epoch=1, selection="cv",
             labels=_amplification_labels),
        _with_sgd, static_args=("num_layers", "steps_per_epoch", "labels")),
    "amplification_random": Case(
        gaf_optax.gradient_amplification,
        dict(num_layers=2, steps_per_epoch=1, start_epoch=0,
             selection="random", ratio=0.5, labels=_amplification_labels),
        _with_sgd, static_args=("num_layers", "steps_per_epoch", "labels")),
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
def test_inject_hyperparams_gives_identical_updates(name):
  case = CASES[name]
  injected = optax.inject_hyperparams(
      case.factory, static_args=case.static_args)(**case.kwargs)
  p1, _, u1 = _run(case.build())
  p2, s2, u2 = _run(injected)
  _assert_trees_equal(u1, u2, rtol=case.inject_rtol)
  _assert_trees_equal(p1, p2, rtol=case.inject_rtol)
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
