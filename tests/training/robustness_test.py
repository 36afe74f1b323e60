"""Training never loses work: divergence, preemption, restarts, bad config.

One device throughout; small MLPs on digits.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gaf_optax
from gaf_optax import data
from gaf_optax import models
from gaf_optax import training
from tests.training.training_test import _config
from tests.training.training_test import _strip_timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
BATCH = 64
POISON = 10  # the label of the one example whose loss and gradient are NaN


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _poisoned(ds, step):
  """Digits with one example, met at ``step`` of epoch 0, labelled POISON."""
  order = data.epoch_order(ds.num_train, seed=0, epoch=0)
  index = order[(step - 1) * BATCH]
  labels = ds.train.labels.copy()
  labels[index] = POISON
  train = data.ArraySource(ds.train.images, labels)
  return dataclasses.replace(ds, train=train, num_classes=POISON + 1), index


def _poison_loss(logits, labels):
  # NaN loss and NaN gradient for the poisoned example only.
  ce = training.softmax_cross_entropy(logits, jnp.minimum(labels, 9))
  return ce * jnp.where(labels == POISON, jnp.nan, 1.0)


def _bad_steps(ds, index, epochs):
  spe = ds.num_train // BATCH
  out = []
  for e in range(epochs):
    pos = int(np.flatnonzero(data.epoch_order(ds.num_train, seed=0,
                                              epoch=e) == index)[0])
    if pos < spe * BATCH:
      out.append(e * spe + pos // BATCH + 1)
  return out


def _trainer(ds, **kwargs):
  kwargs.setdefault("num_epochs", 2)
  kwargs.setdefault("loss_fn", _poison_loss)
  return training.Trainer(
      models.MLP(features=(16,), num_classes=ds.num_classes),
      optax.sgd(0.05, 0.9), ds, batch_size=BATCH, mesh=training.make_mesh(1),
      **kwargs)


def _fit(trainer, workdir, **kwargs):
  kwargs.setdefault("progress", False)
  kwargs.setdefault("log_to_stdout", False)
  kwargs.setdefault("tensorboard", False)
  return trainer.fit(None if workdir is None else str(workdir), **kwargs)


# ------------------------------------------------------------ divergence
def test_nonfinite_step_stops_the_run_and_keeps_good_checkpoints(digits,
                                                                 tmp_path):
  ds, _ = _poisoned(digits, step=13)
  with pytest.raises(training.NonFiniteError,
                     match=r"from step 13 on .*skip_nonfinite_steps=0.*the "
                     r"last good checkpoint is step 10") as e:
    _fit(_trainer(ds), tmp_path, checkpoint_every_steps=5,
         keep_checkpoints=2)
  assert (e.value.step, e.value.checkpoint) == (13, 10)
  ckpt = training.Checkpointer(str(tmp_path))
  try:
    # Step 15's save found the divergence: nothing after step 13 was saved,
    # and rotation (keep 2) kept the good ones.
    assert ckpt.all_steps() == [5, 10]
    for s in (5, 10):
      _, state = ckpt.restore(_trainer(ds).state, s)
      assert bool(training.all_finite(state))
  finally:
    ckpt.close()
  assert not os.path.exists(tmp_path / "metrics.jsonl")  # no NaN epoch


def test_divergence_is_found_without_a_checkpoint_between(digits):
  # Found by the periodic check (check_every) inside the epoch.
  ds, _ = _poisoned(digits, step=3)
  trainer = _trainer(ds)
  with pytest.raises(training.NonFiniteError, match=r"from step 3 on .*no "
                     "checkpoint was saved"):
    _fit(trainer, None, check_every=4)
  assert int(trainer.state.step) == 4


def test_a_real_divergence_exits_with_an_error_and_no_nan_records(tmp_path):
  config = _config(learning_rate=1e6, checkpoint_every_steps=5,
                   keep_checkpoints=2, num_epochs=3)
  with pytest.raises(training.NonFiniteError, match="Non-finite loss"):
    training.train_and_evaluate(config, str(tmp_path))
  text = (open(tmp_path / "metrics.jsonl").read()
          if os.path.exists(tmp_path / "metrics.jsonl") else "")
  assert "nan" not in text.lower()


def test_skip_nonfinite_steps_rides_out_a_bad_batch(digits):
  ds, index = _poisoned(digits, step=5)
  bad = _bad_steps(ds, index, epochs=2)
  assert bad[0] == 5 and len(bad) == 2
  trainer = _trainer(ds, skip_nonfinite_steps=1)
  before = _fit(trainer, None, max_steps=4)["state"]
  before = jax.tree.map(np.array, before)
  after = _fit(trainer, None, max_steps=5)["state"]
  # The bad step changed no parameter, optimizer or BN state, and no sums.
  for a, b in zip(jax.tree.leaves((before.params, before.model_state,
                                   before.sums)),
                  jax.tree.leaves((after.params, after.model_state,
                                   after.sums))):
    np.testing.assert_array_equal(a, b)
  assert int(after.health["total"]) == 1
  summary = _fit(trainer, None)
  assert summary["nonfinite_steps"] == 2
  assert [r["nonfinite_steps"] for r in summary["records"]] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in summary["records"])
  assert summary["records"][-1]["test_accuracy"] > 0.8


def test_skip_nonfinite_steps_stops_after_the_allowed_streak(digits):
  # Every step from 3 on is bad: 2 are skipped, the third stops the run.
  ds = digits
  trainer = training.Trainer(
      models.MLP(features=(16,), num_classes=10), optax.sgd(0.05), ds,
      batch_size=BATCH, mesh=training.make_mesh(1), skip_nonfinite_steps=2,
      loss_fn=lambda logits, labels: training.softmax_cross_entropy(
          logits, labels) * jnp.nan)
  with pytest.raises(training.NonFiniteError,
                     match=r"from step 1 on \(more than "
                     r"skip_nonfinite_steps=2"):
    _fit(trainer, None, check_every=1)
  assert int(trainer.state.step) == 3  # stopped at the first step over


def test_the_bare_sgd_gaf_buffer_stays_inf_and_the_trainer_stops():
  # The policy of docs: the transformation does not check; the trainer does.
  ds = data.get("digits")
  trainer = training.Trainer(
      models.MLP(features=(16,), num_classes=10),
      gaf_optax.sgd_gaf(0.1), ds, batch_size=BATCH,
      mesh=training.make_mesh(1),
      loss_fn=lambda logits, labels: training.softmax_cross_entropy(
          logits, labels) * jnp.inf)
  with pytest.raises(training.NonFiniteError, match="from step 1 on"):
    _fit(trainer, None, check_every=1)


# ------------------------------------------------------------ preemption
def _plain(ds, num_epochs, cls=training.Trainer, **kwargs):
  """A fresh trainer of the same small MLP run (for interrupted vs whole)."""
  return cls(models.MLP(features=(16,), num_classes=10), optax.sgd(0.05, 0.9),
             ds, batch_size=BATCH, num_epochs=num_epochs,
             mesh=training.make_mesh(1), **kwargs)


class _Signalling(training.Trainer):
  """Sends itself ``signum`` while the batch of step ``at`` is read."""

  def __init__(self, *args, at, signum=signal.SIGTERM, **kwargs):
    super().__init__(*args, **kwargs)
    self.at, self.signum = at, signum

  def train_batches(self, epoch, start_batch=0, num_epochs=1):
    for i, batch in enumerate(super().train_batches(epoch, start_batch,
                                                    num_epochs)):
      if epoch * self.steps_per_epoch + start_batch + i + 1 == self.at:
        signal.raise_signal(self.signum)
      yield batch


# Mid-epoch, and at an epoch's last step (its record must not be lost).
@pytest.mark.parametrize("signum, at", [(signal.SIGTERM, 30),
                                        (signal.SIGINT, 21)])
def test_a_stop_signal_saves_the_step_and_the_resumed_run_is_exact(
    digits, tmp_path, signum, at):
  full = _fit(_plain(digits, 3), tmp_path / "full")
  work = tmp_path / "run"
  handler = signal.getsignal(signum)
  with pytest.raises(training.Preempted,
                     match=rf"Stopped by {signal.Signals(signum).name} after "
                     rf"step {at}: saved a checkpoint at step {at}") as e:
    _fit(_plain(digits, 3, _Signalling, at=at, signum=signum), work)
  assert (e.value.step, e.value.checkpoint, e.value.signum) == (at, at,
                                                                signum)
  assert len(training.read_records(str(work / "metrics.jsonl"))) == at // 21
  assert signal.getsignal(signum) is handler  # handlers are put back
  resumed = _fit(_plain(digits, 3), work)
  assert _strip_timing(resumed["records"]) == _strip_timing(full["records"])
  assert _strip_timing(training.read_records(
      str(work / "metrics.jsonl"))) == _strip_timing(full["records"])


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    import optax
    from gaf_optax import data, models, training

    class Slow(training.Trainer):
      def train_batches(self, epoch, start_batch=0, num_epochs=1):
        first = epoch * self.steps_per_epoch + start_batch
        for i, b in enumerate(super().train_batches(epoch, start_batch,
                                                    num_epochs)):
          if first + i == self.steps_per_epoch + 5:  # epoch 1, batch 5
            print("mid-epoch", flush=True)
          time.sleep(float(sys.argv[2]))
          yield b

    trainer = Slow(models.MLP(features=(16,), num_classes=10),
                   optax.sgd(0.05, 0.9), data.get("digits"), batch_size=64,
                   num_epochs=3, mesh=training.make_mesh(1))
    try:
      trainer.fit(sys.argv[1], progress=False, log_to_stdout=False,
                  tensorboard=False)
    except training.Preempted as e:
      print(e, flush=True)
      sys.exit(128 + e.signum)
""")


def test_sigterm_to_a_subprocess_then_resume_equals_an_uninterrupted_run(
    tmp_path):
  script = tmp_path / "child.py"
  script.write_text(_CHILD.format(repo=REPO))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def run(workdir, kill):
    p = subprocess.Popen([sys.executable, str(script), str(workdir),
                          "0.05" if kill else "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env, cwd=REPO, text=True)
    lines = []
    try:
      for line in p.stdout:
        lines.append(line)
        if kill and line.startswith("mid-epoch"):
          p.send_signal(signal.SIGTERM)
      p.wait(timeout=300)
    finally:
      p.kill()
    return p.returncode, "".join(lines)

  code, out = run(tmp_path / "full", kill=False)
  assert code == 0, out[-2000:]
  work = tmp_path / "run"
  code, out = run(work, kill=True)
  assert code == 128 + signal.SIGTERM, out[-2000:]
  assert "Stopped by SIGTERM after step" in out
  ckpt = training.Checkpointer(str(work))
  try:
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  spe = 1348 // 64
  assert len(steps) == 1 and spe < steps[0] < 2 * spe  # mid-epoch 2
  assert len(training.read_records(str(work / "metrics.jsonl"))) == 1
  code, out = run(work, kill=False)
  assert code == 0, out[-2000:]
  assert _strip_timing(training.read_records(str(work / "metrics.jsonl"))) \
      == _strip_timing(training.read_records(
          str(tmp_path / "full" / "metrics.jsonl")))


# ------------------------------------------------------------ restarts
def test_fresh_start_sets_old_metrics_aside(digits, tmp_path):
  ds = digits
  model = models.MLP(features=(16,), num_classes=10)
  for _ in range(2):
    _fit(training.Trainer(model, optax.sgd(0.05), ds, batch_size=BATCH,
                          num_epochs=2, mesh=training.make_mesh(1)),
         tmp_path, checkpoint_at_end=False)
  epochs = [r["epoch"] for r in training.read_records(
      str(tmp_path / "metrics.jsonl"))]
  assert epochs == [1, 2]  # not [1, 2, 1, 2]
  old = training.read_records(str(tmp_path / "metrics.jsonl.old1"))
  assert [r["epoch"] for r in old] == [1, 2]


@pytest.mark.parametrize("overrides, names", [
    ({"batch_size": 32}, ["batch_size", "config.batch_size",
                          "steps_per_epoch"]),
    ({"learning_rate": 0.01}, ["config.learning_rate"]),
    ({"model_kwargs.features": (16,)}, ["config.model_kwargs.features"]),
])
def test_resume_with_other_step_defining_settings_is_refused(
    tmp_path, overrides, names):
  work = str(tmp_path)
  training.train_and_evaluate(_config(checkpoint_every_steps=5), work,
                              max_steps=7)
  with pytest.raises(ValueError, match="holds a checkpoint of a run with "
                     "other settings") as e:
    training.train_and_evaluate(_config(**overrides), work)
  listed = [line.split(":")[0].strip() for line in
            str(e.value).splitlines()[1:-1]]
  assert listed == names
  # How to run may change: a resume with another eval batch and interval.
  summary = training.train_and_evaluate(
      _config(eval_batch_size=256, checkpoint_every_steps=3), work)
  assert [r["epoch"] for r in summary["records"]] == [1, 2]


def test_torn_last_metrics_line_is_dropped_on_resume(digits, tmp_path):
  full = _fit(_plain(digits, 2), tmp_path / "full")
  work = tmp_path / "run"
  _fit(_plain(digits, 2), work, max_steps=25, checkpoint_every_steps=25)
  with open(work / "metrics.jsonl", "a") as f:
    f.write('{"step": 42, "epoch": 2, "train_lo')  # killed mid-write
  resumed = _fit(_plain(digits, 2), work)
  assert _strip_timing(resumed["records"]) == _strip_timing(full["records"])
  text = open(work / "metrics.jsonl").read()
  assert text.count("\n") == 2 and "train_lo\"" not in text
  assert _strip_timing([json.loads(x) for x in text.splitlines()]) == \
      _strip_timing(full["records"])


def test_damaged_metrics_lines_are_errors_naming_file_and_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "ep\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON "
                     "record"):
    training.read_records(str(path))
  path.write_text('{"step": 1}\n{"epoch": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a record "
                     r"with an integer 'step'"):
    training.read_records(str(path))


def test_leftover_temporary_checkpoint_folders_are_removed(tmp_path):
  leftover = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1700000000"
  leftover.mkdir(parents=True)
  (leftover / "partial").write_bytes(b"x")
  ckpt = training.Checkpointer(str(tmp_path))
  try:
    assert ckpt.all_steps() == []
  finally:
    ckpt.close()
  assert not leftover.exists()


# ------------------------------------------------------------ validation
@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 0, r"config.batch_size must be an int >= 1; got 0"),
    ("batch_size", -64, r"config.batch_size must be an int >= 1; got -64"),
    ("num_epochs", 0, r"config.num_epochs must be an int >= 1; got 0"),
    ("keep_checkpoints", 0, r"config.keep_checkpoints must be an int >= 1"),
    ("checkpoint_every_steps", -1,
     r"config.checkpoint_every_steps must be an int >= 0; got -1"),
    ("learning_rate", -0.1, r"config.learning_rate must be a finite number "
     r">= 0; got -0.1"),
    ("learning_rate", float("nan"), r"config.learning_rate must be"),
    ("momentum", -0.5, r"config.momentum must be a number in \[0, 1\]"),
    ("warmup_epochs", -1.0, r"config.warmup_epochs must be a finite number "
     r">= 0"),
    ("seed", -1, r"config.seed must be an int >= 0; got -1"),
    ("skip_nonfinite_steps", -1, r"config.skip_nonfinite_steps must be"),
    ("eps", 0.0, r"config.eps must be a finite number > 0"),
    ("b2", 1.0, r"config.b2 must be a number in \[0, 1\)"),
    ("model_kwargs.bogus", 1, r"config.model_kwargs has field\(s\) 'bogus' "
     r"that model 'mlp' does not take; it takes: .*features"),
])
def test_config_values_are_checked_before_any_work(field, value, match):
  with pytest.raises(ValueError, match=match):
    training.Trainer.from_config(_config(**{field: value}))


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("")
  with pytest.raises(ValueError, match=r"workdir .*file.* is a file"):
    training.train_and_evaluate(_config(), str(path))


@pytest.mark.parametrize("kwargs, match", [
    ({"keep_checkpoints": 0}, "keep_checkpoints must be an int >= 1"),
    ({"checkpoint_every_steps": -5}, "checkpoint_every_steps must be an int"),
    ({"check_every": 0}, "check_every must be an int >= 1"),
    ({"max_steps": -1}, "max_steps must be an int >= 0"),
])
def test_fit_arguments_are_checked(digits, tmp_path, kwargs, match):
  trainer = training.Trainer(models.MLP(features=(8,)), optax.sgd(0.1),
                             digits, batch_size=BATCH,
                             mesh=training.make_mesh(1))
  with pytest.raises(ValueError, match=match):
    trainer.fit(str(tmp_path), **kwargs)


def test_trainer_seed_and_skip_are_checked(digits):
  for kwargs, match in (({"seed": -1}, "seed must be an int >= 0"),
                        ({"skip_nonfinite_steps": 1.5},
                         "skip_nonfinite_steps must be an int >= 0")):
    with pytest.raises(ValueError, match=match):
      training.Trainer(models.MLP(features=(8,)), optax.sgd(0.1), digits,
                       batch_size=BATCH, mesh=training.make_mesh(1), **kwargs)


def test_unknown_model_argument_is_a_clear_error():
  with pytest.raises(ValueError, match=r"Unknown argument\(s\) 'bogus' for "
                     r"model 'resnet8'; it accepts: .*widths"):
    models.get("resnet8", bogus=1)


_HOST = textwrap.dedent("""
    import sys, time
    import jax
    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    sys.path.insert(0, {repo!r})
    port, pid, work, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    jax.distributed.initialize(f"127.0.0.1:{{port}}", 2, pid)
    import optax
    from gaf_optax import data, models, training

    class Slow(training.Trainer):
      def train_batches(self, epoch, start_batch=0, num_epochs=1):
        first = epoch * self.steps_per_epoch + start_batch
        for i, b in enumerate(super().train_batches(epoch, start_batch,
                                                    num_epochs)):
          if first + i == self.steps_per_epoch + 5:  # epoch 1, batch 5
            print("mid-epoch", flush=True)
          time.sleep(pause)
          yield b

    trainer = Slow(models.MLP(features=(16,), num_classes=10),
                   optax.sgd(0.05, 0.9), data.get("digits"), batch_size=64,
                   num_epochs=3)
    code = 0
    try:
      trainer.fit(work, progress=False, log_to_stdout=False,
                  tensorboard=False)
    except training.Preempted as e:
      print("preempted at", e.step, flush=True)
      code = 143
    jax.distributed.shutdown()
    sys.exit(code)
""")


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  # JAX's preemption service (jax.distributed) tells every process; they
  # agree on the step and save one checkpoint together.
  script = tmp_path / "host.py"
  script.write_text(_HOST.format(repo=REPO))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  work = tmp_path / "run"

  def run(kill):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = str(s.getsockname()[1])
    procs = [subprocess.Popen(
        [sys.executable, str(script), port, str(i), str(work),
         "0.1" if kill else "0"], env=env,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [[], []]

    def read(i):
      for line in procs[i].stdout:
        outs[i].append(line)
        if kill and i == 1 and line.startswith("mid-epoch"):
          procs[1].send_signal(signal.SIGTERM)

    readers = [threading.Thread(target=read, args=(i,))
               for i in range(2)]
    for r in readers:
      r.start()
    try:
      for p in procs:
        p.wait(timeout=240)
    finally:
      for p in procs:
        p.kill()
      for r in readers:
        r.join()
    return [p.returncode for p in procs], ["".join(o) for o in outs]

  codes, outs = run(kill=True)
  assert codes == [143, 143], [o[-2000:] for o in outs]
  steps = {line.split()[-1] for o in outs for line in o.splitlines()
           if line.startswith("preempted at")}
  assert len(steps) == 1, outs
  (step,) = steps
  ckpt = training.Checkpointer(str(work))
  try:
    assert ckpt.all_steps() == [int(step)]
  finally:
    ckpt.close()
  # After the notice (step 27), before the end (63); how many steps the
  # agreement takes depends on the coordination service's latency.
  assert 27 <= int(step) < 63
  codes, outs = run(kill=False)
  assert codes == [0, 0], [o[-2000:] for o in outs]
  assert [r["epoch"] for r in training.read_records(
      str(work / "metrics.jsonl"))] == [1, 2, 3]


def test_saves_are_asynchronous_and_safe_to_donate_after(tmp_path):
  # save() returns once the arrays are off the device: deleting them (as the
  # donated train step does) does not touch what is written.
  tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(7)}
  expected = jax.tree.map(np.array, tree)
  ckpt = training.Checkpointer(str(tmp_path))
  try:
    ckpt.save(5, tree)
    assert ckpt.latest_step() == 5  # counted while it is written
    for leaf in jax.tree.leaves(tree):
      leaf.delete()
    ckpt.save(5, tree)  # the same step again is a no-op, not an error
  finally:
    ckpt.close()
  ckpt = training.Checkpointer(str(tmp_path))
  try:
    step, restored = ckpt.restore(jax.tree.map(jnp.zeros_like, expected))
  finally:
    ckpt.close()
  assert step == 5
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
