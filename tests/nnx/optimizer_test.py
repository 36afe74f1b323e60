"""Every gaf_optax transformation in nnx.Optimizer, equal to plain optax."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gaf_optax
from gaf_optax import nnx as gnnx

X = jax.random.normal(jax.random.key(0), (16, 4))
Y = jax.random.normal(jax.random.key(1), (16, 3))


class Net(nnx.Module):

  def __init__(self, rngs):
    self.dense1 = nnx.Linear(4, 8, rngs=rngs)
    self.point1 = gnnx.AmplificationPoint()
    self.act = gnnx.NSwish()
    self.dense2 = nnx.Linear(8, 3, rngs=rngs)
    self.point2 = gnnx.AmplificationPoint()

  def __call__(self, x):
    return self.point2(self.dense2(self.act(self.point1(self.dense1(x)))))


def _points_controller():
  return gaf_optax.gradient_amplification(
      2, 2, factor=3.0, selection="random", ratio=0.5, start_epoch=0)


def _layer_of(params):
  """Label 0 for dense1's leaves and 1 for dense2's (the tree's own type)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 0 if "dense1" in jax.tree_util.keystr(path) else 1,
      params)


TRANSFORMS = {
    "gaf+sgd": lambda: optax.chain(gaf_optax.gaf(0.1, 15.0), optax.sgd(0.1)),
    "adaptive_gaf+adam": lambda: optax.chain(gaf_optax.adaptive_gaf(0.5, 1.0),
                                             optax.adam(1e-2)),
    "sgd_gaf": lambda: gaf_optax.sgd_gaf(0.5, 0.9, weight_decay=1e-3),
    "sgd_gaf(gradient)": lambda: gaf_optax.sgd_gaf(0.5, 0.9,
                                                   position="gradient"),
    "adam_gaf": lambda: gaf_optax.adam_gaf(1e-2),
    "rmsprop_gaf": lambda: gaf_optax.rmsprop_gaf(1e-2),
    "amplification(points)+sgd": lambda: optax.chain(_points_controller(),
                                                     optax.sgd(0.1)),
    "amplification(labels)+adam": lambda: optax.chain(
        gaf_optax.gradient_amplification(
            2, 2, factor=3.0, selection="random", ratio=0.5, start_epoch=0,
            labels=_layer_of),
        optax.adam(1e-2)),
}


def _optimizer_update(optimizer, model, grads, **kwargs):
  """``update(model, grads)`` on Flax >= 0.11, ``update(grads)`` before."""
  if "model" in inspect.signature(optimizer.update).parameters:
    optimizer.update(model, grads, **kwargs)
  else:
    optimizer.update(grads, **kwargs)


def _loss(model):
  return jnp.mean((model(X) - Y) ** 2)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_nnx_optimizer_steps_equal_the_optax_steps(name):
  points = "points" in name
  model = Net(nnx.Rngs(0))
  reference = nnx.clone(model)
  tx = TRANSFORMS[name]()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  params = nnx.state(reference, nnx.Param)
  opt_state = tx.init(params)
  wrt = nnx.DiffState(0, (nnx.Param, gnnx.AmplificationFactors))
  for _ in range(5):
    # gaf_optax.amplification_factors reads the nnx.Optimizer's state.
    if points:
      np.testing.assert_array_equal(
          gaf_optax.amplification_factors(optimizer.opt_state),
          gaf_optax.amplification_factors(opt_state))
      for m in (model, reference):
        gnnx.set_amplification_factors(
            m, gaf_optax.amplification_factors(opt_state))
    grads = nnx.grad(_loss, argnums=wrt)(model)
    extra = ({"layer_stats": gnnx.amplification_signal_norms(grads)}
             if points else {})
    _optimizer_update(optimizer, model, nnx.filter_state(grads, nnx.Param),
                      **extra)

    ref_grads = nnx.grad(_loss, argnums=wrt)(reference)
    updates, opt_state = tx.update(nnx.filter_state(ref_grads, nnx.Param),
                                   opt_state, params, **extra)
    params = optax.apply_updates(params, updates)
    nnx.update(reference, params)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  want = nnx.to_pure_dict(nnx.state(reference, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               got, want)
  start = nnx.to_pure_dict(nnx.state(Net(nnx.Rngs(0)), nnx.Param))
  assert not np.allclose(got["dense1"]["kernel"], start["dense1"]["kernel"])
  if points:  # the controller selected one point and amplified it
    assert sorted(np.asarray(gaf_optax.amplification_factors(
        optimizer.opt_state)).tolist()) == [1.0, 3.0]
