"""NNX ANAct: equal to the Linen module, train/eval switch, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaf_optax import nn as gnn
from gaf_optax import nnx as gnnx

BATCHES = [s * jax.random.normal(jax.random.key(i), (256, 6)) + m
           for i, (s, m) in enumerate([(1.0, 0.0), (3.0, -1.0), (0.2, 0.5),
                                       (5.0, -4.0), (1.0, 2.0)])]


@pytest.mark.parametrize("rule", ["running", "batch"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("name", ["NSwish", "NReLU", "NGELU", "NTanh"])
def test_equal_to_linen_over_training_steps_and_in_eval(name, rule,
                                                        per_channel):
  kwargs = dict(rule=rule, per_channel=per_channel, momentum=0.9,
                max_step=0.05, max_ratio=1.5)
  linen = getattr(gnn, name)(**kwargs)
  variables = linen.init(jax.random.key(0), BATCHES[0],
                         use_running_average=True)
  mod = getattr(gnnx, name)(6 if per_channel else None, **kwargs)
  np.testing.assert_array_equal(mod.lam[...],
                                variables["batch_stats"]["lambda"])
  for x in BATCHES:
    y_linen, updates = linen.apply(variables, x, use_running_average=False,
                                   mutable=["batch_stats"])
    variables = {"batch_stats": updates["batch_stats"]}
    y = mod(x)
    np.testing.assert_array_equal(y, y_linen)
    np.testing.assert_array_equal(mod.lam[...],
                                  variables["batch_stats"]["lambda"])
  # The lambdas moved (the test is not comparing two constants).
  assert not np.allclose(mod.lam[...], linen.init(
      jax.random.key(0), BATCHES[0], use_running_average=True)
      ["batch_stats"]["lambda"])
  mod.eval()
  before = np.asarray(mod.lam[...])
  y_eval = mod(BATCHES[1])
  np.testing.assert_array_equal(
      y_eval, linen.apply(variables, BATCHES[1], use_running_average=True))
  np.testing.assert_array_equal(mod.lam[...], before)  # eval changes nothing
  mod.train()
  mod(BATCHES[1])
  assert not np.array_equal(mod.lam[...], before)


def test_call_argument_overrides_the_mode_and_jit_updates_the_stat():
  mod = gnnx.NReLU()
  lam0 = float(mod.lam[...])
  y = mod(BATCHES[3], use_running_average=True)
  np.testing.assert_allclose(y, lam0 * nn.relu(BATCHES[3]), rtol=1e-6)
  assert float(mod.lam[...]) == lam0

  @nnx.jit
  def step(m, x):
    return m(x)

  step(mod, BATCHES[3] - 3.0)  # mostly dead units: the batch lambda is large
  np.testing.assert_allclose(mod.lam[...], lam0 * np.exp(0.001), rtol=1e-6)


def test_lambda_is_a_batch_stat_that_an_optimizer_leaves_alone():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(6, 3, rngs=rngs)
      self.act = gnnx.NSwish()

    def __call__(self, x):
      return self.act(self.dense(x))

  net = Net(nnx.Rngs(0))
  assert jax.tree.leaves(nnx.state(net, nnx.BatchStat)) == [net.act.lam[...]]
  params = nnx.state(net, nnx.Param)
  assert len(jax.tree.leaves(params)) == 2  # kernel and bias only
  grads = nnx.grad(lambda m: jnp.sum(m(BATCHES[0]) ** 2))(net)
  assert len(jax.tree.leaves(grads)) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(per_channel=True), "per_channel=True needs num_features"),
    (dict(per_channel=True, num_features=0), "num_features"),
    (dict(mode="both"), "mode must be one of"),
    (dict(rule="ema"), "rule must be one of"),
    (dict(momentum=1.0), "momentum must be in"),
    (dict(max_ratio=1.0), "max_ratio must be greater than 1"),
    (dict(max_step=0.0), "max_step must be positive"),
    (dict(backward_exponent=-0.5), "backward_exponent must be a number in"),
])
def test_bad_arguments(kwargs, match):
  num_features = kwargs.pop("num_features", None)
  with pytest.raises(ValueError, match=match):
    gnnx.ANAct(num_features, **kwargs)


def test_wrong_channel_count_is_an_error():
  mod = gnnx.NSwish(4, per_channel=True)
  with pytest.raises(ValueError, match="num_features=4"):
    mod(BATCHES[0])


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_backward_exponent_as_in_linen(exponent):
  x = jax.random.normal(jax.random.key(3), (128, 4))
  act = gnnx.NSwish(backward_exponent=exponent)
  act.eval()
  lam = act.lam[...]
  grad = jax.grad(lambda v: jnp.sum(act(v)))(x)
  swish_grad = jax.grad(lambda v: jnp.sum(jax.nn.swish(v)))(x)
  np.testing.assert_allclose(grad, lam**exponent * swish_grad, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(act(x), jax.nn.swish(x) * lam)
