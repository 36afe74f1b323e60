"""Issue 32's transformation items: float16 moments, Python-float leaves in
adam_gaf, and a weight_decay_mask of the wrong structure."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gaf_optax

# ------------------------------------------------- float16 second moments


def _f16_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.uniform(0.5, 1.5, (3, 5)), jnp.float16),
            "b": jnp.asarray(rng.uniform(0.5, 1.5, (5,)), jnp.float16)}
  # Gradients of size 1e-4, as in the issue: (1 - b2) * gaf(g)**2 is far
  # below float16's smallest subnormal (6e-8). Each element keeps its sign
  # over the steps, so no moment cancels (an element-wise tolerance holds).
  signs = jax.tree.map(lambda p: rng.choice([-1.0, 1.0], p.shape), params)
  grads = [jax.tree.map(
      lambda p, s: jnp.asarray(s * rng.uniform(0.5e-4, 2e-4, p.shape),
                               jnp.float16), params, signs)
           for _ in range(4)]
  return params, grads


def _run(tx, params, grads):
  update = jax.jit(tx.update)
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    out.append(u)
  return out, state


def _nu(state):
  """The one second moment in an optimizer's state."""
  nus = [s.nu for s in jax.tree.leaves(
      state, is_leaf=lambda s: hasattr(s, "nu")) if hasattr(s, "nu")]
  assert len(nus) == 1
  return nus[0]


def _F32(tree):  # noqa: N802
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


# The tolerance is float16's: the update is rounded to float16 (2**-11
# relative), and what is kept in float16 rounds too. adam_gaf's first moment
# stays in the parameters' dtype unless mu_dtype says otherwise (as in
# optax), and a float16 moment of 1e-5 is subnormal (spacing 6e-8); rmsprop's
# GAF stage hands float16 values to the second moment.
@pytest.mark.parametrize("make, rtol", [
    (lambda: gaf_optax.adam_gaf(1e-3), 5e-3),
    (lambda: gaf_optax.adam_gaf(1e-3, mu_dtype=jnp.float32), 1.5e-3),
    (lambda: gaf_optax.adam_gaf(1e-3, mu_dtype=jnp.float32, weight_decay=1e-5,
                                eps_before_bias_correction=True), 1.5e-3),
    (lambda: gaf_optax.rmsprop_gaf(1e-3), 3e-3),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, momentum=0.9, weight_decay=1e-5),
     3e-3),
], ids=["adam", "adam_mu32", "adam_eps_first_wd", "rmsprop",
        "rmsprop_momentum_wd"])
def test_float16_small_gradients_match_a_float32_reference(make, rtol):
  params, grads = _f16_problem()
  out16, state = _run(make(), params, grads)
  out32, _ = _run(make(), _F32(params), [_F32(g) for g in grads])
  for step, (u16, u32) in enumerate(zip(out16, out32)):
    for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32)):
      assert a.dtype == jnp.float16
      assert np.all(np.isfinite(np.asarray(a, np.float32))), (step, a)
      # Every update is of size lr (Adam's and RMSprop's normalization).
      np.testing.assert_allclose(np.asarray(a, np.float64),
                                 np.asarray(b, np.float64), rtol=rtol,
                                 err_msg=f"step {step}")
  # The second moment of a float16 leaf is float32 (the memory cost: 2 bytes
  # more per float16 parameter); nothing else changes dtype.
  assert {x.dtype for x in jax.tree.leaves(_nu(state))} == {
      jnp.dtype("float32")}


def test_adam_gaf_first_moment_dtype_follows_optax():
  params, _ = _f16_problem()
  state = gaf_optax.adam_gaf(1e-3).init(params)
  adam = state[1]
  assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype("float16")}
  state = gaf_optax.adam_gaf(1e-3, mu_dtype=jnp.float32).init(params)
  assert {x.dtype for x in jax.tree.leaves(state[1].mu)} == {
      jnp.dtype("float32")}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("make", [lambda: gaf_optax.adam_gaf(1e-3),
                                  lambda: gaf_optax.rmsprop_gaf(1e-3)])
def test_other_dtypes_keep_their_second_moment_dtype(make, dtype):
  # Only float16 pays for a float32 moment: bfloat16 has float32's range.
  params = {"w": jnp.ones((2, 3), dtype), "h": jnp.ones(3, jnp.float16)}
  tx = make()
  state = tx.init(params)
  nu = _nu(state)
  assert nu["w"].dtype == dtype and nu["h"].dtype == jnp.float32
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-4), params)
  updates, new_state = tx.update(grads, state, params)
  assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(
      lambda x: x.dtype, params)
  assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
      lambda x: x.dtype, state)


def test_optax_adam_itself_gives_inf_on_this_problem():
  # Why the test above is not vacuous: the plain float16 recipe fails.
  params, grads = _f16_problem()
  out, _ = _run(optax.chain(gaf_optax.gaf(0.1, 15.0), optax.adam(1e-3)),
                params, grads)
  assert not np.all(np.isfinite(np.asarray(out[0]["w"], np.float32)))


# ------------------------------------------ Python-float leaves: adam_gaf


@pytest.mark.parametrize("kwargs", [
    {}, {"weight_decay": 1e-2}, {"eps_before_bias_correction": True}])
def test_adam_gaf_takes_python_float_leaves(kwargs):
  tx = gaf_optax.adam_gaf(1e-2, **kwargs)
  floats = {"w": 1.0, "v": -2.0}
  arrays = jax.tree.map(jnp.float32, floats)
  s_f, s_a = tx.init(floats), tx.init(arrays)
  for g in (3.0, -0.5, 1e-3):
    grads = {"w": g, "v": 2 * g}
    u_f, s_f = tx.update(grads, s_f, floats)
    u_a, s_a = tx.update(jax.tree.map(jnp.float32, grads), s_a, arrays)
    for a, b in zip(jax.tree.leaves(u_f), jax.tree.leaves(u_a)):
      np.testing.assert_array_equal(a, b)
  # And optax.apply_updates takes the result with the float params.
  new = optax.apply_updates(floats, u_f)
  np.testing.assert_allclose(new["w"], 1.0 + float(u_a["w"]), rtol=1e-6)


# --------------------------------------------- weight_decay_mask structure


_PARAMS = {"a": jnp.ones((2, 2)), "b": {"c": jnp.ones(2), "d": jnp.ones(3)}}

_MAKERS = {
    "sgd_gaf": lambda m: gaf_optax.sgd_gaf(0.1, weight_decay=1e-2,
                                           weight_decay_mask=m),
    "sgd_gaf_no_momentum": lambda m: gaf_optax.sgd_gaf(
        0.1, momentum=None, weight_decay=1e-2, weight_decay_mask=m),
    "sgd_gaf_gradient": lambda m: gaf_optax.sgd_gaf(
        0.1, position="gradient", weight_decay=1e-2, weight_decay_mask=m),
    "adam_gaf": lambda m: gaf_optax.adam_gaf(1e-3, weight_decay=1e-2,
                                             weight_decay_mask=m),
    "rmsprop_gaf": lambda m: gaf_optax.rmsprop_gaf(1e-3, weight_decay=1e-2,
                                                   weight_decay_mask=m),
}


@pytest.mark.parametrize("mask", [
    {"a": True},                              # a key missing
    {"a": True, "b": {"c": True}},            # a nested key missing
    [True, False],                            # a list for a dict
    lambda p: {"a": True, "x": False},        # a callable, wrong keys
], ids=["missing", "nested", "list", "callable"])
@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_wrong_mask_structure_names_the_mask_and_both_structures(name, mask):
  tx = _MAKERS[name](mask)
  where = name.split("_no")[0].split("_gradient")[0]
  match = (rf"{where}: weight_decay_mask must have the parameters' tree "
           r"structure .*; got a mask of structure PyTreeDef\(.*\) for "
           r"parameters of structure PyTreeDef\(\{'a': \*, 'b': \{'c': \*, "
           r"'d': \*\}\}\)")

  def init_and_update():
    state = tx.init(_PARAMS)
    return tx.update(_PARAMS, state, _PARAMS)

  with pytest.raises(ValueError, match=match):
    init_and_update()
  with pytest.raises(ValueError, match=match):
    jax.jit(init_and_update)()


@pytest.mark.parametrize("name", sorted(_MAKERS))
def test_prefix_and_full_masks_still_work(name):
  # optax's convention: a prefix of the params' structure is a mask too.
  prefix = {"a": True, "b": False}
  full = {"a": True, "b": {"c": False, "d": False}}
  # Small negative gradients: the decay (1e-2 * 1) flips their sign, which
  # shows even in Adam's first step (-lr * sign).
  grads = jax.tree.map(lambda p: -1e-3 * p, _PARAMS)
  outs = []
  for mask in (prefix, full, lambda p: full):
    tx = _MAKERS[name](mask)
    outs.append(tx.update(grads, tx.init(_PARAMS), _PARAMS)[0])
  for out in outs[1:]:
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(out)):
      np.testing.assert_array_equal(a, b)
  # The mask matters: decaying nothing gives another update for "a" only.
  tx = _MAKERS[name]({"a": False, "b": False})
  none = tx.update(grads, tx.init(_PARAMS), _PARAMS)[0]
  assert not np.array_equal(none["a"], outs[0]["a"])
  np.testing.assert_array_equal(none["b"]["c"], outs[0]["b"]["c"])
