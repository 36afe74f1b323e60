"""ANAct (Linen) across replicas: axis_name gives global-batch statistics.

Under ``jax.pmap`` and ``shard_map`` on the 8 CPU devices of conftest, with
the gradients ``pmean``-ed, a net with ANAct layers must keep identical
replicas equal to one device on the global batch when ``axis_name`` is set,
and (the test can fail) drift from it without.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gaf_optax import nn as gnn

N, B, STEPS, LR = 8, 8, 5, 0.1


def _shard_map(f, mesh, in_specs, out_specs):
  """``jax.shard_map``, or its experimental form on older JAX.

  Without replication checks (``check_vma`` / ``check_rep``), where both
  forms take gradients as ``pmap`` does: per device, for the step to
  ``pmean``. (With the checks, newer JAX sums the gradients of replicated
  parameters over the axis itself and older JAX does not.)
  """
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                   check_rep=False)


class Net(nn.Module):
  """Dense-ANAct-Dense-ANAct (per channel)-Dense."""

  rule: str
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train=True):
    act = functools.partial(gnn.NSwish, rule=self.rule, max_step=0.05,
                            max_ratio=1.5, axis_name=self.axis_name)
    x = act()(nn.Dense(16)(x), use_running_average=not train)
    x = act(per_channel=True)(nn.Dense(16)(x), use_running_average=not train)
    return nn.Dense(4)(x)


def _data():
  kx, ky = jax.random.split(jax.random.key(0))
  xs = 2.0 * jax.random.normal(kx, (STEPS, N * B, 6)) + 0.5
  ys = jax.random.normal(ky, (STEPS, N * B, 4))
  return xs, ys


def _step(model, variables, x, y, axis_name=None):
  """One SGD step; under a mapped axis the gradients are pmean-ed."""
  def loss_fn(params):
    out, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        mutable=["batch_stats"])
    return jnp.mean((out - y) ** 2), updates["batch_stats"]
  grads, stats = jax.grad(loss_fn, has_aux=True)(variables["params"])
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  params = jax.tree.map(lambda p, g: p - LR * g, variables["params"], grads)
  return {"params": params, "batch_stats": stats}


def _one_device(rule):
  """The reference: one device, the whole global batch, no axis."""
  xs, ys = _data()
  model = Net(rule)
  variables = model.init(jax.random.key(1), xs[0], train=False)
  step = jax.jit(functools.partial(_step, model))
  for t in range(STEPS):
    variables = step(variables, xs[t], ys[t])
  return variables


def _pmapped(rule, axis_name):
  xs, ys = _data()
  model = Net(rule, axis_name=axis_name)
  variables = model.init(jax.random.key(1), xs[0], train=False)
  replicated = jax.tree.map(lambda a: jnp.stack([a] * N), variables)
  step = jax.pmap(functools.partial(_step, model, axis_name="batch"),
                  axis_name="batch")
  for t in range(STEPS):
    replicated = step(replicated, xs[t].reshape(N, B, -1),
                      ys[t].reshape(N, B, -1))
  return replicated


def _assert_replicas_identical(replicated):
  for leaf in jax.tree.leaves(replicated):
    for i in range(1, N):
      np.testing.assert_array_equal(leaf[i], leaf[0])


def _assert_close(replicated, reference, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda r, a: np.testing.assert_allclose(r[0], a, rtol=rtol,
                                                       atol=atol),
               replicated, reference)


@pytest.mark.parametrize("rule", ["running", "batch"])
def test_pmap_with_axis_name_equals_one_device_on_global_batch(rule):
  replicated = _pmapped(rule, "batch")
  _assert_replicas_identical(replicated)
  reference = _one_device(rule)
  _assert_close(replicated, reference)
  # Lambda moved, so the comparison is not between two initial values.
  init = Net(rule).init(jax.random.key(1), _data()[0][0], train=False)
  assert not np.allclose(reference["batch_stats"]["NSwish_0"]["lambda"],
                         init["batch_stats"]["NSwish_0"]["lambda"],
                         rtol=1e-3)


@pytest.mark.parametrize("rule", ["running", "batch"])
def test_pmap_without_axis_name_drifts_from_one_device(rule):
  replicated = _pmapped(rule, None)
  lam = np.asarray(replicated["batch_stats"]["NSwish_1"]["lambda"])
  assert np.max(lam.max(0) - lam.min(0)) > 1e-3  # replicas disagree
  reference = _one_device(rule)
  diffs = [np.max(np.abs(r[0] - a)) for r, a in
           zip(jax.tree.leaves(replicated["params"]),
               jax.tree.leaves(reference["params"]))]
  assert max(diffs) > 1e-4


@pytest.mark.parametrize("rule", ["running", "batch"])
def test_shard_map_with_axis_name_equals_one_device(rule):
  xs, ys = _data()
  model = Net(rule, axis_name="batch")
  variables = model.init(jax.random.key(1), xs[0], train=False)
  mesh = Mesh(np.array(jax.devices()[:N]), ("batch",))
  step = jax.jit(_shard_map(
      functools.partial(_step, model, axis_name="batch"), mesh,
      in_specs=(P(), P("batch"), P("batch")), out_specs=P()))
  for t in range(STEPS):
    variables = step(variables, xs[t], ys[t])
  jax.tree.map(lambda r, a: np.testing.assert_allclose(r, a, rtol=1e-5,
                                                       atol=1e-6),
               variables, _one_device(rule))


def test_axis_index_groups_take_statistics_per_group():
  groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
  x = _data()[0][0]
  shards = x.reshape(N, B, -1)
  module = gnn.NSwish(axis_name="batch", axis_index_groups=groups,
                      rule="batch", per_channel=True)
  variables = module.init(jax.random.key(0), x, use_running_average=True)

  def train_call(v, x):
    y, updates = module.apply(v, x, use_running_average=False,
                              mutable=["batch_stats", "intermediates"])
    return y, updates["intermediates"]["lambda"][0]
  _, lam = jax.pmap(train_call, axis_name="batch", in_axes=(None, 0))(
      variables, shards)
  for group in groups:
    expected, _, _ = gnn.anact_lambda(
        nn.swish, jnp.concatenate([shards[i] for i in group]),
        axes=(0,))
    for i in group:
      np.testing.assert_allclose(lam[i], expected, rtol=1e-5)
  assert not np.allclose(lam[0], lam[4], rtol=1e-3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_anact_lambda_synced_is_the_global_batch_formula(per_channel):
  # Shards with different means and scales: the mean of per-shard variances
  # is far from the global variance, so only the global formula passes.
  y = jnp.concatenate([(1.0 + i) * jax.random.normal(jax.random.key(i),
                                                     (B, 3)) + 2.0 * i
                       for i in range(N)])
  axes = (0,) if per_channel else None
  expected = gnn.anact_lambda(nn.swish, y, axes=axes)
  synced = jax.pmap(
      lambda s: gnn.anact_lambda(nn.swish, s, axes=axes, axis_name="i"),
      axis_name="i")(y.reshape(N, B, 3))
  for got, want in zip(synced, expected):
    for i in range(N):
      np.testing.assert_allclose(got[i], want, rtol=1e-5)
  local = jax.pmap(lambda s: gnn.anact_lambda(nn.swish, s, axes=axes))(
      y.reshape(N, B, 3))
  assert not np.allclose(jnp.mean(local[1], 0), expected[1], rtol=0.05)


def test_axis_name_is_an_attribute_and_checked():
  module = gnn.NSwish(axis_name="batch")  # was a TypeError
  assert module.axis_name == "batch"
  assert gnn.NReLU(axis_name=("x", "y")).axis_name == ("x", "y")
  x = jnp.ones((4, 3))
  # Initialization needs no mapped axis, in either mode, and stores lambda_0.
  for train in (False, True):
    variables = module.init(jax.random.key(0), x,
                            use_running_average=not train)
    assert set(variables) == {"batch_stats"}
    np.testing.assert_allclose(variables["batch_stats"]["lambda"],
                               gnn.gaussian_lambda(nn.swish))
  with pytest.raises(TypeError, match="axis_name must be None, a str"):
    gnn.NSwish(axis_name=0).init(jax.random.key(0), x)
  with pytest.raises(TypeError, match="axis_name must be None, a str"):
    gnn.anact_lambda(nn.swish, x, axis_name=["batch"])
  with pytest.raises(ValueError, match="axis_index_groups needs an axis_name"):
    gnn.NTanh(axis_index_groups=[[0, 1]]).init(jax.random.key(0), x)
