"""Resuming checks what it resumes: run.json, restore_step, fingerprints.

One device, a small MLP on digits, a few steps each.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gaf_optax import data
from gaf_optax import models
from gaf_optax import training
from gaf_optax.training import _workdir
from tests.training.training_test import _config

BATCH = 64


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _trainer(ds, tx=None, features=(16,), batch_size=BATCH):
  return training.Trainer(
      models.MLP(features=features, num_classes=10),
      tx if tx is not None else optax.sgd(0.05, 0.9), ds,
      batch_size=batch_size, num_epochs=1, mesh=training.make_mesh(1))


def _fit(trainer, workdir, **kwargs):
  for key, value in dict(progress=False, log_to_stdout=False,
                         tensorboard=False).items():
    kwargs.setdefault(key, value)
  return trainer.fit(None if workdir is None else str(workdir), **kwargs)


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _damage(directory):
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


# ------------------------------------------------------------ restore_step
def test_restore_step_repairs_a_damaged_latest_checkpoint(digits, tmp_path,
                                                          capsys):
  full = _fit(_trainer(digits), None)
  work = tmp_path / "run"
  _fit(_trainer(digits), work, max_steps=10, checkpoint_every_steps=5)
  ckpts = work / "checkpoints"
  _damage(ckpts / "10")
  with pytest.raises(ValueError, match=r"step 10 .* could not be restored.*"
                     r"Earlier checkpoints are kept: \[5\]") as e:
    _fit(_trainer(digits), work)
  # The remedy: redo steps 6..10 from step 5. Its save of step 10 must not
  # be skipped as existing, and the damaged one is kept aside.
  _fit(_trainer(digits), work, restore_step=5, max_steps=10,
       checkpoint_every_steps=5)
  err = capsys.readouterr().err
  # The next plain run resumes the new step 10 and ends as an unbroken run.
  resumed = _fit(_trainer(digits), work, checkpoint_every_steps=5)
  assert resumed["records"][-1]["step"] == full["records"][-1]["step"]
  _assert_same_state(resumed["state"], full["state"])
  assert resumed["records"][-1]["test_loss"] == pytest.approx(
      full["records"][-1]["test_loss"], rel=1e-6)
  assert "restore_step=5" in str(e.value)  # the message names the remedy
  assert "checkpoints.aside" in err
  assert sorted(os.listdir(work / "checkpoints.aside")) == ["10"]
  kept = [open(os.path.join(root, f), "rb").read()
          for root, _, files in os.walk(work / "checkpoints.aside" / "10")
          for f in files]
  assert kept and set(kept) == {b"garbage"}  # the damaged step, kept


def test_restore_step_sets_aside_again_without_overwriting(digits, tmp_path):
  work = tmp_path / "run"
  for _ in range(3):
    _fit(_trainer(digits), work, restore_step=None if _ == 0 else 5,
         max_steps=10, checkpoint_every_steps=5)
  assert sorted(os.listdir(work / "checkpoints.aside")) == ["10", "10.old1"]
  assert sorted(os.listdir(work / "checkpoints")) == ["10", "5"]


def test_restore_step_without_that_checkpoint_is_an_error(digits, tmp_path):
  empty = tmp_path / "empty"
  with pytest.raises(ValueError, match=r"restore_step=50, but .*checkpoints "
                     r"holds no checkpoint of that step; its steps: none"):
    _fit(_trainer(digits), empty, restore_step=50)
  assert not os.path.exists(empty / "run.json")
  assert not os.path.exists(empty / "metrics.jsonl")
  work = tmp_path / "run"
  _fit(_trainer(digits), work, max_steps=5, checkpoint_every_steps=5)
  with pytest.raises(ValueError, match=r"restore_step=7, .* its steps: \[5\]"):
    _fit(_trainer(digits), work, restore_step=7)
  with pytest.raises(ValueError, match=r"restore_step=5 needs a workdir"):
    _fit(_trainer(digits), None, restore_step=5)
  # The config path, as `--config.restore_step=50` in an empty workdir.
  with pytest.raises(ValueError, match=r"restore_step=50, .*its steps: none"):
    training.train_and_evaluate(_config(restore_step=50),
                                str(tmp_path / "empty2"))


# ------------------------------------------------------------ run.json
@pytest.mark.parametrize("tx, features, named", [
    (optax.sgd(5.0, 0.9), (16,), ["fingerprint.update"]),
    (optax.adam(1e-3), (16,), ["fingerprint.opt_state", "fingerprint.update"]),
    (optax.sgd(0.05, 0.9), (8,), ["fingerprint.opt_state",
                                  "fingerprint.params", "fingerprint.update"]),
])
def test_python_trainer_refuses_another_optimizer_or_width(
    digits, tmp_path, tx, features, named):
  _fit(_trainer(digits), tmp_path, max_steps=5, checkpoint_every_steps=5)
  with pytest.raises(ValueError, match="holds a checkpoint of a run with "
                     "other settings") as e:
    _fit(_trainer(digits, tx, features), tmp_path)
  message = str(e.value)
  assert [line.split(":")[0].strip()
          for line in message.splitlines()[1:-1]] == named
  assert "damaged" not in message
  # The same optimizer (another instance) resumes.
  summary = _fit(_trainer(digits), tmp_path)
  assert summary["records"][-1]["step"] == digits.num_train // BATCH


def test_update_fingerprint_is_compared_only_within_one_jax_version(
    digits, tmp_path, capsys):
  _fit(_trainer(digits), tmp_path, max_steps=5, checkpoint_every_steps=5)
  path = tmp_path / "run.json"
  info = json.loads(path.read_text())
  info["fingerprint"]["versions"]["jax"] = "0.0.1"
  path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="fingerprint.opt_state"):
    _fit(_trainer(digits, optax.adam(1e-3)), tmp_path)
  # A learning rate change is not seen across versions (documented).
  summary = _fit(_trainer(digits, optax.sgd(5.0, 0.9)), tmp_path,
                 max_steps=6)
  assert summary["step_loss"] and len(summary["step_loss"]) == 1
  assert "other JAX/optax versions" in capsys.readouterr().err


def test_fingerprint_sees_hyperparameters_in_constants_and_arrays():
  params = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}

  def fp(tx):
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params)}
    return _workdir.fingerprint(tx, state)

  a, b = fp(optax.sgd(0.05)), fp(optax.sgd(5.0))
  assert a["params"] == b["params"] and a["opt_state"] == b["opt_state"]
  assert a["update"] != b["update"]
  assert fp(optax.sgd(0.05))["update"] == a["update"]  # deterministic
  # A closed-over array's value counts, not only its shape.
  assert (fp(optax.sgd(jnp.float32(0.05)))["update"] !=
          fp(optax.sgd(jnp.float32(0.07)))["update"])
  sched = lambda peak: optax.sgd(optax.cosine_decay_schedule(peak, 100))
  assert fp(sched(0.1))["update"] != fp(sched(0.2))["update"]
  assert fp(optax.sgd(0.05, 0.9))["opt_state"].startswith(
      ("TraceState, EmptyState;", "ScaleByTraceState, EmptyState;"))
  assert fp(optax.adam(1e-3))["opt_state"].startswith(
      "ScaleByAdamState, EmptyState;")
  assert a["params"].startswith("1 arrays, 6 values, ")


def test_missing_run_json_is_refused_unless_restore_step_names_the_step(
    digits, tmp_path):
  full = _fit(_trainer(digits), None)
  _fit(_trainer(digits), tmp_path, max_steps=10, checkpoint_every_steps=10)
  os.remove(tmp_path / "run.json")
  with pytest.raises(ValueError, match=r"holds a checkpoint \(step 10\) but "
                     r"no run.json.*restore_step=10"):
    _fit(_trainer(digits, batch_size=32), tmp_path)
  with pytest.raises(ValueError, match="no run.json"):
    _fit(_trainer(digits), tmp_path)
  # The explicit resume: run.json is written anew, and checked from then on.
  resumed = _fit(_trainer(digits), tmp_path, restore_step=10, max_steps=15,
                 checkpoint_every_steps=15)
  assert json.loads((tmp_path / "run.json").read_text())["batch_size"] == 64
  with pytest.raises(ValueError, match=r"batch_size: 64 in the checkpointed "
                     "run, 32 now"):
    _fit(_trainer(digits, batch_size=32), tmp_path)
  resumed = _fit(_trainer(digits), tmp_path)
  _assert_same_state(resumed["state"], full["state"])


@pytest.mark.parametrize("text", ["", "{\"batch_size\": 6", "[1, 2]"])
def test_damaged_run_json_is_an_error_naming_the_file(digits, tmp_path,
                                                      text):
  _fit(_trainer(digits), tmp_path, max_steps=5, checkpoint_every_steps=5)
  (tmp_path / "run.json").write_text(text)
  with pytest.raises(ValueError, match=r"run.json cannot be read \(.*\)\. "
                     r"It records the settings.*restore_step") as e:
    _fit(_trainer(digits), tmp_path)
  assert str(tmp_path / "run.json") in str(e.value)


def test_second_fit_into_a_new_workdir_writes_run_json(digits, tmp_path):
  trainer = _trainer(digits)
  _fit(trainer, tmp_path / "a", max_steps=5, checkpoint_every_steps=5)
  _fit(trainer, tmp_path / "b", max_steps=10, checkpoint_every_steps=10)
  assert (json.loads((tmp_path / "b" / "run.json").read_text()) ==
          json.loads((tmp_path / "a" / "run.json").read_text()))
  # So a later resume there is checked.
  with pytest.raises(ValueError, match="fingerprint.update"):
    _fit(_trainer(digits, optax.sgd(5.0, 0.9)), tmp_path / "b")


def test_second_fit_into_the_same_workdir_continues_its_records(digits,
                                                                tmp_path):
  trainer = _trainer(digits)
  trainer.num_epochs = 2
  trainer.total_steps = 2 * trainer.steps_per_epoch
  _fit(trainer, tmp_path, max_steps=trainer.steps_per_epoch,
       checkpoint_every_steps=0)
  _fit(trainer, tmp_path, checkpoint_at_end=False, checkpoint_every_steps=0)
  epochs = [r["epoch"] for r in training.read_records(
      str(tmp_path / "metrics.jsonl"))]
  assert epochs == [1, 2]
  assert not os.path.exists(tmp_path / "metrics.jsonl.old1")


# ------------------------------------------------------------ messages
def test_empty_workdir_is_a_value_error_naming_it(digits):
  with pytest.raises(ValueError, match=r"workdir is '' \(empty\)"):
    _fit(_trainer(digits), "")
  with pytest.raises(ValueError, match=r"workdir is '' \(empty\)"):
    training.train_and_evaluate(_config(), "")


def test_unsaved_nonfinite_state_without_checkpoint_says_there_is_none(
    digits, tmp_path):
  nan_updates = optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda g, s, p=None: (jax.tree.map(lambda x: x * jnp.nan, g), s))
  with pytest.raises(training.NonFiniteError) as e:
    _fit(_trainer(digits, nan_updates), tmp_path, checkpoint_every_steps=1)
  assert "no checkpoint was saved before it" in str(e.value)
  assert "None" not in str(e.value)
