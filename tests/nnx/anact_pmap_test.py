"""NNX ANAct across replicas: axis_name gives global-batch statistics.

An NNX net with ANAct layers, split into graph and state and stepped under
``jax.pmap`` on the 8 CPU devices of conftest (gradients ``pmean``-ed): with
``axis_name`` the replicas stay identical and equal to one device on the
global batch; without, their lambdas drift apart.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaf_optax import nnx as gnnx

N, B, STEPS, LR = 8, 8, 5, 0.1


class Net(nnx.Module):
  """Linear-ANAct-Linear-ANAct (per channel)-Linear."""

  def __init__(self, rule, axis_name=None, *, rngs):
    kw = dict(rule=rule, max_step=0.05, max_ratio=1.5, axis_name=axis_name)
    self.fc1 = nnx.Linear(6, 16, rngs=rngs)
    self.act1 = gnnx.NSwish(**kw)
    self.fc2 = nnx.Linear(16, 16, rngs=rngs)
    self.act2 = gnnx.NSwish(16, per_channel=True, **kw)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _lam(stats, layer):
  """The stored lambda of ``layer`` as an array (any Flax release)."""
  return np.asarray(jax.tree.leaves(stats[layer])[0])


def _data():
  kx, ky = jax.random.split(jax.random.key(0))
  xs = 2.0 * jax.random.normal(kx, (STEPS, N * B, 6)) + 0.5
  ys = jax.random.normal(ky, (STEPS, N * B, 4))
  return xs, ys


def _step(graphdef, params, stats, x, y, axis_name=None):
  def loss_fn(params):
    # Fresh variables at this trace level (Flax 0.12's State holds the
    # Variables themselves, which a call may only update where made).
    model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, stats))
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, nnx.state(model, nnx.BatchStat)
  grads, stats = jax.grad(loss_fn, has_aux=True)(params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  return jax.tree.map(lambda p, g: p - LR * g, params, grads), stats


def _run(rule, axis_name, devices):
  xs, ys = _data()
  graphdef, params, stats = nnx.split(
      Net(rule, axis_name, rngs=nnx.Rngs(1)), nnx.Param, nnx.BatchStat)
  if devices == 1:
    step = jax.jit(functools.partial(_step, graphdef))
    for t in range(STEPS):
      params, stats = step(params, stats, xs[t], ys[t])
    return params, stats
  params, stats = jax.tree.map(lambda a: jnp.stack([a] * N), (params, stats))
  step = jax.pmap(functools.partial(_step, graphdef, axis_name="batch"),
                  axis_name="batch")
  for t in range(STEPS):
    params, stats = step(params, stats, xs[t].reshape(N, B, -1),
                         ys[t].reshape(N, B, -1))
  return params, stats


@pytest.mark.parametrize("rule", ["running", "batch"])
def test_pmap_with_axis_name_equals_one_device_on_global_batch(rule):
  replicated = _run(rule, "batch", N)
  for leaf in jax.tree.leaves(replicated):
    for i in range(1, N):
      np.testing.assert_array_equal(leaf[i], leaf[0])
  reference = _run(rule, None, 1)
  jax.tree.map(lambda r, a: np.testing.assert_allclose(r[0], a, rtol=1e-5,
                                                       atol=1e-6),
               replicated, reference)
  start = Net(rule, rngs=nnx.Rngs(1)).act2.lam[...]
  assert not np.allclose(_lam(reference[1], "act2"), start, rtol=1e-3)


@pytest.mark.parametrize("rule", ["running", "batch"])
def test_pmap_without_axis_name_drifts_from_one_device(rule):
  _, stats = _run(rule, None, N)
  lam = _lam(stats, "act2")
  assert np.max(lam.max(0) - lam.min(0)) > 1e-3
  _, reference = _run(rule, None, 1)
  assert np.max(np.abs(lam[0] - _lam(reference, "act2"))) > 1e-4


def test_axis_index_groups_take_statistics_per_group():
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  shards = _data()[0][0].reshape(N, B, -1)
  act = gnnx.NTanh(6, per_channel=True, rule="batch", momentum=0.5,
                   axis_name="batch", axis_index_groups=groups)
  assert act.axis_index_groups == ((0, 1, 2, 3), (4, 5, 6, 7))
  graphdef, stats = nnx.split(act)

  def train_call(stats, x):
    module = nnx.merge(graphdef, stats)
    module(x)
    return nnx.state(module)
  new = _lam({"act": jax.pmap(train_call, axis_name="batch",
                              in_axes=(None, 0))(stats, shards)}, "act")
  for group in groups:
    one = gnnx.NTanh(6, per_channel=True, rule="batch", momentum=0.5)
    one(jnp.concatenate([shards[i] for i in group]))
    for i in group:
      np.testing.assert_allclose(new[i], one.lam[...], rtol=1e-5)
  assert not np.allclose(new[0], new[4], rtol=1e-3)


def test_axis_name_is_accepted_and_checked():
  act = gnnx.NSwish(axis_name="batch")
  assert act.axis_name == "batch"
  np.testing.assert_allclose(act.lam[...], gnnx.NSwish().lam[...])
  with pytest.raises(TypeError, match="axis_name must be None, a str"):
    gnnx.NReLU(axis_name=1)
  with pytest.raises(ValueError, match="axis_index_groups needs an axis_name"):
    gnnx.NReLU(axis_index_groups=[[0, 1]])
  with pytest.raises(TypeError, match="axis_index_groups must be a sequence"):
    gnnx.NReLU(axis_name="batch", axis_index_groups=3)
