"""NNX amplification points: factors as variables, numbering, nnx.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaf_optax import nn as gnn
from gaf_optax import nnx as gnnx

L, D = 4, 5
X = jax.random.normal(jax.random.key(0), (8, D))
FACTORS = jnp.array([2.0, 0.5, 3.0, 1.5])


class Block(nnx.Module):

  def __init__(self, rngs):
    self.dense = nnx.Linear(D, D, rngs=rngs)
    self.point = gnnx.AmplificationPoint()

  def __call__(self, x):
    return jnp.tanh(self.point(self.dense(x)))


class Scanned(nnx.Module):
  """L blocks created with nnx.vmap and run under nnx.scan (and remat)."""

  def __init__(self, rngs):
    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return Block(rngs)

    self.blocks = create(rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    @nnx.remat
    def body(x, block):
      return block(x)

    return body(x, self.blocks)


def _reference(kernels, biases, factors, x):
  """The same net unrolled in plain JAX with gaf_optax.nn.amplify."""
  for k, b, f in zip(kernels, biases, factors):
    x = jnp.tanh(gnn.amplify(x @ k + b, f))
  return jnp.sum(x ** 2)


def test_scanned_points_are_numbered_by_layer_and_match_unrolled_amplify():
  model = Scanned(nnx.Rngs(0))
  assert gnnx.num_amplification_points(model) == L
  gnnx.set_amplification_factors(model, FACTORS)
  np.testing.assert_array_equal(model.blocks.point.factor[...], FACTORS)

  wrt = nnx.DiffState(0, (nnx.Param, gnnx.AmplificationFactors))
  grads = nnx.grad(lambda m: jnp.sum(m(X) ** 2), argnums=wrt)(model)
  norms = gnnx.amplification_signal_norms(grads)

  kernels = model.blocks.dense.kernel[...]
  biases = model.blocks.dense.bias[...]
  ref_k, ref_f = jax.grad(_reference, argnums=(0, 2))(
      list(kernels), list(biases), list(FACTORS), X)
  np.testing.assert_allclose(
      nnx.to_pure_dict(grads)["blocks"]["dense"]["kernel"],
                             jnp.stack(ref_k), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(norms, gnn.signal_norms(jnp.stack(ref_f)),
                             rtol=1e-5)
  # Amplification changed the gradients: the factors are not ignored.
  plain_k = jax.grad(_reference)(list(kernels), list(biases),
                                 [1.0] * L, X)
  assert not np.allclose(ref_k[0], plain_k[0], rtol=1e-2)


def test_points_in_named_attributes_follow_the_sorted_names():
  class Net(nnx.Module):
    def __init__(self):
      self.b_second = gnnx.AmplificationPoint()
      self.a_first = gnnx.AmplificationPoint()

    def __call__(self, x):
      return jnp.sum(3.0 * self.b_second(2.0 * self.a_first(x)))

  net = Net()
  gnnx.set_amplification_factors(net, jnp.array([2.0, 5.0]))
  assert float(net.a_first.factor[...]) == 2.0
  wrt = nnx.DiffState(0, gnnx.AmplificationFactors)
  grads = nnx.grad(lambda m, x: m(x), argnums=wrt)(net, jnp.ones(3))
  # a_first sees 2 * 5 * 3 per element, b_second sees 3.
  np.testing.assert_allclose(gnnx.amplification_signal_norms(grads),
                             [30.0 * 3**0.5, 3.0 * 3**0.5], rtol=1e-6)


def test_a_model_without_points_and_bad_factor_shapes():
  assert gnnx.num_amplification_points(nnx.Linear(2, 2, rngs=nnx.Rngs(0))) == 0
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones(2))))(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  assert gnnx.amplification_signal_norms(grads).shape == (0,)
  model = Scanned(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"factors must have shape \(4,\)"):
    gnnx.set_amplification_factors(model, jnp.ones(3))
