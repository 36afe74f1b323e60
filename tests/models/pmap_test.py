"""Reference models in Flax-examples-style scripts: ``train``'s default and
BatchNorm / ANAct synced across ``jax.pmap`` replicas with ``axis_name``.

On the 8 CPU devices of conftest; tiny widths on 8x8 images.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import jax_utils
from flax import nnx
from flax.training import train_state

import gaf_optax
from gaf_optax import models
from gaf_optax import nn as gnn

N, B, STEPS = 8, 4, 3
# ResNet-8's stem and two of its blocks (one with a strided option-A
# shortcut), 4 and 8 channels.
TINY_RESNET = dict(stage_sizes=(1, 1), widths=(4, 8), num_classes=3)


def _data(steps=STEPS):
  kx, ky = jax.random.split(jax.random.key(0))
  xs = jax.random.normal(kx, (steps, N * B, 8, 8, 3)) + 0.3
  ys = jax.random.randint(ky, (steps, N * B), 0, 3)
  return xs, ys


def _shard(a):
  return a.reshape(N, a.shape[0] // N, *a.shape[1:])


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()


# What Flax's examples/imagenet train.py does, minus metrics and schedules:
# a TrainState with batch_stats, apply without `train`, pmean-ed gradients.
class TrainState(train_state.TrainState):
  batch_stats: Any


def train_step(state, images, labels, axis_name=None):
  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images,
        mutable=["batch_stats"])
    return _loss(logits, labels), new_model_state
  grads, new_model_state = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name=axis_name)
  return state.apply_gradients(grads=grads,
                               batch_stats=new_model_state["batch_stats"])


def create_train_state(rng, model, tx, image):
  variables = model.init(rng, image)  # no `train`: the default
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=tx, batch_stats=variables["batch_stats"])


def _flax_example_run(model, devices):
  xs, ys = _data()
  tx = gaf_optax.sgd_gaf(0.1, momentum=0.9)
  state = create_train_state(jax.random.key(1), model, tx, xs[0][:1])
  if devices == 1:
    step = jax.jit(train_step)
    for t in range(STEPS):
      state = step(state, xs[t], ys[t])
    return state
  state = jax_utils.replicate(state)
  p_train_step = jax.pmap(functools.partial(train_step, axis_name="batch"),
                          axis_name="batch")
  for t in range(STEPS):
    state = p_train_step(state, _shard(xs[t]), _shard(ys[t]))
  return state


def _assert_replicas_identical(tree):
  for leaf in jax.tree.leaves(tree):
    for i in range(1, N):
      np.testing.assert_array_equal(leaf[i], leaf[0])


def _assert_first_replica_close(replicated, reference, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda r, a: np.testing.assert_allclose(r[0], a, rtol=rtol,
                                                       atol=atol),
               replicated, reference)


def test_flax_imagenet_style_pmap_step_with_synced_batchnorm():
  """BatchNorm and ANAct (NSwish) synced: equal to one device."""
  kwargs = dict(TINY_RESNET, act=gnn.NSwish)
  # The one line that differs from one device to the pmap script:
  model = models.get("resnet8", axis_name="batch", **kwargs)
  state = _flax_example_run(model, N)
  _assert_replicas_identical((state.params, state.batch_stats,
                              state.opt_state))
  reference = _flax_example_run(models.get("resnet8", **kwargs), 1)
  _assert_first_replica_close(
      (state.params, state.batch_stats, state.opt_state),
      (reference.params, reference.batch_stats, reference.opt_state))
  # The running statistics moved from their initial zeros.
  mean = reference.batch_stats["stem_bn"]["mean"]
  assert np.max(np.abs(mean)) > 1e-3
  # flax.jax_utils.unreplicate gives the one-device state back.
  single = jax_utils.unreplicate(state)
  logits = model.apply({"params": single.params,
                        "batch_stats": single.batch_stats},
                       _data()[0][0], train=False)
  np.testing.assert_allclose(
      logits, reference.apply_fn({"params": reference.params,
                                  "batch_stats": reference.batch_stats},
                                 _data()[0][0], train=False),
      rtol=1e-5, atol=1e-5)


def test_without_axis_name_batchnorm_replicas_drift_from_one_device():
  state = _flax_example_run(models.get("resnet8", **TINY_RESNET), N)
  mean = np.asarray(state.batch_stats["stem_bn"]["mean"])
  assert np.max(mean.max(0) - mean.min(0)) > 1e-3  # replicas disagree
  reference = _flax_example_run(models.get("resnet8", **TINY_RESNET), 1)
  diffs = [np.max(np.abs(r[0] - a)) for r, a in
           zip(jax.tree.leaves(state.params),
               jax.tree.leaves(reference.params))]
  assert max(diffs) > 1e-4


@pytest.mark.parametrize("name, kwargs", [
    ("vgg16", dict(config=(4, "M", 8, "M"), act=gnn.NReLU)),
    ("densenet121", dict(block_sizes=(1, 1), growth_rate=2)),
    ("mobilenet_v2", dict(config=((1, 4, 1, 1), (2, 6, 1, 2)), stem_width=4,
                          head_width=8)),
    ("preact_resnet18", dict(widths=(2, 4, 4, 4), stage_sizes=(1, 1, 1, 1))),
    ("mlp", dict(features=(6,), act=gnn.NTanh)),
    ("lenet", dict(features=(2, 3), hidden=(4,), act=gnn.NSwish)),
])
def test_every_model_family_syncs_its_statistics(name, kwargs):
  """BN and ANAct of each architecture under pmap equal one device."""
  if name == "lenet":
    x, _ = _data(1)
    x = jnp.tile(x[0], (1, 2, 2, 1))  # 16x16: LeNet's valid 5x5 convs
  else:
    x = _data(1)[0][0]
  model = models.get(name, num_classes=3, axis_name="batch", **kwargs)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  assert "batch_stats" in variables

  def forward(model, variables, x):
    logits, updates = model.apply(variables, x, mutable=["batch_stats"])
    return logits, updates["batch_stats"]
  logits, stats = jax.pmap(functools.partial(forward, model),
                           axis_name="batch", in_axes=(None, 0))(
                               variables, _shard(x))
  _assert_replicas_identical(stats)
  ref_logits, ref_stats = jax.jit(functools.partial(
      forward, models.get(name, num_classes=3, **kwargs)))(variables, x)
  _assert_first_replica_close(stats, ref_stats)
  np.testing.assert_allclose(logits.reshape(ref_logits.shape), ref_logits,
                             rtol=1e-5, atol=1e-5)
  moved = [np.max(np.abs(a - b)) for a, b in
           zip(jax.tree.leaves(ref_stats),
               jax.tree.leaves(variables["batch_stats"]))]
  assert max(moved) > 1e-4


def test_nnx_model_syncs_across_pmap_replicas():
  """get_nnx(..., axis_name=...): BN and ANAct synced through the bridge."""
  def run(axis_name, devices):
    model = models.get_nnx("vgg16", input_shape=(8, 8, 3), rngs=nnx.Rngs(0),
                           config=(4, "M"), act=gnn.NSwish, num_classes=3,
                           axis_name=axis_name)
    graphdef, params, stats, rest = nnx.split(model, nnx.Param,
                                              nnx.BatchStat, ...)

    def step(params, stats, x, y):
      def loss_fn(params):
        # Fresh variables at this trace level (Flax 0.12's State holds the
        # Variables themselves, which may only be updated where made).
        m = nnx.merge(graphdef, params,
                      *jax.tree.map(jnp.asarray, (stats, rest)))
        return _loss(m(x), y), nnx.state(m, nnx.BatchStat)
      grads, stats = jax.grad(loss_fn, has_aux=True)(params)
      if devices > 1:
        grads = jax.lax.pmean(grads, "batch")
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), stats
    xs, ys = _data()
    if devices == 1:
      step = jax.jit(step)
      for t in range(STEPS):
        params, stats = step(params, stats, xs[t], ys[t])
      return params, stats
    params, stats = jax.tree.map(lambda a: jnp.stack([a] * N),
                                 (params, stats))
    step = jax.pmap(step, axis_name="batch")
    for t in range(STEPS):
      params, stats = step(params, stats, _shard(xs[t]), _shard(ys[t]))
    return params, stats

  replicated = run("batch", N)
  _assert_replicas_identical(replicated)
  _assert_first_replica_close(replicated, run(None, 1))


def test_train_defaults_to_true_as_in_flax_examples():
  model = models.get("resnet8", act=gnn.NSwish, **TINY_RESNET)
  x = _data(1)[0][0]
  variables = model.init(jax.random.key(0), x)
  explicit = model.init(jax.random.key(0), x, train=False)
  assert set(variables) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, variables, explicit)
  # Default: training mode (batch statistics, updated running ones).
  out, updates = model.apply(variables, x, mutable=["batch_stats"])
  out_train, updates_train = model.apply(variables, x, train=True,
                                         mutable=["batch_stats"])
  np.testing.assert_array_equal(out, out_train)
  jax.tree.map(np.testing.assert_array_equal, updates, updates_train)
  assert not np.allclose(out, model.apply(variables, x, train=False))
  # Evaluation is explicit; the default without `mutable` does not silently
  # evaluate, it fails on the statistics it would update.
  with pytest.raises(flax.errors.ModifyScopeVariableError,
                     match="batch_stats"):
    model.apply(variables, x)


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "densenet121",
                                  "mobilenet_v2", "lenet", "mlp",
                                  "imagenet_se_resnet18"])
def test_init_without_train_for_every_model_class(name):
  shapes = jax.eval_shape(
      lambda x: models.get(name).init(jax.random.key(0), x),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  expected = jax.eval_shape(
      lambda x: models.get(name).init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert jax.tree.structure(shapes) == jax.tree.structure(expected)


@pytest.mark.parametrize("bad, error, match", [
    (0, TypeError, "axis_name must be None, a str"),
    (("batch", 1), TypeError, "axis_name must be None, a str"),
])
def test_bad_axis_name_is_a_clear_error(bad, error, match):
  model = models.get("mlp", features=(4,), axis_name=bad)
  with pytest.raises(error, match=match):
    model.init(jax.random.key(0), jnp.ones((1, 2, 2, 1)))
  model = models.get("mlp", features=(4,), axis_index_groups=[[0, 1]])
  with pytest.raises(ValueError, match="axis_index_groups needs an axis_name"):
    model.init(jax.random.key(0), jnp.ones((1, 2, 2, 1)))


class _Gate(nn.Module):
  """A stateful activation module without an ``axis_name`` field."""

  @nn.compact
  def __call__(self, x, use_running_average=None):
    del use_running_average
    return x * self.param("gate", nn.initializers.ones, ())


def test_axis_name_reaches_activation_modules_that_take_it():
  x = jnp.ones((4, 2, 2, 1))

  def train_call(act):
    model = models.get("mlp", features=(4,), act=act, axis_name="batch")
    variables = model.init(jax.random.key(0), x)
    return model.apply(variables, x, mutable=["batch_stats"])
  # NSwish gets the model's axis_name: outside a mapped axis its synced
  # statistics cannot be taken.
  with pytest.raises(NameError, match="batch"):
    train_call(gnn.NSwish)
  # A partial's own axis_name wins over the model's ...
  logits, _ = train_call(functools.partial(gnn.NSwish, axis_name=None))
  assert logits.shape == (4, 10)
  # ... and a module class without the field is built as before.
  logits, _ = train_call(_Gate)
  assert logits.shape == (4, 10)
