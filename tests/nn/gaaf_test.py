"""GAAF: exact forward, closed-form gradients, the paper's sawtooth form."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import nn as gnn

X = jnp.linspace(-8.0, 8.0, 2001)

# (ready-made function, base activation, closed-form base derivative, shape)
VARIANTS = {
    "tanh": (gnn.gaaf_tanh, jnp.tanh, lambda x: 1 - np.tanh(x) ** 2,
             lambda x: np.exp(-x**2 / 4)),
    "sigmoid": (gnn.gaaf_sigmoid, jax.nn.sigmoid,
                lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
                lambda x: 0.25 * np.exp(-x**2 / 16)),
    "relu": (gnn.gaaf_relu, jax.nn.relu, lambda x: (x > 0).astype(float),
             lambda x: 1 / (1 + np.exp(-(5 * x + 2.5)))),
}


@pytest.mark.parametrize("amplitude", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_exact_and_gradient_closed_form(name, amplitude):
  fn, base, dbase, shape = VARIANTS[name]
  act = functools.partial(fn, amplitude=amplitude)
  np.testing.assert_array_equal(act(X), base(X))  # bit for bit
  grad = jax.vmap(jax.grad(act))(X)
  x = np.asarray(X, np.float64)
  np.testing.assert_allclose(grad, dbase(x) + amplitude * shape(x),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_sawtooth_forward_error_and_same_gradient(name):
  fn, base, _, _ = VARIANTS[name]
  x = jnp.asarray(np.random.default_rng(0).uniform(-6, 6, 4001), jnp.float32)
  saw = functools.partial(fn, sawtooth=True, frequency=10_000)
  err = np.max(np.abs(np.asarray(saw(x), np.float64) - np.asarray(base(x))))
  assert err <= 0.5 / 10_000 + 1e-6  # + float32 rounding of the sum
  assert err > 0.05 / 10_000  # the sawtooth really is there
  np.testing.assert_array_equal(jax.vmap(jax.grad(saw))(x),
                                jax.vmap(jax.grad(fn))(x))


def test_transformations_and_bf16():
  x = X.reshape(1, -1)
  for name, (fn, base, _, _) in VARIANTS.items():
    np.testing.assert_array_equal(jax.jit(fn)(x), base(x))
    np.testing.assert_array_equal(jax.vmap(fn)(x), base(x))
    xb = x.astype(jnp.bfloat16)
    yb = fn(xb)
    gb = jax.grad(lambda v: fn(v).astype(jnp.float32).sum())(xb)
    assert yb.dtype == gb.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(yb, base(xb))
    # Gradient: the float32 derivative at the bf16 points, rounded once
    # (a small shape term must survive where tanh' cancels in bf16).
    g32 = jax.grad(lambda v: fn(v).sum())(xb.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(gb, np.float32), g32, rtol=2**-8,
                               atol=0)


def test_as_flax_activation_changes_only_gradients():
  class MLP(nn.Module):
    act: object

    @nn.compact
    def __call__(self, x):
      for _ in range(3):
        x = self.act(nn.Dense(8)(x))
      return nn.Dense(1)(x).sum()

  x = jax.random.normal(jax.random.key(0), (4, 5))
  params = MLP(nn.tanh).init(jax.random.key(1), x)
  plain, accel = MLP(nn.tanh), MLP(gnn.gaaf_tanh)
  assert plain.apply(params, x) == accel.apply(params, x)
  g_plain = jax.grad(plain.apply)(params, x)
  g_accel = jax.grad(accel.apply)(params, x)
  k = ("params", "Dense_0", "kernel")
  a, b = g_plain[k[0]][k[1]][k[2]], g_accel[k[0]][k[1]][k[2]]
  assert not np.allclose(a, b)
  # The last layer sees no activation derivative: identical gradients.
  np.testing.assert_array_equal(g_plain["params"]["Dense_3"]["kernel"],
                                g_accel["params"]["Dense_3"]["kernel"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation=jnp.tanh, shape=1.0), "shape must be a callable"),
    (dict(activation="tanh", shape=gnn.tanh_shape), "activation must be"),
    (dict(activation=jnp.tanh, shape=gnn.tanh_shape, amplitude=-0.1),
     "amplitude must be a non-negative"),
    (dict(activation=jnp.tanh, shape=gnn.tanh_shape, frequency=0),
     "frequency must be a positive"),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gnn.gaaf(**kwargs)
  if "amplitude" in kwargs:
    with pytest.raises(ValueError, match=match):
      gnn.gaaf_relu(X, amplitude=kwargs["amplitude"])
