"""``Trainer.fit_seeds(on_epoch=...)`` and ``compile_seeds``: one program
per epoch, the same runs as the single program."""

import dataclasses
import time

import numpy as np
import optax
import pytest

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _trainer(ds, model=None, tx=None, **kwargs):
  # XLA's -O0 halves the compiles; both drivers compile alike.
  return training.Trainer(
      model or models.MLP(features=(8,), num_classes=10), tx or optax.sgd(0.1),
      ds, batch_size=64, mesh=training.make_mesh(1),
      compiler_options={"xla_backend_optimization_level": 0}, **kwargs)


def test_per_epoch_programs_equal_the_single_program_and_stop(digits):
  spe = data.steps_per_epoch(digits, 64)
  # Amplification (controller state, per-point statistics), ANAct (model
  # state), dropout and augmentation (per-step keys): what an epoch boundary
  # could lose.
  kwargs = dict(
      model=models.MLP(features=(16, 16), num_classes=10, act=gnn.NReLU,
                       dropout_rate=0.1),
      tx=optax.chain(gaf_optax.gradient_amplification(
          2, spe, factor=2.0, selection="cv", start_epoch=1),
                     gaf_optax.sgd_gaf(0.05, 0.9)),
      num_epochs=3, amplification_points=True,
      preprocess=training.Preprocess.for_dataset(digits, augment=True,
                                                  crop_padding=1))
  seeds = [0, 3]
  whole = _trainer(digits, **kwargs).fit_seeds(seeds)
  trainer = _trainer(digits, **kwargs)
  assert trainer.compile_seeds([5, 6]) > 0
  assert trainer.compile_seeds([7, 8]) == 0.0  # only the number counts
  seen = []

  def on_epoch(epoch, record):
    seen.append((epoch, record["test_accuracy"].copy()))

  t0 = time.perf_counter()
  epochs = trainer.fit_seeds(seeds, on_epoch=on_epoch)
  assert time.perf_counter() - t0 < 5  # ran the compiled programs
  assert [e for e, _ in seen] == [1, 2, 3]
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy",
              "loss", "grad_norm"):
    assert epochs[key].shape == whole[key].shape == (2, 3), key
    np.testing.assert_allclose(epochs[key], whole[key], rtol=1e-6,
                               atol=1e-7, err_msg=key)
  np.testing.assert_allclose(epochs["steps"]["loss"], whole["steps"]["loss"],
                             rtol=1e-6)
  for e, acc in seen:
    np.testing.assert_array_equal(acc, epochs["test_accuracy"][:, e - 1])
  assert epochs["telemetry_names"] == whole["telemetry_names"]
  # A true return stops after that epoch: the first two epochs of the run.
  two = trainer.fit_seeds(seeds, on_epoch=lambda epoch, _: epoch == 2)
  assert two["test_accuracy"].shape == (2, 2)
  assert two["steps"]["loss"].shape[:2] == (2, 2)
  np.testing.assert_allclose(two["train_loss"], whole["train_loss"][:, :2],
                             rtol=1e-6)


def test_compile_seeds_needs_in_memory_sources(digits):
  lazy = dataclasses.replace(digits, train=list(digits.train))
  with pytest.raises(ValueError, match="fit_seeds needs in-memory sources; "
                     "dataset.train is a list"):
    _trainer(lazy).compile_seeds([0])
