"""ANAct: closed-form lambdas, both rules' train/eval, per channel, bounds."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import nn as gnn

Y = jax.random.normal(jax.random.key(0), (1_000_000,))

# Geometric lambda for y ~ N(0, 1), docs/methods/anact.md.
CLOSED_FORM = {"relu": (nn.relu, 1.414), "swish": (nn.swish, 1.650),
               "tanh": (jnp.tanh, 1.529), "gelu": (nn.gelu, 1.507),
               "sigmoid": (nn.sigmoid, 2.95)}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_lambda_of_standard_normal_matches_closed_form(name):
  fn, expected = CLOSED_FORM[name]
  lam, rho, rho_prime = gnn.anact_lambda(fn, Y)
  np.testing.assert_allclose(lam, expected, rtol=0.01)
  np.testing.assert_allclose(lam, (rho * rho_prime) ** -0.25, rtol=1e-6)
  fwd, _, _ = gnn.anact_lambda(fn, Y, mode="forward")
  bwd, _, _ = gnn.anact_lambda(fn, Y, mode="backward")
  np.testing.assert_allclose([fwd, bwd], [rho**-0.5, rho_prime**-0.5],
                             rtol=1e-6)


def test_relu_gains_by_hand():
  y = jnp.array([-2.0, -1.0, 1.0, 2.0])
  _, rho, rho_prime = gnn.anact_lambda(nn.relu, y, epsilon=0.0)
  np.testing.assert_allclose(rho, (1 + 4) / 4 / 2.5, rtol=1e-6)  # E f^2/Var
  np.testing.assert_allclose(rho_prime, 0.5, rtol=1e-6)


def _apply(module, variables, x, train):
  return module.apply(variables, x, use_running_average=not train,
                      mutable=["batch_stats", "intermediates"])


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_gaussian_lambda_by_quadrature(name):
  fn, _ = CLOSED_FORM[name]
  for mode in ("geometric", "forward", "backward"):
    expected, _, _ = gnn.anact_lambda(fn, Y, mode=mode)  # Monte Carlo
    np.testing.assert_allclose(gnn.gaussian_lambda(fn, mode=mode), expected,
                               rtol=3e-3)
  np.testing.assert_allclose(gnn.gaussian_lambda(nn.relu), 2**0.5, rtol=1e-5)
  with pytest.raises(ValueError, match="mode must be one of"):
    gnn.gaussian_lambda(fn, mode="both")


def test_batch_rule_uses_batch_lambda_and_updates_running_average():
  x = 3.0 * jax.random.normal(jax.random.key(1), (512, 4))
  module = gnn.NSwish(momentum=0.9, rule="batch")
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  np.testing.assert_array_equal(variables["batch_stats"]["lambda"], 1.0)
  lam, _, _ = gnn.anact_lambda(nn.swish, x)
  y, upd = _apply(module, variables, x, train=True)
  np.testing.assert_allclose(y, nn.swish(x) * lam, rtol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["lambda"], 0.9 + 0.1 * lam,
                             rtol=1e-6)
  inter = upd["intermediates"]
  np.testing.assert_allclose(inter["lambda"][0], lam, rtol=1e-6)
  # Evaluation: the running value, and nothing changes.
  variables = {"batch_stats": upd["batch_stats"]}
  y_eval, upd2 = _apply(module, variables, x, train=False)
  np.testing.assert_allclose(y_eval, nn.swish(x) * (0.9 + 0.1 * lam), rtol=1e-6)
  np.testing.assert_array_equal(upd2["batch_stats"]["lambda"],
                                upd["batch_stats"]["lambda"])


def test_running_rule_starts_at_gaussian_lambda_and_moves_slowly():
  x = jax.random.normal(jax.random.key(1), (512, 4)) - 0.5
  module = gnn.NReLU(momentum=0.9, max_step=0.1)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  lam0 = gnn.gaussian_lambda(nn.relu)
  np.testing.assert_allclose(variables["batch_stats"]["lambda"], lam0,
                             rtol=1e-6)
  lam_batch, _, _ = gnn.anact_lambda(nn.relu, x)
  # 0.1 * log(lam_batch / lam0) is inside max_step: a plain log-space EMA.
  assert 0.001 < 0.1 * np.log(lam_batch / lam0) < 0.1
  expected = lam0 * (lam_batch / lam0) ** 0.1
  y, upd = _apply(module, variables, x, train=True)
  np.testing.assert_allclose(upd["batch_stats"]["lambda"], expected,
                             rtol=1e-6)
  # Training uses the value it has just stored, evaluation the stored one.
  np.testing.assert_allclose(y, nn.relu(x) * expected, rtol=1e-6)
  np.testing.assert_allclose(upd["intermediates"]["lambda"][0], lam_batch,
                             rtol=1e-6)
  variables = {"batch_stats": upd["batch_stats"]}
  y_eval, upd2 = _apply(module, variables, x, train=False)
  np.testing.assert_allclose(y_eval, y, rtol=1e-6)
  np.testing.assert_array_equal(upd2["batch_stats"]["lambda"],
                                upd["batch_stats"]["lambda"])


@pytest.mark.parametrize("shift, direction", [(-4.0, 1.0), (4.0, -1.0)])
def test_running_rule_is_rate_limited_and_bounded(shift, direction):
  # A batch whose units are almost all dead (shift -4: lambda_batch ~ 100)
  # or all linear (shift +4): each step moves log(lambda) by max_step
  # exactly, until lambda sits on its bound lambda0 * max_ratio**direction.
  x = jax.random.normal(jax.random.key(5), (1024, 2)) + shift
  module = gnn.NReLU(momentum=0.5, max_step=0.05, max_ratio=1.3)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  lam0 = float(gnn.gaussian_lambda(nn.relu))
  lam_batch, _, _ = gnn.anact_lambda(nn.relu, x)
  assert direction * 0.5 * np.log(lam_batch / (lam0 * 1.3)) > 0.05
  step = jax.jit(lambda v: _apply(module, v, x, train=True)[1])
  seen = [lam0]
  for _ in range(8):
    variables = {"batch_stats": step(variables)["batch_stats"]}
    seen.append(float(variables["batch_stats"]["lambda"]))
  np.testing.assert_allclose(np.diff(np.log(seen))[:5], direction * 0.05,
                             rtol=1e-4)
  np.testing.assert_allclose(seen[-1], lam0 * 1.3**direction, rtol=1e-6)
  assert all(lam0 / 1.3 * (1 - 1e-6) <= v <= lam0 * 1.3 * (1 + 1e-6)
             for v in seen)


def test_running_rule_on_a_dead_layer_stays_finite_and_bounded():
  # The batch rule's failure: with every unit dead, rho and rho' are
  # epsilon-sized and the forward pass at once uses a lambda of hundreds.
  x = -1.0 - jnp.abs(jax.random.normal(jax.random.key(6), (256, 8)))
  lam_batch, _, _ = gnn.anact_lambda(nn.relu, x)
  assert lam_batch > 100
  for rule in ("batch", "running"):
    module = gnn.NReLU(rule=rule)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    y, upd = _apply(module, variables, x, train=True)
    np.testing.assert_array_equal(y, 0.0)
    used = (upd["intermediates"]["lambda"][0] if rule == "batch"
            else upd["batch_stats"]["lambda"])
    expected = (lam_batch if rule == "batch"
                else gnn.gaussian_lambda(nn.relu) * np.exp(0.001))
    np.testing.assert_allclose(used, expected, rtol=1e-5)


@pytest.mark.parametrize("exponent", [1.0, 0.5, 0.0])
def test_no_gradient_through_lambda_and_the_backward_exponent(exponent):
  # The output is lambda * f(x) whatever the exponent; its gradient carries
  # lambda**exponent (1: the true derivative, with lambda a constant).
  x = jax.random.normal(jax.random.key(2), (256,))
  module = gnn.NTanh(rule="batch", backward_exponent=exponent)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  lam, _, _ = gnn.anact_lambda(jnp.tanh, x)
  y = _apply(module, variables, x, True)[0]
  np.testing.assert_array_equal(y, jnp.tanh(x) * lam)
  grad = jax.grad(lambda v: _apply(module, variables, v, True)[0].sum())(x)
  np.testing.assert_allclose(grad, lam**exponent * (1 - jnp.tanh(x) ** 2),
                             rtol=1e-5)
  # Evaluation too, with the stored lambda.
  stored = variables["batch_stats"]["lambda"] * 1.7
  ev = {"batch_stats": {"lambda": stored}}
  grad = jax.grad(lambda v: _apply(module, ev, v, False)[0].sum())(x)
  np.testing.assert_allclose(grad, stored**exponent * (1 - jnp.tanh(x) ** 2),
                             rtol=1e-5)


def test_per_channel_shape_and_values():
  x = jax.random.normal(jax.random.key(3), (64, 5, 5, 3)) * jnp.array([0.5, 1, 4])
  x = x - jnp.array([0.0, 0.2, 0.4])  # different lambdas per channel
  for rule in ("batch", "running"):
    module = gnn.NReLU(per_channel=True, momentum=0.5, rule=rule,
                       max_step=1.0, max_ratio=3.0)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    assert variables["batch_stats"]["lambda"].shape == (3,)
    _, upd = _apply(module, variables, x, train=True)
    lam0 = gnn.gaussian_lambda(nn.relu)
    for c in range(3):
      lam_c, _, _ = gnn.anact_lambda(nn.relu, x[..., c])
      expected = (0.5 + 0.5 * lam_c if rule == "batch"
                  else np.sqrt(lam0 * lam_c))
      np.testing.assert_allclose(upd["batch_stats"]["lambda"][c], expected,
                                 rtol=1e-5)


@pytest.mark.parametrize("value", [0.0, 2.0])
def test_constant_batch_is_finite(value):
  x = jnp.full((32, 4), value)
  for cls in (gnn.NReLU, gnn.NSwish, gnn.NTanh, gnn.NGELU):
    module = cls(per_channel=True)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    y, upd = _apply(module, variables, x, train=True)
    assert np.all(np.isfinite(y)) and np.all(
        np.isfinite(upd["batch_stats"]["lambda"])), cls.__name__


@pytest.mark.parametrize("rule", ["batch", "running"])
def test_jit_and_bf16(rule):
  x = jax.random.normal(jax.random.key(4), (128, 8)).astype(jnp.bfloat16)
  module = gnn.NGELU(rule=rule)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  y, upd = jax.jit(lambda v, x: _apply(module, v, x, True))(variables, x)
  assert y.dtype == jnp.bfloat16
  assert upd["batch_stats"]["lambda"].dtype == jnp.float32
  lam = (gnn.anact_lambda(nn.gelu, x)[0] if rule == "batch"
         else upd["batch_stats"]["lambda"])
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(nn.gelu(x) * lam.astype(jnp.bfloat16),
                                        np.float32), rtol=1e-2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="harmonic"), "mode must be one of"),
    (dict(momentum=1.0), r"momentum must be in \(0, 1\)"),
    (dict(momentum=0.0), r"momentum must be in \(0, 1\)"),
    (dict(activation=3), "activation must be callable"),
    (dict(epsilon=0.0), "epsilon must be positive"),
    (dict(rule="ema"), "rule must be one of"),
    (dict(max_ratio=1.0), "max_ratio must be greater than 1"),
    (dict(max_step=0.0), "max_step must be positive"),
    (dict(backward_exponent=1.5), r"backward_exponent must be a number in "
     r"\[0, 1\]; got 1.5"),
    (dict(backward_exponent="half"), "backward_exponent must be a number"),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gnn.ANAct(**kwargs).init(jax.random.key(0), jnp.ones((2, 2)),
                             use_running_average=False)


@pytest.mark.parametrize("shift, direction", [(-4.0, 1.0), (4.0, -1.0)])
def test_default_bound_is_five_percent_of_lambda0(shift, direction):
  # The default since study 7's narrow_bound arm: max_ratio 1.05. With the
  # default max_step (0.001 in log per step) lambda reaches the bound after
  # ceil(log(1.05) / 0.001) = 49 steps and stays there.
  x = jax.random.normal(jax.random.key(5), (1024, 2)) + shift
  module = gnn.NReLU()
  assert (module.max_ratio, module.max_step) == (1.05, 0.001)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  lam0 = float(gnn.gaussian_lambda(nn.relu))
  step = jax.jit(lambda v: _apply(module, v, x, train=True)[1])
  seen = []
  for _ in range(60):
    variables = {"batch_stats": step(variables)["batch_stats"]}
    seen.append(float(variables["batch_stats"]["lambda"]))
  np.testing.assert_allclose(seen[47], lam0 * np.exp(direction * 0.048),
                             rtol=1e-5)
  np.testing.assert_allclose(seen[48:], lam0 * 1.05**direction, rtol=1e-6)
