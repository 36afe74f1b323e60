"""FSDP: the state sharded over the data axis gives the replicated run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training
from tests.training.training_test import _config
from tests.training.training_test import _losses
from tests.training.training_test import _strip_timing


@pytest.mark.parametrize("shape, spec", [
    ((3, 3, 64, 128), P(None, None, None, "data")),
    ((64, 32), P("data", None)),  # largest divisible dimension
    ((12, 8), P(None, "data")),   # 12 is not divisible by 8
    ((10, 6), P()),               # nothing divisible: replicated
    ((), P()),
])
def test_fsdp_spec_splits_the_largest_divisible_dimension(shape, spec):
  assert training.fsdp_spec(shape, 4, 8, min_bytes=0) == spec


def test_fsdp_spec_keeps_small_arrays_replicated():
  assert training.fsdp_spec((64, 32), 4, 8, min_bytes=64 * 32 * 4 + 1) == P()
  assert training.fsdp_spec((64, 32), 4, 8, min_bytes=64 * 32 * 4) == P(
      "data", None)


@pytest.mark.parametrize("overrides", [
    {"optimizer": "sgd_gaf"},
    # ANAct statistics, the controller's vectors and adaptive GAF's per-leaf
    # max|d| (a cross-device reduction when the leaf is sharded).
    {"act": "nrelu", "amplification.enabled": True, "optimizer": "sgd_gaf",
     "gaf.fn": "adaptive", "gaf.shrink": 2.0, "gaf.gamma": 1.0},
])
def test_fsdp_on_eight_devices_equals_one_device(overrides):
  one, s1 = _losses(_config(**overrides), training.make_mesh(1))
  eight, s8 = _losses(_config(sharding="fsdp", fsdp_min_bytes=0,
                              **overrides), training.make_mesh(8))
  np.testing.assert_allclose(eight, one, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  kernel = s8.params["fc1"]["kernel"]  # (64, 32): split 8 ways
  assert kernel.sharding.spec == P("data", None)
  assert kernel.sharding.shard_shape(kernel.shape) == (8, 32)
  (trace,) = [t for t in jax.tree.leaves(
      s8.opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
              if isinstance(t, optax.TraceState)]
  assert trace.trace["fc1"]["kernel"].sharding.spec == P("data", None)


def test_a_resnet_state_is_one_eighth_per_device_under_fsdp():
  fsdp = training.Trainer(models.ResNet8(num_classes=10),
                          optax.sgd(0.1, 0.9), data.get("digits"),
                          batch_size=64, mesh=training.make_mesh(8),
                          sharding="fsdp", fsdp_min_bytes=0)
  state = fsdp.state
  kernel = state.params["stage3_block1"]["conv2"]["kernel"]
  assert kernel.shape == (3, 3, 64, 64)
  assert kernel.sharding.shard_shape(kernel.shape) == (3, 3, 64, 8)
  trees = (state.params, state.opt_state)
  whole = sum(x.nbytes for x in jax.tree.leaves(trees))  # replicated: all
  part = training.per_device_bytes(trees)
  count = sum(x.size for x in jax.tree.leaves(state.params))
  assert whole == 2 * 4 * count  # params + momentum, float32
  assert whole / 8 <= part < whole / 7  # about 1/8; small leaves stay whole


def test_fsdp_checkpoint_resumes_on_another_device_count(tmp_path):
  config = _config(sharding="fsdp", fsdp_min_bytes=0, num_epochs=2,
                   checkpoint_every_steps=10)
  full = training.train_and_evaluate(config, str(tmp_path / "full"),
                                     mesh=training.make_mesh(8))
  work = str(tmp_path / "run")
  training.train_and_evaluate(config, work, mesh=training.make_mesh(8),
                              max_steps=30)
  # Resumed on 4 devices, replicated: the layout is how to run, not what.
  config.sharding = "replicated"
  resumed = training.train_and_evaluate(config, work,
                                        mesh=training.make_mesh(4))
  a, b = _strip_timing(full["records"]), _strip_timing(resumed["records"])
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for x, y in zip(a, b):
    np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=1e-5)
    assert abs(x["test_accuracy"] - y["test_accuracy"]) <= 1 / 449


def test_bad_sharding_is_a_clear_error():
  with pytest.raises(ValueError, match="config.sharding must be 'replicated' "
                     "or 'fsdp'; got 'zero'"):
    training.Trainer.from_config(_config(sharding="zero"))
  with pytest.raises(ValueError, match="sharding must be one of"):
    training.Trainer(models.MLP(features=(8,)), optax.sgd(0.1),
                     data.get("digits"), batch_size=64, sharding="tp",
                     mesh=training.make_mesh(1))


@pytest.mark.parametrize("overrides, expected", [
    ({}, None),  # single process: nothing
    ({"distributed.auto": True}, {}),  # the cluster is detected by JAX
    ({"distributed.coordinator_address": "127.0.0.1:1234",
      "distributed.num_processes": 2, "distributed.process_id": 1},
     {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
      "process_id": 1}),
])
def test_distributed_initialize_auto_and_explicit(monkeypatch, overrides,
                                                  expected):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kwargs: calls.append(kwargs))
  if hasattr(jax.distributed, "is_initialized"):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  training.initialize_distributed(_config(**overrides))
  assert calls == ([] if expected is None else [expected])
