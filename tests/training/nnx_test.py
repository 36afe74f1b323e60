"""The trainer with Flax NNX models: the same functional step and guarantees."""

import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import nnx as gnnx
from gaf_optax import training


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _tx(points, steps_per_epoch, **kwargs):
  kwargs.setdefault("selection", "delta")
  return optax.chain(
      gaf_optax.gradient_amplification(points, steps_per_epoch, factor=2.0,
                                       start_epoch=1, **kwargs),
      gaf_optax.sgd_gaf(0.05, 0.9, weight_decay=1e-4))


def _strip_timing(records):
  drop = ("epoch_seconds", "images_per_second")
  return [{k: v for k, v in r.items() if k not in drop} for r in records]


def _load(model, params, model_state):
  """Writes Linen-layout variables into a models.NNXModel."""
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  pure = nnx.to_pure_dict(state)
  for tree in (params, *model_state.values()):
    stack = [(pure["linen"], jax.device_get(tree))]
    while stack:
      into, src = stack.pop()
      for key, value in src.items():
        if isinstance(value, dict):
          stack.append((into[key], value))
        else:
          into[key] = value
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def test_bridged_model_trains_exactly_as_its_linen_model(digits):
  linen = models.MLP(features=(32, 32), num_classes=10, act=gnn.NReLU)
  spe = data.steps_per_epoch(digits, 64)
  kwargs = dict(batch_size=64, num_epochs=2, mesh=training.make_mesh(1),
                amplification_points=True,
                telemetry=training.Telemetry(signals=True, every=5))
  by_linen = training.Trainer(linen, _tx(linen.num_amplification_points,
                                         spe), digits, **kwargs)
  start = by_linen.state
  model = models.NNXModel(linen, digits.image_shape, rngs=nnx.Rngs(3),
                          amplification=True)
  _load(model, start.params, start.model_state)
  by_nnx = training.Trainer(model, _tx(model.num_amplification_points, spe),
                            digits, **kwargs)
  # The same trees as the Linen model's (the bridge's level is left out).
  assert (jax.tree.structure(by_nnx.state.params)
          == jax.tree.structure(start.params))
  assert by_nnx.telemetry_names() == by_linen.telemetry_names()
  a = by_linen.fit(progress=False, log_to_stdout=False)
  b = by_nnx.fit(progress=False, log_to_stdout=False)
  assert _strip_timing(b["records"]) == _strip_timing(a["records"])
  for x, y in zip(jax.tree.leaves(by_linen.state),
                  jax.tree.leaves(by_nnx.state)):
    np.testing.assert_array_equal(x, y)
  # The controller amplified a point in epoch 2, from the NNX signals.
  factors = gaf_optax.amplification_factors(by_nnx.state.opt_state)
  assert sorted(set(np.asarray(factors).tolist())) == [1.0, 2.0]
  assert b["records"][-1]["test_accuracy"] > 0.8


class Native(nnx.Module):
  """A native NNX model: BatchNorm, ANAct, a point, dropout."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(64, 32, rngs=rngs)
    self.bn = nnx.BatchNorm(32, rngs=rngs)
    self.point = gnnx.AmplificationPoint()
    self.act = gnnx.NReLU()
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.head(self.drop(self.act(self.point(self.bn(self.dense(x))))))


def _native_losses(ds, mesh, steps=6, model=None):
  trainer = training.Trainer(
      model or Native(nnx.Rngs(0)),
      _tx(1, 4, selection="random", ratio=1.0), ds, batch_size=64,
      num_epochs=2, mesh=mesh, amplification_points=True)
  out = []
  for i, batch in enumerate(trainer.train_batches(0, num_epochs=2)):
    if i == steps:
      break
    out.append(float(trainer.train_step(batch)["loss"]))
  return np.array(out), trainer.state


def test_native_nnx_model_on_one_and_eight_devices(digits):
  one, s1 = _native_losses(digits, training.make_mesh(1))
  eight, s8 = _native_losses(digits, training.make_mesh(8))
  np.testing.assert_allclose(eight, one, rtol=2e-5)
  assert one[-1] < one[0]
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # BatchNorm's statistics and ANAct's lambda are state and moved.
  assert set(s1.model_state) == {"batch_stats"}
  lam = s1.model_state["batch_stats"]["act"]["lam"]
  assert float(lam) != pytest.approx(2**0.5, abs=1e-7)
  # The controller amplified the point from step 4 (epoch 1) on.
  factors = gaf_optax.amplification_factors(s1.opt_state)
  np.testing.assert_array_equal(factors, [2.0])
  # Dropout draws from the step's key: runs repeat, steps differ.
  again, _ = _native_losses(digits, training.make_mesh(1))
  np.testing.assert_array_equal(again, one)


def test_native_nnx_resume_is_exact_and_fit_seeds_is_refused(digits,
                                                            tmp_path):
  def make():
    return training.Trainer(Native(nnx.Rngs(0)), _tx(1, 21), digits,
                            batch_size=64, num_epochs=2,
                            mesh=training.make_mesh(1),
                            amplification_points=True)

  quiet = dict(progress=False, log_to_stdout=False)
  full_trainer = make()
  full = full_trainer.fit(str(tmp_path / "full"), **quiet)
  work = str(tmp_path / "resumed")
  make().fit(work, max_steps=30, checkpoint_every_steps=10, **quiet)
  resumed_trainer = make()
  resumed = resumed_trainer.fit(work, **quiet)
  assert _strip_timing(resumed["records"]) == _strip_timing(full["records"])
  assert os.path.exists(os.path.join(work, "metrics.jsonl"))
  for a, b in zip(jax.tree.leaves(full_trainer.state),
                  jax.tree.leaves(resumed_trainer.state)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="fit_seeds draws each seed"):
    make().fit_seeds([0, 1])


def test_dropout_and_other_streams_are_keyed_by_the_step():
  fn = training.functional(Native(nnx.Rngs(0)))
  variables = fn.init(None, None)
  x = np.asarray(jax.random.normal(jax.random.key(7), (4, 8, 8, 1)))
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  run = lambda key: fn.apply(variables, x, train=True, mutable=False,
                             rngs={"dropout": key})
  np.testing.assert_array_equal(run(k1), run(k1))
  assert not np.allclose(run(k1), run(k2))
  # Evaluation: no dropout, no key needed, the stored statistics.
  y = fn.apply(variables, x, train=False)
  np.testing.assert_array_equal(y, fn.apply(variables, x, train=False))
  assert fn.num_amplification_points == 1
