"""The reference models as NNX modules: counts, outputs, stats, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import nnx as gnnx
from tests.models.models_test import PARAM_COUNTS
from tests.models.models_test import POINTS
from tests.models.models_test import TINY


def _shape(name):
  size = 224 if name.startswith("imagenet") else 32
  return (size, size, 3)


def _count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "densenet121",
                                  "mobilenet_v2", "vgg16", "lenet", "mlp",
                                  "imagenet_resnet50"])
def test_parameter_count_and_points_equal_the_linen_model(name):
  abstract = nnx.eval_shape(lambda: models.get_nnx(
      name, input_shape=_shape(name), rngs=nnx.Rngs(0), amplification=True))
  assert _count(nnx.state(abstract, nnx.Param)) == PARAM_COUNTS[name]
  assert abstract.num_amplification_points == POINTS[name]
  assert gnnx.num_amplification_points(abstract) == POINTS[name]


def _merge(into, tree):
  for key, value in tree.items():
    if isinstance(value, dict):
      _merge(into.setdefault(key, {}), value)
    else:
      into[key] = value


def _load_linen_variables(model, variables):
  """Writes a Linen model's variables into the NNX wrapper of it."""
  state = nnx.state(model)
  pure = nnx.to_pure_dict(state)
  for collection in variables.values():
    _merge(pure["linen"], jax.device_get(collection))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


CASES = {
    "resnet8": dict(widths=(4, 8, 8), act=gnn.NSwish),
    "lenet": TINY["lenet"],
    "mlp": dict(TINY["mlp"], act=gnn.NReLU),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_batch_stats_and_gradients_equal_the_linen_model(name):
  linen = models.get(name, **CASES[name])
  shape = (8, 32, 32, 3) if name == "lenet" else (8, 8, 8, 3)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = jax.jit(functools.partial(linen.init, train=False))(
      jax.random.key(0), x)
  model = models.get_nnx(name, input_shape=shape[1:], rngs=nnx.Rngs(5),
                         amplification=True, **CASES[name])
  _load_linen_variables(model, variables)
  n = linen.num_amplification_points
  factors = jnp.linspace(0.5, 2.0, n)
  gnnx.set_amplification_factors(model, factors)

  def linen_loss(params, factors):
    logits, updates = linen.apply({**variables, "params": params}, x,
                                  train=True, amp_factors=factors,
                                  mutable=["batch_stats"])
    return jnp.sum(logits ** 2), (logits, updates)

  (_, (logits, updates)), (grads, factor_grads) = jax.jit(jax.value_and_grad(
      linen_loss, argnums=(0, 1), has_aux=True))(variables["params"], factors)

  @nnx.jit
  def nnx_step(model):
    wrt = nnx.DiffState(0, (nnx.Param, gnnx.AmplificationFactors))
    def loss(model):
      logits = model(x)
      return jnp.sum(logits ** 2), logits
    (_, logits), g = nnx.value_and_grad(loss, argnums=wrt, has_aux=True)(
        model)
    return logits, g

  nnx_logits, nnx_grads = nnx_step(model)
  tol = dict(rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(nnx_logits, logits, **tol)
  pure_grads = nnx.to_pure_dict(nnx.filter_state(nnx_grads, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               pure_grads["linen"], grads)
  np.testing.assert_allclose(gnnx.amplification_signal_norms(nnx_grads),
                             gnn.signal_norms(factor_grads), rtol=2e-5)
  # The training call updated the BatchStat variables as Linen's mutable
  # apply did (BatchNorm moments, ANAct lambdas).
  stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)).get("linen", {})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               stats, dict(updates).get("batch_stats", {}))
  # Evaluation mode uses the running statistics and changes nothing.
  model.eval()
  eval_logits = nnx.jit(lambda m: m(x))(model)
  np.testing.assert_allclose(
      eval_logits, jax.jit(functools.partial(linen.apply, train=False))(
          {**variables, **updates}, x), **tol)
  after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)).get("linen", {})
  jax.tree.map(np.testing.assert_array_equal, after, stats)


def test_amplification_needs_points_and_a_linen_module():
  with pytest.raises(TypeError, match="must be a flax.linen Module"):
    models.NNXModel(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), (2,),
                    rngs=nnx.Rngs(0))
  model = models.get_nnx("mlp", features=(3,), input_shape=(2, 2, 1),
                         rngs=nnx.Rngs(0))
  assert model.amp_factors is None
  assert gnnx.num_amplification_points(model) == 0
