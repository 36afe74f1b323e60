"""A run ends healthy or raises; one run per workdir; arguments by value.

Tiny MLPs on digits, one device.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from gaf_optax import data
from gaf_optax import models
from gaf_optax import training
from tests.training.training_test import _config
from tests.training.training_test import _strip_timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
BATCH = 64


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _nan_update_at(step, when=None):
  """sgd whose update of ``step`` (1-based) is NaN; loss and grads stay finite.

  ``when(params) -> bool array`` further restricts it (per seed in fit_seeds).
  """
  def init(params):
    del params
    return jnp.zeros((), jnp.int32)

  def update(updates, count, params=None):
    bad = count == step - 1
    if when is not None:
      bad = bad & when(params)
    updates = jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates)
    return updates, count + 1

  return optax.chain(optax.sgd(0.05), optax.GradientTransformation(init,
                                                                   update))


def _trainer(ds, tx, **kwargs):
  kwargs.setdefault("num_epochs", 2)
  return training.Trainer(models.MLP(features=(16,), num_classes=10), tx, ds,
                          batch_size=BATCH, mesh=training.make_mesh(1),
                          **kwargs)


def _fit(trainer, workdir, **kwargs):
  return trainer.fit(None if workdir is None else str(workdir),
                     progress=False, log_to_stdout=False, tensorboard=False,
                     **kwargs)


# ------------------------------------------------- a NaN update at the end
@pytest.mark.parametrize("case", ["no_workdir", "no_final_save", "max_steps"])
def test_a_nan_last_update_raises_instead_of_returning(digits, tmp_path,
                                                       case):
  spe = 1348 // BATCH  # 21
  last = 2 * spe if case != "max_steps" else spe + 7
  trainer = _trainer(digits, _nan_update_at(last))
  kwargs = {"no_workdir": dict(),
            "no_final_save": dict(checkpoint_at_end=False,
                                  checkpoint_every_steps=spe),
            "max_steps": dict(max_steps=last, checkpoint_every_steps=spe)}[case]
  workdir = None if case == "no_workdir" else tmp_path
  expect = (r"no checkpoint was saved before it" if workdir is None else
            rf"the last good checkpoint is step {spe} in ")
  with pytest.raises(training.NonFiniteError,
                     match=rf"state after step {last} holds non-finite "
                     rf"values.*{expect}") as e:
    _fit(trainer, workdir, **kwargs)
  assert (e.value.step, e.value.checkpoint) == (
      last, None if workdir is None else spe)
  assert not bool(training.all_finite(trainer.state.params))
  if workdir is not None:
    # The NaN epoch is not recorded; the good checkpoint is intact.
    records = training.read_records(str(tmp_path / "metrics.jsonl"))
    assert [r["epoch"] for r in records] == [1]
    assert np.isfinite(records[0]["test_loss"])
    ckpt = training.Checkpointer(str(tmp_path))
    try:
      assert ckpt.all_steps() == [spe]
    finally:
      ckpt.close()


def test_a_healthy_run_still_returns_the_same_result(digits):
  # The end-of-epoch check changes nothing for a finite run: the updates
  # of the NaN-free transformation equal plain sgd's.
  a = _fit(_trainer(digits, _nan_update_at(10**6)), None)
  b = _fit(_trainer(digits, optax.sgd(0.05)), None)
  np.testing.assert_allclose(a["step_loss"], b["step_loss"], rtol=1e-6)
  assert a["records"][-1]["test_accuracy"] == b["records"][-1][
      "test_accuracy"]


def test_fit_seeds_reports_a_diverged_seed_and_keeps_the_others(digits):
  spe = 1348 // BATCH
  # NaN at step spe + 3 only for seeds whose head bias sum is positive then.
  when = lambda p: jnp.sum(p["head"]["bias"]) > 0
  trainer = _trainer(digits, _nan_update_at(spe + 3, when))
  seeds = [0, 1, 2, 3]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = trainer.fit_seeds(seeds)
  finite = out["finite"]
  assert finite.shape == (4, 2) and finite.dtype == bool
  assert finite[:, 0].all()  # epoch 1 is before the bad step everywhere
  bad = [s for s, f in zip(seeds, finite[:, 1]) if not f]
  good = [s for s, f in zip(seeds, finite[:, 1]) if f]
  assert bad and good, finite  # both kinds among these seeds
  assert np.isnan(out["test_loss"][np.asarray(bad), 1]).all()
  messages = [str(w.message) for w in caught
              if issubclass(w.category, RuntimeWarning)]
  assert len(messages) == 1, messages
  assert messages[0].startswith("fit_seeds: the state of seed(s) " + ", ".join(
      f"{s} (from epoch 2)" for s in bad) + " is non-finite")
  # The healthy seeds' runs are those of a plain sgd run.
  ref = _trainer(digits, optax.sgd(0.05)).fit_seeds(good)
  idx = np.asarray([seeds.index(s) for s in good])
  np.testing.assert_allclose(out["test_loss"][idx], ref["test_loss"],
                             rtol=1e-6)
  assert ref["finite"].all()


@pytest.mark.parametrize("seeds, match", [
    ([], r"seeds must be a non-empty sequence of ints >= 0; got none"),
    ((0, -1), r"each of seeds must be an int >= 0; got -1"),
    ([0, True], r"each of seeds must be an int >= 0; got True"),
    ("01", r"seeds must be a non-empty sequence.*got '01'"),
    (3, r"seeds must be a non-empty sequence.*got 3"),
])
def test_fit_seeds_checks_its_seeds(digits, seeds, match):
  trainer = _trainer(digits, optax.sgd(0.05))
  with pytest.raises(ValueError, match=match):
    trainer.fit_seeds(seeds)
  with pytest.raises(ValueError, match=match):
    trainer.compile_seeds(seeds)


# ------------------------------------------------- arguments by value
@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_batch_size=0), r"eval_batch_size must be an int >= 1; got 0"),
    (dict(eval_batch_size=True), r"eval_batch_size must be an int >= 1; got "
     "True"),
    (dict(batch_size=True), r"batch_size must be an int >= 1; got True"),
    (dict(batch_size=64.0), r"batch_size must be an int >= 1; got 64.0"),
    (dict(num_epochs=True), r"num_epochs must be an int >= 1; got True"),
    (dict(num_epochs=0), r"num_epochs must be an int >= 1; got 0"),
])
def test_trainer_refuses_bools_and_zero_sizes(digits, kwargs, match):
  kwargs = {"batch_size": BATCH, **kwargs}
  with pytest.raises(ValueError, match=match):
    training.Trainer(models.MLP(features=(16,), num_classes=10),
                     optax.sgd(0.1), digits, mesh=training.make_mesh(1),
                     **kwargs)


def test_eval_batch_size_none_is_batch_size(digits):
  trainer = training.Trainer(models.MLP(features=(16,), num_classes=10),
                             optax.sgd(0.1), digits, batch_size=32,
                             mesh=training.make_mesh(1))
  assert trainer.eval_batch_size == 32


@pytest.mark.parametrize("field, value", [("eval_batch_size", 0),
                                          ("batch_size", True),
                                          ("num_epochs", True),
                                          ("eval_batch_size", True)])
def test_config_refuses_bools_and_zero_sizes(field, value):
  config = _config()
  config.unlock()
  config[field] = value
  with pytest.raises(ValueError, match=rf"config.{field} must be an int >= 1;"
                     rf" got {value!r}"):
    training.validate_config(config)


def test_labels_beyond_the_models_outputs_are_refused_before_training(
    digits):
  with pytest.raises(ValueError, match=r"dataset.train has labels in \[0, 9\]"
                     r", but the model has 5 outputs.*num_classes=dataset."
                     r"num_classes \(10\)"):
    training.Trainer(models.MLP(features=(16,), num_classes=5),
                     optax.sgd(0.1), digits, batch_size=BATCH,
                     mesh=training.make_mesh(1))
  # Without the check this trained into a NaN loss, reported as divergence.
  ds = data.subset(digits, train_size=200, test_size=100)
  assert int(ds.train.labels.max()) == 9
  trainer = training.Trainer(models.MLP(features=(16,), num_classes=10),
                             optax.sgd(0.1), ds, batch_size=BATCH,
                             mesh=training.make_mesh(1))
  assert trainer.output_width() == 10


# ------------------------------------------------- the workdir lock
_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from gaf_optax.training import WorkdirLock
    with WorkdirLock(sys.argv[1]):
      print("locked", flush=True)
      time.sleep(120)
""")


def _hold(tmp_path, work):
  script = tmp_path / "holder.py"
  script.write_text(_HOLDER.format(repo=REPO))
  proc = subprocess.Popen([sys.executable, str(script), str(work)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_a_second_run_in_a_locked_workdir_fails_at_once_and_a_killed_holder_leaves_no_lock(  # pylint: disable=line-too-long
    digits, tmp_path):
  work = tmp_path / "run"
  holder = _hold(tmp_path, work)
  try:
    trainer = _trainer(digits, optax.sgd(0.05), num_epochs=1)
    start = time.perf_counter()
    with pytest.raises(training.WorkdirLocked,
                       match=rf"{work} is in use by another run \(pid "
                       rf"{holder.pid} on .*lock file {work}/lock\)") as e:
      _fit(trainer, work)
    assert time.perf_counter() - start < 5
    assert e.value.path == str(work / "lock")
    assert e.value.holder["pid"] == holder.pid
    assert not os.path.exists(work / "metrics.jsonl")  # wrote nothing
    assert int(trainer.state.step) == 0
  finally:
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
  summary = _fit(_trainer(digits, optax.sgd(0.05), num_epochs=1), work)
  assert [r["epoch"] for r in summary["records"]] == [1]


def test_the_lock_is_reentrant_per_thread_and_refuses_other_threads(tmp_path):
  work = str(tmp_path)
  errors = []

  def other():
    try:
      with training.WorkdirLock(work):
        pass
    except training.WorkdirLocked as e:
      errors.append(str(e))

  with training.WorkdirLock(work):
    with training.WorkdirLock(work):  # the same thread: reentrant
      pass
    t = threading.Thread(target=other)
    t.start()
    t.join()
  assert len(errors) == 1 and "another thread of this process" in errors[0]
  # Released: other threads and processes may take it now.
  t = threading.Thread(target=other)
  t.start()
  t.join()
  assert len(errors) == 1
  # Each process of a multi-process job has its own file.
  with training.WorkdirLock(work), training.WorkdirLock(work,
                                                        process_index=1):
    assert sorted(os.listdir(work)) == ["lock", "lock.process1"]


# ------------------------------------------------- a failed checkpoint write
_FULL = ("RESOURCE_EXHAUSTED: Error writing \"params/0\" in OCDBT database at "
         "local file \"{d}/42.orbax-checkpoint-tmp/\": Failed writing: No "
         "space left on device [os_error_code='28']")


def test_a_full_disk_during_an_async_save_is_one_line_and_keeps_good_ones(
    digits, tmp_path, monkeypatch):
  # What Orbax does: save() returns, the background write fails, and the
  # error (TensorStore's ValueError) comes back from wait_until_finished.
  spe = 1348 // BATCH
  failed = {}
  save, wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished

  def fake_save(self, step, *args, **kwargs):
    if step == 2 * spe:
      failed["step"] = step  # nothing reaches the disk
      return True
    return save(self, step, *args, **kwargs)

  def fake_wait(self):
    wait(self)
    if failed.pop("step", None) is not None:
      raise ValueError(_FULL.format(d=self.directory))

  monkeypatch.setattr(ocp.CheckpointManager, "save", fake_save)
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", fake_wait)
  with pytest.raises(training.CheckpointWriteError) as e:
    _fit(_trainer(digits, optax.sgd(0.05)), tmp_path,
         checkpoint_every_steps=spe)
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(
      f"Could not write the checkpoint of step {2 * spe} in "
      f"{tmp_path / 'checkpoints'} (ValueError: RESOURCE_EXHAUSTED: ")
  assert f"The earlier checkpoints are kept: [{spe}]" in message
  assert (e.value.step, e.value.kept) == (2 * spe, [spe])
  assert isinstance(e.value, OSError)
  assert isinstance(e.value.__cause__, ValueError)
  monkeypatch.undo()
  # The run resumes from the good checkpoint and ends as one without the
  # failure does.
  resumed = _fit(_trainer(digits, optax.sgd(0.05)), tmp_path)
  plain = _fit(_trainer(digits, optax.sgd(0.05)), None)
  assert _strip_timing(resumed["records"]) == _strip_timing(plain["records"])
