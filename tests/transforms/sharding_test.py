"""Sharded parameters keep their sharding through every GAF transformation.

FSDP (`gaf_optax.training.fsdp_spec`) splits each parameter along one
dimension. An optimizer whose update changes a leaf's layout (the CPU wide
views of `_gaf.py` merge trailing dimensions) makes XLA gather the leaf on
every device, and the state comes back replicated. Checked here on 8
simulated CPU devices (tests/conftest.py), on the default (auto) mesh and,
where jax has sharding in types, on an explicit-axes mesh: the compiled
update has no all-gather, the state and the update keep each parameter's
sharding, and the values equal the unsharded run's.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import gaf_optax
from gaf_optax import training
from gaf_optax.transforms import _gaf

# A few ResNet-18 leaves (Flax layout): conv kernels of the first two stages,
# the classifier and a BatchNorm vector.
SHAPES = {
    "conv64": (3, 3, 64, 64),
    "conv128": (3, 3, 128, 128),
    "head": (512, 10),
    "bn": (64,),
}


def _kernels(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


OPTIMIZERS = {
    "gaf": lambda: gaf_optax.gaf(),
    "gaf_tanh_schedule": lambda: gaf_optax.gaf(
        alpha=optax.linear_schedule(0.3, 0.1, 10), fn="tanh"),
    "adaptive_gaf": lambda: gaf_optax.adaptive_gaf(shrink=2.0, gamma=1.0),
    "sgd_gaf": lambda: gaf_optax.sgd_gaf(0.1, 0.9),
    "sgd_gaf_gradient": lambda: gaf_optax.sgd_gaf(0.1, 0.9,
                                                  position="gradient"),
    "sgd_gaf_nesterov_tanh_decay": lambda: gaf_optax.sgd_gaf(
        0.1, 0.9, nesterov=True, fn="tanh", weight_decay=5e-4,
        weight_decay_mask=_kernels),
    "sgd_gaf_gradient_nesterov_log": lambda: gaf_optax.sgd_gaf(
        0.1, 0.9, position="gradient", nesterov=True, fn="log"),
    "sgd_gaf_adaptive": lambda: gaf_optax.sgd_gaf(
        0.1, 0.9, fn="adaptive", shrink=2.0, gamma=1.0, weight_decay=5e-4),
    "sgd_gaf_no_momentum": lambda: gaf_optax.sgd_gaf(0.1, None),
    "adam_gaf": lambda: gaf_optax.adam_gaf(1e-3),
    "adam_gaf_decay_eps_first": lambda: gaf_optax.adam_gaf(
        1e-3, weight_decay=1e-4, eps_before_bias_correction=True),
    "adam_gaf_tanh_bf16_mu": lambda: gaf_optax.adam_gaf(
        1e-3, fn="tanh", mu_dtype=jnp.bfloat16),
    "rmsprop_gaf": lambda: gaf_optax.rmsprop_gaf(1e-2),
    "rmsprop_gaf_momentum_decay": lambda: gaf_optax.rmsprop_gaf(
        1e-2, momentum=0.9, weight_decay=1e-4),
    "chain_gaf_sgd": lambda: optax.chain(gaf_optax.gaf(), optax.sgd(0.1, 0.9)),
    "chain_adaptive_adam": lambda: optax.chain(
        gaf_optax.adaptive_gaf(2.0, 1.0), optax.adam(1e-3)),
    "masked_gaf_sgd": lambda: optax.chain(
        optax.masked(gaf_optax.gaf(), _kernels), optax.sgd(0.1, 0.9)),
    "injected_sgd_gaf": lambda: optax.inject_hyperparams(gaf_optax.sgd_gaf)(
        learning_rate=0.1, momentum=0.9),
}

# Presets that keep per-parameter buffers, for the explicit mesh and the
# issue's own example.
PRESETS = ("sgd_gaf", "sgd_gaf_gradient", "adam_gaf", "rmsprop_gaf",
           "chain_gaf_sgd")


def _fsdp_specs(shapes):
  return {k: training.fsdp_spec(s, 4, 8, min_bytes=0)
          for k, s in shapes.items()}


def _problem(shapes, seed=0):
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s).astype(np.float32)
            for k, s in shapes.items()}
  grads = [{k: (10.0 ** rng.uniform(-4, 0, size=s)
                * rng.normal(size=s)).astype(np.float32)
            for k, s in shapes.items()} for _ in range(2)]
  return params, grads


def _all_gathers(compiled) -> list[str]:
  # Instructions, not mentions: `all-gather(`, `all-gather-start(`.
  return [line.strip()[:160] for line in compiled.as_text().splitlines()
          if re.search(r"\ball-gather(?:-start)?\(", line)]


def _all_to_alls(compiled) -> int:
  return len(re.findall(r"\ball-to-all\(", compiled.as_text()))


def _run(tx, params, grads, sharding=None):
  """Two jitted updates; returns (updates, state, the compiled update)."""
  put = (lambda t: t) if sharding is None else (
      lambda t: jax.device_put(t, sharding))
  params = put(params)
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  compiled = update.lower(put(grads[0]), state, params).compile()
  for g in grads:
    updates, state = update(put(g), state, params)
  return updates, state, compiled


def _assert_keeps_sharding(tx, params, grads, sharding, specs):
  ref_updates, ref_state, _ = _run(tx, params, grads)
  updates, state, compiled = _run(tx, params, grads, sharding)
  assert not _all_gathers(compiled), _all_gathers(compiled)
  assert _all_to_alls(compiled) == 0
  for k, u in updates.items():
    assert u.sharding.is_equivalent_to(sharding[k], u.ndim), (
        k, u.sharding, specs[k])
  shaped = [leaf for leaf in jax.tree.leaves(state)
            if tuple(leaf.shape) in {s.shape for s in params.values()}]
  assert len(shaped) == len(jax.tree.leaves(ref_state)) - sum(
      np.ndim(x) == 0 for x in jax.tree.leaves(ref_state))
  by_shape = {tuple(params[k].shape): sharding[k] for k in params}
  for leaf in shaped:
    want = by_shape[tuple(leaf.shape)]
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
        leaf.shape, leaf.sharding, want.spec)
  # Sharded and whole leaves compile to different loops, whose float32
  # roundings differ by an ulp here and there; momentum over two steps can
  # cancel to a value far smaller than the leaf's, hence an absolute
  # tolerance relative to the leaf's largest value.
  for a, b in zip(jax.tree.leaves((updates, state)),
                  jax.tree.leaves((ref_updates, ref_state)), strict=True):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=1e-6,
                               atol=1e-6 * float(np.max(np.abs(b), initial=0)))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fsdp_sharding_is_kept_on_the_auto_mesh(name):
  mesh = training.make_mesh(8)
  specs = _fsdp_specs(SHAPES)
  assert specs["conv64"] == P(None, None, None, "data")
  assert specs["head"] == P("data", None)
  sharding = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  params, grads = _problem(SHAPES)
  _assert_keeps_sharding(OPTIMIZERS[name](), params, grads, sharding, specs)


# The issue's example: a (64, 64) kernel split on its minor dimension and a
# (3, 3, 64, 64) one on its last. Before the fix, on CPU, jax.jit(update)
# compiled all-gathers for sgd_gaf and adam_gaf and returned P() everywhere.
ISSUE_SHAPES = {"dense": (64, 64), "conv": (3, 3, 64, 64)}
ISSUE_SPECS = {"dense": P(None, "data"), "conv": P(None, None, None, "data")}


@pytest.mark.parametrize("name", ["sgd", "adam", "sgd_gaf", "adam_gaf"])
def test_issue_example_compiles_no_all_gather(name):
  tx = {"sgd": lambda: optax.sgd(0.1, 0.9), "adam": lambda: optax.adam(1e-3),
        "sgd_gaf": lambda: gaf_optax.sgd_gaf(0.1, 0.9),
        "adam_gaf": lambda: gaf_optax.adam_gaf(1e-3)}[name]()
  # jax.sharding.Mesh's axes are Auto (jax.make_mesh's are Explicit on
  # newer jax): the default a user has.
  mesh = training.make_mesh(8)
  assert "Explicit" not in str(getattr(mesh, "axis_types", ""))
  sharding = {k: NamedSharding(mesh, s) for k, s in ISSUE_SPECS.items()}
  params, grads = _problem(ISSUE_SHAPES, seed=1)
  _assert_keeps_sharding(tx, params, grads, sharding, ISSUE_SPECS)
  # Without the params (no weight decay needs them), as the issue ran it.
  params = jax.device_put(params, sharding)
  state = tx.init(params)
  compiled = jax.jit(tx.update).lower(
      jax.device_put(grads[0], sharding), state).compile()
  assert not _all_gathers(compiled), _all_gathers(compiled)


def _explicit_mesh():
  axis_type = getattr(getattr(jax.sharding, "AxisType", None), "Explicit",
                      None)
  if axis_type is None or not hasattr(jax, "set_mesh"):
    pytest.skip("explicit-axes meshes need jax.sharding.AxisType.Explicit "
                "and jax.set_mesh (sharding in types, jax >= 0.7.2)")
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


@pytest.mark.parametrize("name", PRESETS)
def test_fsdp_sharding_is_kept_on_an_explicit_mesh(name):
  mesh = _explicit_mesh()
  specs = _fsdp_specs(SHAPES)
  sharding = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  params, grads = _problem(SHAPES)
  tx = OPTIMIZERS[name]()
  with jax.set_mesh(mesh):
    _assert_keeps_sharding(tx, params, grads, sharding, specs)
    # Sharding in types: the update's and the state's types are the params'.
    p = jax.device_put(params, sharding)
    state = tx.init(p)
    updates, new_state = jax.jit(tx.update)(jax.device_put(grads[0], sharding),
                                            state, p)
    assert jax.tree.map(jax.typeof, updates) == jax.tree.map(jax.typeof, p)
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof,
                                                               state)


@pytest.mark.parametrize("name", ["sgd_gaf", "adam_gaf"])
def test_uncommitted_inputs_placed_by_in_shardings_stay_split(name):
  # No mesh in the leaves' types while tracing: the choice is made when
  # lowering, for a program over 8 devices. (These were the issue's 4 and 6
  # all-gathers.)
  tx = OPTIMIZERS[name]()
  mesh = training.make_mesh(8)
  specs = _fsdp_specs(SHAPES)
  sharding = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  params, grads = _problem(SHAPES)
  state = tx.init(params)
  by_shape = {params[k].shape: sharding[k] for k in params}
  state_sharding = jax.tree.map(
      lambda x: by_shape.get(np.shape(x), NamedSharding(mesh, P())), state)
  update = jax.jit(tx.update, in_shardings=(sharding, state_sharding,
                                            sharding))
  compiled = update.lower(grads[0], state, params).compile()
  assert not _all_gathers(compiled), _all_gathers(compiled)
  updates, new_state = update(grads[0], state, params)
  ref_updates, ref_state = jax.jit(tx.update)(grads[0], state, params)
  for k, u in updates.items():
    assert u.sharding.is_equivalent_to(sharding[k], u.ndim), k
  for leaf in jax.tree.leaves(new_state):
    if leaf.ndim:
      assert leaf.sharding.is_equivalent_to(by_shape[leaf.shape], leaf.ndim)
  for a, b in zip(jax.tree.leaves((updates, new_state)),
                  jax.tree.leaves((ref_updates, ref_state)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(
        np.max(np.abs(b), initial=0)))


@pytest.mark.parametrize("placement", ["uncommitted", "one_device_mesh"])
@pytest.mark.parametrize("name", ["sgd_gaf", "adam_gaf"])
def test_one_device_keeps_the_cpu_wide_views(name, placement):
  # The layout trick stays where nothing is split: a PyTorch-layout kernel
  # (minor dimension 3) is updated on a (16, 144) view.
  tx = OPTIMIZERS[name]()
  params = {"w": jnp.ones((16, 16, 3, 3))}
  if placement == "one_device_mesh":
    params = jax.device_put(params,
                            NamedSharding(training.make_mesh(1), P()))
  compiled = jax.jit(tx.update).lower(params, tx.init(params),
                                      params).compile()
  # Where XLA:CPU drops the fences before fusion (jax 0.10, 0.5), no view.
  assert ("f32[16,144]" in compiled.as_text()) == _gaf._fences_hold()


def _shard_map(f, mesh, in_specs, out_specs):
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs,
                         out_specs=out_specs)
  from jax.experimental.shard_map import shard_map  # jax < 0.7
  return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


@pytest.mark.parametrize("name", ["sgd_gaf", "adam_gaf"])
def test_shard_map_takes_the_views_of_each_shard(name):
  # Inside shard_map each device holds its shard whole: the (2, 16, 3, 3)
  # shard of a (16, 16, 3, 3) kernel split 8 ways runs on a (2, 144) view.
  tx = OPTIMIZERS[name]()
  mesh = training.make_mesh(8)
  params, grads = _problem({"w": (16, 16, 3, 3)}, seed=2)
  state = tx.init(params)
  spec = {"w": P("data")}
  state_spec = jax.tree.map(lambda x: P("data") if np.ndim(x) else P(),
                            state)
  step = jax.jit(_shard_map(lambda g, s, p: tx.update(g, s, p), mesh,
                            (spec, state_spec, spec), (spec, state_spec)))
  compiled = step.lower(grads[0], state, params).compile()
  assert ("f32[2,144]" in compiled.as_text()) == _gaf._fences_hold()
  assert not _all_gathers(compiled)
  updates, _ = step(grads[0], state, params)
  ref, _ = jax.jit(tx.update)(grads[0], state, params)
  np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6, atol=0)


def test_the_lowering_choice_is_transparent_to_vmap_and_grad():
  # Uncommitted leaves take the choice made when lowering; vmap and grad
  # through it give the optax chain's values, and vmap keeps the views.
  tx = gaf_optax.sgd_gaf(0.1, 0.9)
  chain = optax.chain(optax.trace(0.9), gaf_optax.gaf(),
                      optax.scale_by_learning_rate(0.1))
  params, grads = _problem({"w": (16, 16, 3, 3), "b": (16,)}, seed=3)
  grads = jax.tree.map(lambda *g: np.stack(g), *grads, grads[0])  # 3 steps
  state = tx.init(params)

  def total(opt, g):
    updates, new_state = opt.update(g, state, params)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(
        (updates, new_state)))

  batched = jax.jit(jax.vmap(lambda g: tx.update(g, state, params)[0]))
  assert (("f32[3,16,144]" in batched.lower(grads).compile().as_text())
          == _gaf._fences_hold())
  want = jax.vmap(lambda g: chain.update(g, state, params)[0])(grads)
  for a, b in zip(jax.tree.leaves(batched(grads)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-9)
  one = jax.tree.map(lambda g: g[0], grads)
  got = jax.jit(jax.grad(lambda g: total(tx, g)))(one)
  want = jax.grad(lambda g: total(chain, g))(one)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-9)
  _, tangents = jax.jvp(lambda g: tx.update(g, state, params)[0], (one,),
                        (jax.tree.map(jnp.ones_like, one),))
  _, want = jax.jvp(lambda g: chain.update(g, state, params)[0], (one,),
                    (jax.tree.map(jnp.ones_like, one),))
  for a, b in zip(jax.tree.leaves(tangents), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-9)
