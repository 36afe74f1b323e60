"""Linen AmplificationPoint: factors as a collection, numbering under nn.scan."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import nn as gnn

L, D = 4, 5
X = jax.random.normal(jax.random.key(0), (8, D))
FACTORS = jnp.array([2.0, 0.5, 3.0, 1.5])


class Block(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    return jnp.tanh(gnn.AmplificationPoint()(nn.Dense(D)(x))), None


class Net(nn.Module):
  """L blocks under nn.scan (and nn.remat): one traced body for all."""

  @nn.compact
  def __call__(self, x):
    scanned = nn.scan(nn.remat(Block),
                      variable_axes={"params": 0, "amplification": 0},
                      split_rngs={"params": True}, length=L)
    x, _ = scanned()(x, None)
    return x


def _reference(kernels, biases, factors, x):
  for k, b, f in zip(kernels, biases, factors):
    x = jnp.tanh(gnn.amplify(x @ k + b, f))
  return jnp.sum(x ** 2)


def test_scanned_points_get_one_factor_and_one_statistic_per_layer():
  net = Net()
  variables = net.init(jax.random.key(1), X)
  assert jax.tree.leaves(variables["amplification"])[0].shape == (L,)
  amp = gnn.set_point_factors(variables["amplification"], FACTORS)

  def loss(params, amp):
    return jnp.sum(net.apply({"params": params, "amplification": amp}, X)
                   ** 2)

  grads, amp_grads = jax.grad(loss, argnums=(0, 1))(variables["params"], amp)
  dense = jax.tree.leaves(variables["params"], is_leaf=lambda t: isinstance(
      t, dict) and "kernel" in t)[0]
  ref_k, ref_f = jax.grad(_reference, argnums=(0, 2))(
      list(dense["kernel"]), list(dense["bias"]), list(FACTORS), X)
  got_k = jax.tree.leaves(grads, is_leaf=lambda t: isinstance(
      t, dict) and "kernel" in t)[0]["kernel"]
  np.testing.assert_allclose(got_k, jnp.stack(ref_k), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gnn.point_signal_norms(amp_grads),
                             gnn.signal_norms(jnp.stack(ref_f)), rtol=1e-5)
  plain = jax.grad(_reference)(list(dense["kernel"]), list(dense["bias"]),
                               [1.0] * L, X)
  assert not np.allclose(ref_k[0], plain[0], rtol=1e-2)


def test_set_point_factors_checks_the_count():
  variables = Net().init(jax.random.key(1), X)
  with pytest.raises(ValueError, match=r"factors must have shape \(4,\)"):
    gnn.set_point_factors(variables["amplification"], jnp.ones(5))
  assert gnn.point_signal_norms({}).shape == (0,)
