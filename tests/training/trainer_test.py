"""The object trainer, its two drivers and the per-step telemetry.

One device throughout (sharding is tested in training_test.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import nn as gnn
from gaf_optax import training
from tests.training.training_test import _config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _trainer(ds, model=None, tx=None, **kwargs):
  kwargs.setdefault("batch_size", 64)
  kwargs.setdefault("num_epochs", 2)
  return training.Trainer(
      model or models.MLP(features=(32, 32), num_classes=10),
      tx or optax.sgd(0.05, 0.9), ds, mesh=training.make_mesh(1), **kwargs)


def test_objects_train_digits_and_equal_the_config_path(digits):
  # The README's Python example: a model, a gaf_optax optimizer, a dataset.
  steps = data.steps_per_epoch(digits, 64)
  lr = optax.cosine_decay_schedule(0.05, 2 * steps)
  trainer = _trainer(
      digits, models.MLP(features=(32, 32), num_classes=10),
      gaf_optax.sgd_gaf(lr, 0.9, weight_decay=5e-4, alpha=0.3, beta=4.5),
      learning_rate=lr)
  summary = trainer.fit(progress=False, log_to_stdout=False)
  assert summary["last_test_accuracy"] > 0.85
  assert len(summary["step_loss"]) == 2 * steps
  # The same run by name, through Trainer.from_config.
  config = _config(optimizer="sgd_gaf", learning_rate=0.05,
                   weight_decay=5e-4)
  by_name = training.Trainer.from_config(config, training.make_mesh(1)).fit(
      progress=False, log_to_stdout=False)
  np.testing.assert_allclose(by_name["step_loss"], summary["step_loss"],
                             rtol=1e-6)
  assert [r["learning_rate"] for r in by_name["records"]] == pytest.approx(
      [r["learning_rate"] for r in summary["records"]])


def test_second_fit_continues_from_the_state(digits):
  trainer = _trainer(digits, num_epochs=2)
  first = trainer.fit(max_steps=21, progress=False, log_to_stdout=False)
  assert len(first["records"]) == 1
  rest = trainer.fit(progress=False, log_to_stdout=False)
  assert [r["epoch"] for r in rest["records"]] == [2]
  whole = _trainer(digits, num_epochs=2).fit(progress=False,
                                             log_to_stdout=False)
  np.testing.assert_allclose(first["step_loss"] + rest["step_loss"],
                             whole["step_loss"], rtol=1e-6)


@pytest.mark.parametrize("case", ["anact_amplification", "dropout_augment"])
def test_fit_seeds_equals_fit_for_every_seed(digits, case):
  spe = data.steps_per_epoch(digits, 64)
  if case == "anact_amplification":
    model = models.MLP(features=(16, 16, 16), num_classes=10,
                       act=gnn.NReLU)
    tx = optax.chain(gaf_optax.gradient_amplification(
        3, spe, factor=2.0, selection="cv", start_epoch=1),
        optax.sgd(0.05, 0.9))
    kwargs = dict(amplification_points=True)
  else:
    model = models.MLP(features=(16, 16), num_classes=10, dropout_rate=0.2)
    tx = gaf_optax.sgd_gaf(0.05, 0.9)
    kwargs = dict(preprocess=training.Preprocess.for_dataset(
        digits, augment=True, crop_padding=1))
  seeds = [0, 3]
  both = _trainer(digits, model, tx, **kwargs).fit_seeds(seeds)
  for i, seed in enumerate(seeds):
    one = _trainer(digits, model, tx, seed=seed, **kwargs).fit(
        progress=False, log_to_stdout=False)
    np.testing.assert_allclose(both["steps"]["loss"][i].ravel(),
                               one["step_loss"], rtol=2e-5)
    np.testing.assert_allclose(
        both["test_accuracy"][i], [r["test_accuracy"] for r in one["records"]],
        atol=1.5 / digits.num_test)
    np.testing.assert_allclose(
        both["train_loss"][i], [r["train_loss"] for r in one["records"]],
        rtol=2e-5)
  # Different seeds are different runs.
  assert not np.allclose(both["train_loss"][0], both["train_loss"][1])


def test_fit_seeds_needs_in_memory_sources(digits):
  class Lazy:
    def __init__(self, src):
      self.src = src

    def __len__(self):
      return len(self.src)

    def __getitem__(self, i):
      return self.src[i]

  import dataclasses  # pylint: disable=import-outside-toplevel
  lazy = dataclasses.replace(digits, train=Lazy(digits.train))
  with pytest.raises(ValueError, match="fit_seeds needs in-memory sources; "
                     "dataset.train is a Lazy"):
    _trainer(lazy).fit_seeds([0])


def _reference_step(trainer, batch):
  """The first step's gradient and new state, recomputed by hand."""
  state = trainer.init_state(trainer.seed)
  key = jax.random.fold_in(state.rng, 0)
  x = trainer.preprocess(batch["image"], key, train=True)
  model = trainer.model

  def loss(params, factors):
    logits, _ = model.apply({"params": params, **state.model_state}, x,
                            train=True, amp_factors=factors,
                            mutable=list(state.model_state))
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()

  factors = jnp.ones((model.num_amplification_points,))
  grads, fgrads = jax.grad(loss, argnums=(0, 1))(state.params, factors)
  return state, grads, fgrads


def test_telemetry_values_match_a_recomputation(digits, tmp_path):
  model = models.MLP(features=(16, 12), num_classes=10, act=gnn.NReLU)
  beta = 40.0  # large enough that some momentum components saturate
  trainer = _trainer(
      digits, model, gaf_optax.sgd_gaf(0.05, 0.9, beta=beta),
      telemetry=training.Telemetry(gaf_beta=beta, gaf_input="momentum",
                                   signals=True, every=1))
  batch = next(iter(trainer.train_batches(0)))
  state0, grads, fgrads = _reference_step(trainer, batch)
  metrics = jax.device_get(trainer.train_step(batch))
  names = training.layer_names(grads)
  assert names == ["fc1", "fc2", "head"]
  for i, n in enumerate(names):
    g = np.asarray(grads[n]["kernel"], np.float64)
    np.testing.assert_allclose(metrics["layer_grad_norm"][i],
                               np.linalg.norm(g), rtol=1e-5)
    np.testing.assert_allclose(metrics["layer_grad_mean_abs"][i],
                               np.abs(g).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["layer_grad_var"][i], g.var(),
                               rtol=1e-4)
  np.testing.assert_allclose(
      metrics["grad_norm"],
      np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))),
      rtol=1e-5)
  # The first momentum buffer is the (decay-free) gradient itself.
  sat = [np.abs(beta * np.asarray(g)) > 1 for g in jax.tree.leaves(grads)]
  share = sum(s.sum() for s in sat) / sum(s.size for s in sat)
  assert 0 < share < 1
  np.testing.assert_allclose(metrics["gaf_saturated"], share, rtol=1e-6)
  np.testing.assert_allclose(metrics["signal_norms"],
                             gnn.signal_norms(fgrads), rtol=1e-5)
  lambdas = [float(v["lambda"]) for _, v in sorted(
      trainer.state.model_state["batch_stats"].items())]
  np.testing.assert_allclose(metrics["anact_lambda"], lambdas, rtol=1e-6)
  assert lambdas != [float(v["lambda"]) for _, v in sorted(
      state0.model_state["batch_stats"].items())]


def test_telemetry_is_written_at_its_interval_and_trimmed_on_resume(
    digits, tmp_path):
  spe = data.steps_per_epoch(digits, 64)
  model = models.MLP(features=(16, 16), num_classes=10)
  tx = optax.chain(gaf_optax.gradient_amplification(
      2, spe, factor=2.0, selection="random", ratio=0.5, start_epoch=1),
                   optax.sgd(0.05, 0.9))
  make = lambda: _trainer(digits, model, tx, amplification_points=True,
                          telemetry=training.Telemetry(every=4))
  work = str(tmp_path / "run")
  full = make().fit(work, progress=False, log_to_stdout=False,
                    tensorboard=False)
  rows = training.read_records(os.path.join(work, "telemetry.jsonl"))
  assert [r["step"] for r in rows] == list(range(4, 2 * spe + 1, 4))
  assert rows == [dict(zip(full["telemetry"], v))
                  for v in zip(*full["telemetry"].values())]
  # Factors are 1 in epoch 0 and the controller's choice in epoch 1.
  factors = np.array([r["amp_factors"] for r in rows])
  steps = np.array([r["step"] for r in rows])
  assert np.all(factors[steps <= spe] == 1.0)
  assert np.all(np.isin(factors[steps > spe + 1], [1.0, 2.0]))
  assert np.any(factors[steps > spe + 1] == 2.0)
  assert len(rows[0]["layer_grad_norm"]) == 3
  # A resumed run keeps the telemetry file equal to an uninterrupted one's.
  work2 = str(tmp_path / "resumed")
  make().fit(work2, max_steps=spe + 5, checkpoint_every_steps=spe + 2,
             progress=False, log_to_stdout=False, tensorboard=False)
  make().fit(work2, progress=False, log_to_stdout=False, tensorboard=False)
  assert training.read_records(os.path.join(work2, "telemetry.jsonl")) == rows


def test_telemetry_tensorboard_labels_vectors_by_layer(digits, tmp_path):
  pytest.importorskip("tensorboardX")
  trainer = _trainer(digits, num_epochs=1,
                     telemetry=training.Telemetry(every=10))
  work = str(tmp_path / "tb")
  trainer.fit(work, progress=False, log_to_stdout=False)
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  tags = set()
  folder = os.path.join(work, "tensorboard")
  for name in os.listdir(folder):
    raw = open(os.path.join(folder, name), "rb").read()
    pos = 0
    while pos < len(raw):  # TFRecord framing: length, crc, data, crc
      (length,) = np.frombuffer(raw[pos:pos + 8], "<u8")
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      pos += 16 + int(length)
  assert {"layer_grad_norm/fc1", "layer_grad_norm/head", "loss",
          "test_accuracy"} <= tags


@pytest.mark.parametrize("kwargs, match", [
    (dict(gaf_input="update"), "gaf_input must be one of"),
    (dict(gaf_beta=-1.0), "gaf_beta must be a positive float"),
    (dict(every=0), "every must be an int >= 1"),
])
def test_telemetry_arguments_are_checked(kwargs, match):
  with pytest.raises(ValueError, match=match):
    training.Telemetry(**kwargs)


def test_momentum_telemetry_needs_a_momentum_buffer(digits):
  trainer = _trainer(digits, tx=optax.adam(1e-3), telemetry=training.Telemetry(
      gaf_beta=4.5, gaf_input="momentum"))
  with pytest.raises(ValueError, match="exactly one momentum buffer"):
    trainer.train_step(next(iter(trainer.train_batches(0))))


def test_trainer_argument_errors(digits):
  model = models.MLP(features=(8,), num_classes=10)
  with pytest.raises(TypeError, match="tx must be an optax.Gradient"):
    training.Trainer(model, optax.sgd, digits, batch_size=8)
  with pytest.raises(TypeError, match="dataset must be a gaf_optax.data"):
    training.Trainer(model, optax.sgd(0.1), "digits", batch_size=8)
  with pytest.raises(ValueError, match="batch_size=5000 is larger than"):
    _trainer(digits, batch_size=5000)
  with pytest.raises(ValueError, match="amplification_points=True needs a "
                     "model with amplification points"):
    _trainer(digits, _NoPoints(features=(8,), num_classes=10),
             amplification_points=True)


class _NoPoints(models.MLP):
  """An MLP that reports no amplification points."""

  @property
  def num_amplification_points(self) -> int:
    return 0


def test_from_config_telemetry_uses_the_gaf_settings():
  t = training.build_telemetry(_config(optimizer="sgd_gaf",
                                       **{"telemetry.enabled": True}))
  assert (t.gaf_beta, t.gaf_input) == (4.5, "momentum")
  t = training.build_telemetry(_config(
      optimizer="sgd_gaf", **{"telemetry.enabled": True,
                              "gaf.position": "gradient"}))
  assert t.gaf_input == "gradient"
  assert training.build_telemetry(_config(optimizer="sgd",
                                          **{"telemetry.enabled": True})
                                  ).gaf_beta is None
  assert training.build_telemetry(_config()) is None


def test_missing_training_extra_is_an_import_error_naming_it():
  code = ("import sys; sys.modules['orbax'] = None; "
          "sys.modules['orbax.checkpoint'] = None\n"
          "try:\n  import gaf_optax.training\n"
          "except ImportError as e:\n  print(e)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=True)
  assert ("gaf_optax.training needs orbax-checkpoint, which comes with the "
          "'training' extra: pip install 'gaf-optax[training]'.") in out.stdout


def test_grain_workers_and_a_lazy_image_folder_give_the_same_run(tmp_path):
  """data_workers reads the same batches, also across a resume."""
  from tests.data.host_test import _imagenet_like  # pylint: disable=g-import-not-at-top
  ds = data.folder(_imagenet_like(tmp_path / "images"), crop_size=8)
  assert isinstance(ds.train, data.RecordSource)

  def run(workers, workdir=None, **fit_kwargs):
    trainer = _trainer(ds, models.MLP(features=(8,), num_classes=3),
                       optax.sgd(0.1, 0.9), batch_size=4, num_epochs=2,
                       data_workers=workers)
    return trainer.fit(workdir, progress=False, log_to_stdout=False,
                       tensorboard=False, **fit_kwargs)

  ref = run(0)
  assert len(ref["step_loss"]) == 6
  workdir = str(tmp_path / "run")
  first = run(1, workdir, max_steps=4, checkpoint_every_steps=2)
  rest = run(1, workdir)
  np.testing.assert_array_equal(first["step_loss"] + rest["step_loss"],
                                ref["step_loss"])
  assert ([r["test_accuracy"] for r in rest["records"]] ==
          [r["test_accuracy"] for r in ref["records"]])
  with pytest.raises(ValueError, match="data_workers must be"):
    _trainer(ds, data_workers=-1)


def test_device_data_gives_the_same_run_on_one_and_four_devices(digits):
  """Row indices gathered on the device: the batches of the host path."""
  ref = _trainer(digits, num_epochs=1).fit(progress=False,
                                           log_to_stdout=False)
  one = _trainer(digits, num_epochs=1, device_data=True)
  out = one.fit(progress=False, log_to_stdout=False)
  np.testing.assert_array_equal(out["step_loss"], ref["step_loss"])
  assert out["records"][0]["test_accuracy"] == ref["records"][0][
      "test_accuracy"]
  images, _ = one._resident_train()
  assert images.dtype == jnp.uint8 and images.shape == (1348, 8, 8, 1)
  four = training.Trainer(
      models.MLP(features=(32, 32), num_classes=10), optax.sgd(0.05, 0.9),
      digits, batch_size=64, num_epochs=1, mesh=training.make_mesh(4),
      device_data=True).fit(progress=False, log_to_stdout=False)
  np.testing.assert_allclose(four["step_loss"], ref["step_loss"], rtol=2e-5)


def test_device_data_needs_an_in_memory_set(tmp_path):
  from tests.data.host_test import _imagenet_like  # pylint: disable=g-import-not-at-top
  ds = data.folder(_imagenet_like(tmp_path), crop_size=8)
  with pytest.raises(ValueError, match="device_data=True needs a training "
                     "set held in memory"):
    _trainer(ds, batch_size=4, device_data=True)


def test_trainer_compiles_without_ynnpack_on_cpu_unless_told():
  options = training.default_compiler_options(training.make_mesh(1))
  assert options in (training.CPU_NO_YNN, None)  # None: an older jaxlib
  trainer_options = {"xla_backend_optimization_level": 0}
  ds = data.get("digits")
  mlp = models.MLP(features=(4,), num_classes=10)
  default = training.Trainer(mlp, optax.sgd(0.1), ds, batch_size=8,
                             mesh=training.make_mesh(1))
  assert default.compiler_options == options
  given = training.Trainer(mlp, optax.sgd(0.1), ds, batch_size=8,
                           mesh=training.make_mesh(1),
                           compiler_options=trainer_options)
  assert given.compiler_options == trainer_options
  xla = training.Trainer(mlp, optax.sgd(0.1), ds, batch_size=8,
                         mesh=training.make_mesh(1), compiler_options={})
  assert xla.compiler_options is None


def test_a_diverged_epoch_has_no_train_loss_rather_than_zero(digits):
  """Non-finite steps add nothing to the sums: the epoch's loss is NaN."""
  trainer = _trainer(digits, tx=optax.sgd(1e8), num_epochs=2)
  hist = trainer.fit_seeds([0])
  assert np.isnan(hist["train_loss"][0, -1])
  assert np.isnan(hist["train_accuracy"][0, -1])
