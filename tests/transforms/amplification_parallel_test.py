"""Gradient amplification in data-parallel steps: pmap and shard_map.

Eight replicas, each with an eighth of the batch, must hold the state, the
factors and the parameters of one device stepping on the whole batch. The
per-device losses are means over each shard, the gradients ``lax.pmean`` ed,
as Flax's and JAX's data-parallel examples write them; the statistics come
from ``signal_norms(..., axis_name=...)``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from sklearn.datasets import load_digits

import gaf_optax
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import nnx as gnnx

N = 8          # replicas
BATCH = 64     # global batch
STEPS = 20     # 4 epochs of 5 steps: selections at steps 5, 10, 15, 20
POINTS = 4

try:
  _shard_map = jax.shard_map
  _NO_CHECK = {"check_vma": False}
except AttributeError:  # jax < 0.7
  from jax.experimental.shard_map import shard_map as _shard_map
  _NO_CHECK = {"check_rep": False}
# Varying-axes types: a gradient of a pmean'ed loss is then replicated.
_HAS_VMA = hasattr(jax, "typeof") and _NO_CHECK.get("check_vma") is False


@functools.lru_cache(maxsize=None)
def _digits():
  d = load_digits()
  x = (d.images[:STEPS * BATCH, :, :, None] / 16.0).astype(np.float32)
  return x, d.target[:STEPS * BATCH].astype(np.int32)


def _batches():
  x, y = _digits()
  for t in range(STEPS):
    yield x[t * BATCH:(t + 1) * BATCH], y[t * BATCH:(t + 1) * BATCH]


_MODEL = models.MLP(features=(32,) * POINTS, num_classes=10, act=jnp.tanh)


def _params():
  return _MODEL.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                     train=False)["params"]


def _labels(params):
  # Weight-gradient variant: fc{i} is layer i - 1, the head is never amplified.
  return {k: jax.tree.map(lambda _, i=int(k[2:]) - 1: i, v) if k != "head"
          else jax.tree.map(lambda _: -1, v) for k, v in params.items()}


def _tx(mode):
  if mode == "labels":
    amp = gaf_optax.gradient_amplification(
        POINTS, steps_per_epoch=5, start_epoch=1, selection="cv",
        labels=_labels)
  else:
    amp = gaf_optax.gradient_amplification(
        POINTS, steps_per_epoch=5, start_epoch=1, selection=mode)
  return optax.chain(amp, optax.sgd(0.2, momentum=0.9))


def _loss(params, factors, x, y, mode):
  logits = _MODEL.apply({"params": params}, x, train=True,
                        amp_factors=None if mode == "labels" else factors)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _step(tx, mode, axis_name, pmean_loss=False):
  """One train step; ``axis_name`` None is the one-device step."""

  def step(params, opt_state, x, y):
    factors = gaf_optax.amplification_factors(opt_state)
    loss = functools.partial(_loss, mode=mode)
    if pmean_loss:  # JAX's shard_map idiom: the gradients are then global
      loss = lambda *a, f=loss: jax.lax.pmean(f(*a), axis_name)
    grads, factor_grads = jax.grad(loss, argnums=(0, 1))(
        params, factors, x, y)
    if axis_name is not None and not pmean_loss:
      grads = jax.lax.pmean(grads, axis_name)
    extra = {} if mode == "labels" else {
        "layer_stats": gnn.signal_norms(factor_grads, axis_name)}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  return step


@functools.lru_cache(maxsize=None)
def _one_device(mode):
  tx = _tx(mode)
  params = _params()
  state = tx.init(params)
  step = jax.jit(_step(tx, mode, None))
  for x, y in _batches():
    params, state = step(params, state, x, y)
  return params, state


def _check_equal_to_one_device(per_replica, mode):
  """Every replica identical, and equal to the one-device run."""
  params1, state1 = _one_device(mode)
  factors = np.asarray(gaf_optax.amplification_factors(state1))
  # The run amplified: some layer was selected and is at factor 2.
  assert (factors == 2.0).any() and (factors == 1.0).any(), factors
  for replica in per_replica:
    for a, b in zip(jax.tree.leaves(replica), jax.tree.leaves(per_replica[0])):
      np.testing.assert_array_equal(a, b)  # replicas agree bit for bit
  params, state = per_replica[0]
  _assert_close(state, state1)
  _assert_close(params, params1)


def _assert_close(tree, reference):
  """Equal up to float32 summation order (the drift was 0.07 before)."""
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference),
                  strict=True):
    if np.asarray(b).dtype == bool or np.issubdtype(np.asarray(b).dtype,
                                                    np.integer):
      np.testing.assert_array_equal(a, b)  # selection, counts
    else:
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _shard(x):
  return x.reshape((N, -1) + x.shape[1:])


_MODES = ["cv", "delta", "random", "labels"]


@pytest.mark.parametrize("mode", _MODES)
def test_pmap_replicas_hold_the_one_device_state(mode):
  tx = _tx(mode)
  params = _params()
  replicate = lambda t: jax.tree.map(
      lambda a: jnp.broadcast_to(a, (N,) + jnp.shape(a)), t)
  params, state = replicate(params), replicate(tx.init(_params()))
  step = jax.pmap(_step(tx, mode, "batch"), axis_name="batch")
  for x, y in _batches():
    params, state = step(params, state, _shard(x), _shard(y))
  per_replica = [jax.tree.map(lambda a, i=i: a[i], (params, state))
                 for i in range(N)]
  _check_equal_to_one_device(per_replica, mode)


def _shard_map_run(mode, pmean_loss, **check):
  tx = _tx(mode)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:N]), ("batch",))
  # Replicated state in, replicated state out; each replica's copy comes
  # back stacked on a leading axis so that the test can compare them.
  inner = _step(tx, mode, "batch", pmean_loss=pmean_loss)
  stack = lambda t: jax.tree.map(lambda a: a[None], t)

  def step(params, state, x, y):
    params, state = inner(params, state, x, y)
    return (params, state), stack((params, state))

  spec = P()
  step = jax.jit(_shard_map(
      step, mesh=mesh, in_specs=(spec, spec, P("batch"), P("batch")),
      out_specs=((spec, spec), P("batch")), **check))
  params = _params()
  state = tx.init(params)
  for x, y in _batches():
    (params, state), stacked = step(params, state, x, y)
  return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(N)]


@pytest.mark.parametrize("mode", _MODES)
def test_shard_map_replicas_hold_the_one_device_state(mode):
  # Per-device losses and pmean'ed gradients, as under pmap.
  _check_equal_to_one_device(_shard_map_run(mode, False, **_NO_CHECK), mode)


@pytest.mark.skipif(not _HAS_VMA, reason="jax without varying-axes types")
@pytest.mark.parametrize("mode", ["cv", "delta"])
def test_shard_map_with_a_pmean_loss_and_type_checking(mode):
  # jax.shard_map's defaults (varying-axes checking) and JAX's own idiom: the
  # loss is pmean'ed inside, so the gradients (parameters' and factors')
  # come out replicated and global; signal_norms leaves them as they are.
  # Before amplify's backward pass summed its replicated factor's cotangent
  # this raised a custom_vjp type error.
  _check_equal_to_one_device(_shard_map_run(mode, True), mode)


def test_the_reduction_is_neither_psum_nor_pmean():
  # The trap: a user's psum or pmean of the factor gradients gives
  # 8x or a mean; only psum / n**2 is the global batch's squared norm.
  x, y = next(_batches())
  params, factors = _params(), jnp.full((POINTS,), 2.0)
  loss = functools.partial(_loss, mode="cv")
  _, fg1 = jax.grad(loss, argnums=(0, 1))(params, factors, x, y)

  def local(xs, ys):
    _, fg = jax.grad(loss, argnums=(0, 1))(params, factors, xs, ys)
    return (gnn.signal_norms(fg, "batch"),
            jnp.sqrt(jax.lax.psum(fg, "batch")),
            jnp.sqrt(jax.lax.pmean(fg, "batch")))

  ours, summed, meaned = jax.pmap(local, axis_name="batch")(_shard(x),
                                                          _shard(y))
  expected = np.sqrt(np.asarray(fg1))
  np.testing.assert_allclose(ours[3], expected, rtol=1e-5)
  np.testing.assert_allclose(summed[3], expected * N, rtol=1e-5)
  assert not np.allclose(meaned[3], expected, rtol=0.05)


def test_signal_norms_over_two_axes_and_bad_axis_names():
  sq = jnp.arange(1.0, 9.0).reshape(2, 2, 2)  # (axis a, axis b, points)
  out = jax.vmap(jax.vmap(lambda s: gnn.signal_norms(s, ("a", "b")),
                          axis_name="b"), axis_name="a")(sq)
  np.testing.assert_allclose(out[1, 0], np.sqrt(sq.sum((0, 1)) / 16.0))
  for bad in ((), 0, True, (None,)):
    with pytest.raises(ValueError, match="axis_name must be"):
      gnn.signal_norms(jnp.ones(2), bad)
  with pytest.raises(ValueError, match="axis_name must be"):
    gnn.point_signal_norms({}, ())


class _NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(64, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)
    self.a1 = gnnx.AmplificationPoint()
    self.a2 = gnnx.AmplificationPoint()

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = jnp.tanh(self.a1(self.fc1(x)))
    return self.head(jnp.tanh(self.a2(self.fc2(x))))


def _nnx_run(axis_name):
  model = _NNXNet(nnx.Rngs(0))
  tx = optax.chain(
      gaf_optax.gradient_amplification(2, steps_per_epoch=5, start_epoch=1),
      optax.sgd(0.2, momentum=0.9))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  def step(params, rest, opt_state, x, y):
    model = nnx.merge(graphdef, params, rest)
    gnnx.set_amplification_factors(
        model, gaf_optax.amplification_factors(opt_state))

    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    wrt = nnx.DiffState(0, (nnx.Param, gnnx.AmplificationFactors))
    grads = nnx.grad(loss_fn, argnums=wrt)(model)
    param_grads = nnx.filter_state(grads, nnx.Param)
    if axis_name is not None:
      param_grads = jax.lax.pmean(param_grads, axis_name)
    updates, opt_state = tx.update(
        param_grads, opt_state, params,
        layer_stats=gnnx.amplification_signal_norms(grads, axis_name))
    return optax.apply_updates(params, updates), opt_state

  if axis_name is None:
    step = jax.jit(step)
    for x, y in _batches():
      params, opt_state = step(params, rest, opt_state, x, y)
    return params, opt_state
  replicate = lambda t: jax.tree.map(
      lambda a: jnp.broadcast_to(a, (N,) + jnp.shape(a)), t)
  params, rest, opt_state = map(replicate, (params, rest, opt_state))
  step = jax.pmap(step, axis_name=axis_name)
  for x, y in _batches():
    params, opt_state = step(params, rest, opt_state, _shard(x), _shard(y))
  return params, opt_state


def test_nnx_points_under_pmap_hold_the_one_device_state():
  params1, state1 = _nnx_run(None)
  params8, state8 = _nnx_run("batch")
  assert (np.asarray(gaf_optax.amplification_factors(state1)) == 2.0).any()
  for a in jax.tree.leaves((params8, state8)):
    np.testing.assert_array_equal(a, np.broadcast_to(a[0], a.shape))
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  _assert_close(first(state8), state1)
  _assert_close(first(params8), params1)
