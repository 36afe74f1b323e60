"""ANAct: closed-form lambdas, train/eval, running average, per channel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import nn as gnn

Y = jax.random.normal(jax.random.key(0), (1_000_000,))

# Geometric lambda for y ~ N(0, 1), docs/methods.md, ANAct.
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


def test_train_uses_batch_lambda_and_updates_running_average():
  x = 3.0 * jax.random.normal(jax.random.key(1), (512, 4))
  module = gnn.NSwish(momentum=0.9)
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


def test_no_gradient_through_lambda():
  x = jax.random.normal(jax.random.key(2), (256,))
  module = gnn.NTanh()
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  lam, _, _ = gnn.anact_lambda(jnp.tanh, x)
  grad = jax.grad(lambda v: _apply(module, variables, v, True)[0].sum())(x)
  np.testing.assert_allclose(grad, lam * (1 - jnp.tanh(x) ** 2), rtol=1e-5)


def test_per_channel_shape_and_values():
  x = jax.random.normal(jax.random.key(3), (64, 5, 5, 3)) * jnp.array([0.5, 1, 4])
  module = gnn.NReLU(per_channel=True, momentum=0.5)
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  assert variables["batch_stats"]["lambda"].shape == (3,)
  _, upd = _apply(module, variables, x, train=True)
  for c in range(3):
    lam_c, _, _ = gnn.anact_lambda(nn.relu, x[..., c])
    np.testing.assert_allclose(upd["batch_stats"]["lambda"][c],
                               0.5 + 0.5 * lam_c, rtol=1e-5)


@pytest.mark.parametrize("value", [0.0, 2.0])
def test_constant_batch_is_finite(value):
  x = jnp.full((32, 4), value)
  for cls in (gnn.NReLU, gnn.NSwish, gnn.NTanh, gnn.NGELU):
    module = cls(per_channel=True)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    y, upd = _apply(module, variables, x, train=True)
    assert np.all(np.isfinite(y)) and np.all(
        np.isfinite(upd["batch_stats"]["lambda"])), cls.__name__


def test_jit_and_bf16():
  x = jax.random.normal(jax.random.key(4), (128, 8)).astype(jnp.bfloat16)
  module = gnn.NGELU()
  variables = module.init(jax.random.key(0), x, use_running_average=False)
  y, upd = jax.jit(lambda v, x: _apply(module, v, x, True))(variables, x)
  assert y.dtype == jnp.bfloat16
  assert upd["batch_stats"]["lambda"].dtype == jnp.float32
  lam, _, _ = gnn.anact_lambda(nn.gelu, x)
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np.asarray(nn.gelu(x) * lam.astype(jnp.bfloat16),
                                        np.float32), rtol=1e-2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="harmonic"), "mode must be one of"),
    (dict(momentum=1.0), r"momentum must be in \(0, 1\)"),
    (dict(momentum=0.0), r"momentum must be in \(0, 1\)"),
    (dict(activation=3), "activation must be callable"),
    (dict(epsilon=0.0), "epsilon must be positive"),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gnn.ANAct(**kwargs).init(jax.random.key(0), jnp.ones((2, 2)),
                             use_running_average=False)
