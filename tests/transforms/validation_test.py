"""Validation of the GAF optimizer API (issue 13, items 5 and 6).

What is static is checked: argument ranges when a transformation is built,
shapes and dtypes in ``init``/``update`` (at trace time). Schedules and
traced values are never rejected. Non-finite gradients are not checked; the
documented behaviour and its remedy (``optax.apply_if_finite``) are pinned
here.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gaf_optax


DECAY = "a number or array in [0, 1)"
MOMENTUM = "a non-negative number or array at most 1, i.e. in [0, 1]"


def _schedule(count):
  return 0.9 + 0.0 * count


# ----------------------------------------------------------- construction


@pytest.mark.parametrize("make, where, name, accepted, got", [
    (lambda: gaf_optax.adam_gaf(1e-3, eps=-1), "adam_gaf", "eps",
     "a positive finite number", "-1"),
    (lambda: gaf_optax.adam_gaf(1e-3, eps=0.0), "adam_gaf", "eps",
     "a positive finite number", "0.0"),
    (lambda: gaf_optax.adam_gaf(1e-3, eps=math.inf), "adam_gaf", "eps",
     "a positive finite number", "inf"),
    (lambda: gaf_optax.adam_gaf(1e-3, b1=1.0), "adam_gaf", "b1",
     DECAY, "1.0"),
    (lambda: gaf_optax.adam_gaf(1e-3, b1=-0.1), "adam_gaf", "b1",
     DECAY, "-0.1"),
    (lambda: gaf_optax.adam_gaf(1e-3, b2=1.5), "adam_gaf", "b2",
     DECAY, "1.5"),
    (lambda: gaf_optax.adam_gaf(1e-3, b2=jnp.float32(1.0)), "adam_gaf", "b2",
     DECAY, "Array(1."),
    (lambda: gaf_optax.adam_gaf(1e-3, eps_before_bias_correction=True,
                                b1=1.0), "adam_gaf", "b1", DECAY, "1.0"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, decay=1.0), "rmsprop_gaf", "decay",
     DECAY, "1.0"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, decay=-0.5), "rmsprop_gaf", "decay",
     DECAY, "-0.5"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, eps=-1e-8), "rmsprop_gaf", "eps",
     "a positive finite number", "-1e-08"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, momentum=1.5), "rmsprop_gaf",
     "momentum", MOMENTUM, "1.5"),
    (lambda: gaf_optax.sgd_gaf(0.1, momentum=1.01), "sgd_gaf", "momentum",
     MOMENTUM, "1.01"),
    (lambda: gaf_optax.sgd_gaf(0.1, momentum=-0.9), "sgd_gaf", "momentum",
     MOMENTUM, "-0.9"),
    (lambda: gaf_optax.sgd_gaf(0.1, momentum=np.array([0.5, 2.0])),
     "sgd_gaf", "momentum", MOMENTUM, "array"),
    (lambda: gaf_optax.sgd_gaf(math.inf), "sgd_gaf", "learning_rate",
     "a non-negative finite number", "inf"),
    (lambda: gaf_optax.adam_gaf(math.inf), "adam_gaf", "learning_rate",
     "a non-negative finite number", "inf"),
    (lambda: gaf_optax.rmsprop_gaf(jnp.inf), "rmsprop_gaf", "learning_rate",
     "a non-negative finite number", "inf"),
    (lambda: gaf_optax.sgd_gaf(0.1, weight_decay=math.inf), "sgd_gaf",
     "weight_decay", "a non-negative finite number", "inf"),
    (lambda: gaf_optax.gaf(alpha=math.inf), "gaf", "alpha",
     "a positive finite number", "inf"),
    (lambda: gaf_optax.gaf(beta=np.array([1.0, np.inf])), "gaf", "beta",
     "a positive finite number", "array"),
    (lambda: gaf_optax.sgd_gaf(0.1, alpha=math.inf), "sgd_gaf", "alpha",
     "a positive finite number", "inf"),
    (lambda: gaf_optax.adam_gaf(1e-3, beta=-math.inf), "adam_gaf", "beta",
     "a positive finite number", "-inf"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, alpha=math.inf), "rmsprop_gaf",
     "alpha", "a positive finite number", "inf"),
    (lambda: gaf_optax.adaptive_gaf(math.inf, 1.0), "adaptive_gaf", "shrink",
     "a positive finite number", "inf"),
    (lambda: gaf_optax.gaf(alpha=1 + 1j), "gaf", "alpha",
     "a positive finite number", "(1+1j)"),
    # Per-leaf pytrees of alpha/beta are not supported (optax.partition is).
    (lambda: gaf_optax.gaf(alpha={"w": 0.3}), "gaf", "alpha",
     "a positive finite number", "{'w': 0.3}"),
])
def test_static_argument_out_of_range_is_a_value_error(make, where, name,
                                                       accepted, got):
  pattern = (rf"^{where}: {name} must be {re.escape(accepted)}.*; "
             rf"got {re.escape(got)}")
  with pytest.raises(ValueError, match=pattern):
    make()


@pytest.mark.parametrize("make, where, name", [
    (lambda: gaf_optax.adam_gaf(1e-3, b1=_schedule), "adam_gaf", "b1"),
    (lambda: gaf_optax.adam_gaf(1e-3, eps=_schedule), "adam_gaf", "eps"),
    (lambda: gaf_optax.rmsprop_gaf(1e-3, decay=_schedule), "rmsprop_gaf",
     "decay"),
    (lambda: gaf_optax.sgd_gaf(0.1, momentum=_schedule), "sgd_gaf",
     "momentum"),
])
def test_schedule_where_none_is_supported_is_a_value_error(make, where, name):
  with pytest.raises(ValueError,
                     match=rf"^{where}: {name} must be .*, not schedules; got"):
    make()


def test_momentum_of_one_is_allowed_and_never_decays():
  params = {"w": jnp.zeros(2)}
  opt = gaf_optax.sgd_gaf(1.0, momentum=1.0, alpha=1.0, beta=1.0,
                          fn=lambda x: x)
  state = opt.init(params)
  g = {"w": jnp.array([1.0, -2.0])}
  for t in range(1, 4):  # the buffer is the plain sum of the gradients
    updates, state = opt.update(g, state, params)
    np.testing.assert_allclose(updates["w"], -t * np.array([1.0, -2.0]))
  gaf_optax.rmsprop_gaf(1e-3, momentum=1.0)
  gaf_optax.sgd_gaf(0.1, momentum=jnp.float32(1.0), nesterov=True)


def test_boundary_values_and_schedules_are_accepted():
  gaf_optax.adam_gaf(1e-3, b1=0.0, b2=0.0, eps=1e-30)
  gaf_optax.adam_gaf(0.0, b1=np.float32(0.999), b2=jnp.float32(0.9999))
  gaf_optax.rmsprop_gaf(1e-3, decay=0.0, momentum=0.0)
  sched = optax.cosine_decay_schedule(0.1, 10)
  gaf_optax.sgd_gaf(sched, alpha=sched, beta=lambda c: 4.5,
                    weight_decay=sched)
  gaf_optax.adam_gaf(sched, alpha=sched)
  gaf_optax.rmsprop_gaf(sched, beta=sched)


def test_traced_and_injected_hyperparameters_are_not_rejected():
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  grads = jax.tree.map(lambda p: 0.1 * p, params)
  cases = [
      (gaf_optax.adam_gaf, dict(learning_rate=1e-3, b1=0.9, b2=0.999,
                                eps=1e-8, alpha=0.1, beta=15.0)),
      (gaf_optax.rmsprop_gaf, dict(learning_rate=1e-3, decay=0.99, eps=1e-8,
                                   momentum=1.0)),
      (gaf_optax.sgd_gaf, dict(learning_rate=0.1, momentum=1.0, alpha=0.3,
                               beta=jnp.ones(3))),
  ]
  for factory, kwargs in cases:
    opt = optax.inject_hyperparams(factory)(**kwargs)
    state = opt.init(params)
    injected, _ = jax.jit(opt.update)(grads, state, params)
    plain, _ = factory(**kwargs).update(grads, factory(**kwargs).init(params),
                                        params)
    for a, b in zip(jax.tree.leaves(injected), jax.tree.leaves(plain)):
      np.testing.assert_allclose(a, b, rtol=1e-5)

  @jax.jit
  def traced(alpha, beta, momentum, b1, eps, lr):
    out, _ = gaf_optax.gaf(alpha, beta).update(grads, None)
    opt = gaf_optax.sgd_gaf(lr, momentum, alpha=alpha)
    out2, _ = opt.update(grads, opt.init(params), params)
    opt = gaf_optax.adam_gaf(lr, b1=b1, eps=eps)
    out3, _ = opt.update(grads, opt.init(params), params)
    return out, out2, out3

  traced(*(jnp.float32(v) for v in (0.3, 4.5, 0.9, 0.9, 1e-8, 0.1)))


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_scale_that_would_change_a_parameter_shape_is_a_value_error(name):
  params = {"s": jnp.float32(1.0)}
  scale = jnp.full((2, 2), 0.5)
  pattern = (rf"^gaf: {name} of shape \(2, 2\) does not fit parameter "
             r"\['s'\] of shape \(\)")
  tx = gaf_optax.gaf(**{name: scale})
  with pytest.raises(ValueError, match=pattern):
    tx.init(params)
  update_pattern = pattern.replace("parameter", "update")
  with pytest.raises(ValueError, match=update_pattern):
    tx.update(params, None)
  with pytest.raises(ValueError, match=update_pattern):  # at trace time
    jax.jit(tx.update)(params, None)
  opt = gaf_optax.sgd_gaf(0.1, **{name: scale})
  with pytest.raises(ValueError, match=pattern.replace("gaf", "sgd_gaf", 1)):
    opt.init(params)
  opt = gaf_optax.adam_gaf(0.1, **{name: scale})
  with pytest.raises(ValueError, match=pattern.replace("gaf", "adam_gaf", 1)):
    opt.init(params)


def test_scale_that_does_not_broadcast_is_a_value_error():
  with pytest.raises(ValueError, match=r"^rmsprop_gaf: alpha of shape \(3,\)"
                     r" does not fit parameter \['w'\] of shape \(2,\)"):
    gaf_optax.rmsprop_gaf(0.1, alpha=jnp.ones(3)).init({"w": jnp.ones(2)})


def test_scheduled_scale_that_would_change_a_shape_is_a_value_error():
  tx = gaf_optax.gaf(alpha=lambda count: jnp.full((3,), 0.3))
  state = tx.init({"w": jnp.ones(())})  # the shape is unknown until update
  with pytest.raises(ValueError, match=r"^gaf: alpha of shape \(3,\) does not"
                     r" fit update \['w'\] of shape \(\)"):
    jax.jit(tx.update)({"w": jnp.ones(())}, state)


def test_adaptive_scale_that_would_change_a_shape_is_a_value_error():
  with pytest.raises(ValueError, match=r"^adaptive_gaf: shrink of shape "
                     r"\(2, 2\) does not fit update of shape \(\)"):
    gaf_optax.adaptive_gaf(jnp.full((2, 2), 2.0), 1.0).update(
        jnp.float32(1.0), None)
  opt = gaf_optax.sgd_gaf(0.1, fn="adaptive", shrink=2.0, gamma=jnp.ones(4))
  with pytest.raises(ValueError, match=r"^sgd_gaf: gamma of shape \(4,\) does"
                     r" not fit parameter \['b'\] of shape \(3,\)"):
    opt.init({"b": jnp.ones(3)})


def test_scale_that_broadcasts_without_changing_the_shape_is_allowed():
  params = {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}
  u = {"w": jnp.linspace(-1, 1, 15).reshape(5, 3), "b": jnp.array([1., 2, 3])}
  alpha = jnp.array([0.1, 0.2, 0.3])
  tx = gaf_optax.gaf(alpha=alpha, beta=2.0)
  tx.init(params)
  out, _ = jax.jit(tx.update)(u, None)
  for k in params:
    assert out[k].shape == params[k].shape
    np.testing.assert_allclose(out[k], np.asarray(alpha) * np.arctan(
        2.0 * np.asarray(u[k])), rtol=1e-6)
  opt = gaf_optax.sgd_gaf(0.1, alpha=alpha)
  updates, _ = opt.update(u, opt.init(params), params)
  assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


# ----------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32, jnp.bool_])
@pytest.mark.parametrize("factory", [
    lambda: gaf_optax.gaf(),
    lambda: gaf_optax.adaptive_gaf(2.0, 1.0),
    lambda: gaf_optax.sgd_gaf(0.1),
    lambda: gaf_optax.sgd_gaf(0.1, position="gradient"),
    lambda: gaf_optax.adam_gaf(1e-3),
    lambda: gaf_optax.rmsprop_gaf(1e-3),
])
def test_non_floating_parameter_is_a_type_error_at_init(factory, dtype):
  params = {"w": jnp.ones(2), "z": jnp.ones(2, dtype)}
  name = jnp.dtype(dtype).name
  with pytest.raises(TypeError, match=rf"parameter \['z'\] has dtype {name}; "
                     r"only floating dtypes .* are accepted"):
    factory().init(params)


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.int32])
@pytest.mark.parametrize(
    "tx", [gaf_optax.gaf(), gaf_optax.adaptive_gaf(2.0, 1.0)])
def test_non_floating_update_is_a_type_error(tx, dtype):
  u = {"z": jnp.ones(2, dtype)}
  name = jnp.dtype(dtype).name
  with pytest.raises(TypeError, match=rf"update \['z'\] has dtype {name}; "
                     r"only floating dtypes"):
    jax.jit(tx.update)(u, None)


def test_python_float_leaves_work():
  # params = {"w": 1.0}: init, update and optax.apply_updates give the right
  # number (loss w**2: gradient 2).
  params = {"w": 1.0}
  opt = gaf_optax.sgd_gaf(0.1, momentum=0.9)
  state = opt.init(params)
  grads = jax.grad(lambda p: p["w"] ** 2)(params)
  updates, state = opt.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"], 1.0 - 0.1 * 0.3 * np.arctan(4.5 * 2.0),
                             rtol=1e-6)
  # Python floats given as updates directly, too.
  out, _ = gaf_optax.gaf().update({"w": 2.0}, None)
  np.testing.assert_allclose(out["w"], 0.3 * np.arctan(9.0), rtol=1e-6)
  out, _ = gaf_optax.adaptive_gaf(2.0, 1.0).update({"w": -4.0}, None)
  np.testing.assert_allclose(out["w"], -1.6076, atol=1e-4)


def test_python_int_leaf_is_a_type_error():
  with pytest.raises(TypeError, match=r"parameter \['n'\] has dtype int"):
    gaf_optax.sgd_gaf(0.1).init({"w": 1.0, "n": 3})


# ----------------------------------------------- adaptive_gaf's messages


@pytest.mark.parametrize("make, name", [
    (lambda: gaf_optax.adaptive_gaf(-1.0, 1.0), "shrink"),
    (lambda: gaf_optax.adaptive_gaf(2.0, 0.0), "gamma"),
    (lambda: gaf_optax.sgd_gaf(0.1, fn="adaptive", shrink=0.0, gamma=1.0),
     "shrink"),
])
def test_adaptive_error_does_not_offer_schedules(make, name):
  with pytest.raises(ValueError, match=rf": {name} must be a positive") as e:
    make()
  assert "schedule" not in str(e.value), str(e.value)


@pytest.mark.parametrize("make, where, name", [
    (lambda: gaf_optax.adaptive_gaf(_schedule, 1.0), "adaptive_gaf",
     "shrink"),
    (lambda: gaf_optax.adaptive_gaf(2.0, _schedule), "adaptive_gaf", "gamma"),
    (lambda: gaf_optax.sgd_gaf(0.1, fn="adaptive", shrink=2.0,
                               gamma=_schedule), "sgd_gaf", "gamma"),
])
def test_adaptive_schedule_is_refused_naming_the_argument(make, where, name):
  with pytest.raises(ValueError, match=rf"^{where}: {name} must be a positive"
                     r" finite number or array, not schedules; got <function"):
    make()


# ---------------------------------------------------- non-finite gradients


def _run(opt, grads, jit=True):
  params = {"w": jnp.zeros(3)}
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  out = []
  for g in grads:
    updates, state = update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    out.append(np.asarray(updates["w"]))
  return out, params


def test_inf_gradient_pins_the_momentum_buffer_as_documented():
  lr, alpha = 0.1, 0.3
  grads = [[1.0, -1.0, 0.5], [np.inf, -np.inf, 0.5]]
  grads += [[-1.0, 1.0, 0.5], [-100.0, 100.0, 0.5], [-3.0, 3.0, 0.5]]
  out, _ = _run(gaf_optax.sgd_gaf(lr, 0.9, alpha=alpha), grads)
  saturated = np.float32(lr) * np.float32(alpha) * np.float32(math.pi / 2)
  for u in out[1:]:  # reversed gradients change nothing
    np.testing.assert_allclose(u[:2], [-saturated, saturated], rtol=1e-6)
    assert np.isfinite(u[2])
  # An inf of the other sign later makes the buffer (and the updates) NaN.
  out, _ = _run(gaf_optax.sgd_gaf(lr, 0.9),
                [[np.inf] * 3, [-np.inf] * 3, [1.0] * 3])
  assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
  doc = gaf_optax.sgd_gaf.__doc__
  assert "optax.apply_if_finite" in doc and "skip_nonfinite_steps" in doc


def test_apply_if_finite_skips_the_inf_step():
  rng = np.random.default_rng(0)
  good = [rng.normal(size=3) * 10.0 ** rng.uniform(-3, 1, size=3)
          for _ in range(6)]
  bad = np.array([np.inf, 1.0, np.nan])
  make = lambda: gaf_optax.sgd_gaf(0.1, 0.9, weight_decay=1e-4)
  guarded, p_guarded = _run(optax.apply_if_finite(make(), 3),
                            good[:2] + [bad] + good[2:])
  clean, p_clean = _run(make(), good)
  np.testing.assert_array_equal(guarded[2], np.zeros(3))  # skipped
  np.testing.assert_allclose(np.stack(guarded[:2] + guarded[3:]),
                             np.stack(clean), rtol=1e-7, atol=0)
  np.testing.assert_allclose(p_guarded["w"], p_clean["w"], rtol=1e-7, atol=0)
