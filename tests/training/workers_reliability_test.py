"""Grain data workers and stop signals when things go wrong.

Each test runs a small digits MLP with ``data_workers`` in a child process
of its own session (so a signal can go to its whole process group, and a
hung child is killed with it) and bounds it with a timeout.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import optax
import pytest

from gaf_optax import data
from gaf_optax import models
from gaf_optax import training
from gaf_optax.data import _batching
from tests.training.training_test import _strip_timing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TIMEOUT = 50  # seconds a child may take (it imports JAX, so do its workers)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc")

_HEAD = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {repo!r})
    import optax
    from gaf_optax import data, models, training

    def trainer(cls=training.Trainer, **kwargs):
      return cls(models.MLP(features=(8,), num_classes=10), optax.sgd(0.05),
                 data.get("digits"), batch_size=64,
                 mesh=training.make_mesh(1), **kwargs)

    def fit(t, workdir=None):
      try:
        t.fit(workdir, progress=False, log_to_stdout=False,
              tensorboard=False)
      except training.Preempted as e:
        print(e, flush=True)
        sys.exit(128 + e.signum)
""")


def _start(tmp_path, body):
  script = tmp_path / "child.py"
  script.write_text(_HEAD.format(repo=REPO) + textwrap.dedent(body))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(
      [sys.executable, str(script), str(tmp_path / "work")],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
      cwd=str(tmp_path), start_new_session=True)


def _kill_group(p):
  try:
    os.killpg(p.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  p.wait(timeout=10)


def _until(p, marker, deadline):
  """Lines of ``p`` up to and including the first that starts with marker."""
  lines = []
  for line in p.stdout:
    lines.append(line)
    if line.startswith(marker):
      return lines
    assert time.monotonic() < deadline, "".join(lines)[-3000:]
  raise AssertionError("no " + marker + " in:\n" + "".join(lines)[-3000:])


def _finish(p, deadline):
  try:
    out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
  except subprocess.TimeoutExpired:
    _kill_group(p)
    raise
  return p.returncode, out


def _children(pid):
  out = set()
  for task in os.listdir(f"/proc/{pid}/task"):
    with open(f"/proc/{pid}/task/{task}/children") as f:
      out |= {int(c) for c in f.read().split()}
  return out


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except FileNotFoundError:
    return False
  return state not in ("Z", "X")  # a zombie has exited (PID 1 may not reap)


def test_sigkill_of_the_parent_takes_its_workers_and_tracker_with_it(
    tmp_path):
  p = _start(tmp_path, """
      class Slow(training.Trainer):
        def train_step(self, batch):
          out = super().train_step(batch)
          if int(self.state.step) == 2:
            print("ready", flush=True)
          time.sleep(0.1)
          return out

      if __name__ == "__main__":
        fit(trainer(Slow, num_epochs=50, data_workers=2))
  """)
  deadline = time.monotonic() + TIMEOUT
  try:
    _until(p, "ready", deadline)
    children = _children(p.pid)
    assert len(children) >= 3, children  # two workers and the tracker
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and any(map(_alive, children)):
      time.sleep(0.2)
    assert not [c for c in children if _alive(c)]
  finally:
    _kill_group(p)  # the group: the child and whatever it left


def test_a_script_without_the_main_guard_fails_naming_it(tmp_path):
  p = _start(tmp_path, """
      fit(trainer(num_epochs=1, data_workers=1))
      print("finished", flush=True)
  """)
  code, out = _finish(p, time.monotonic() + TIMEOUT)
  assert code == 1, out[-3000:]
  assert "RuntimeError: Grain worker processes are spawned" in out
  assert 'under an `if __name__ == "__main__":` guard' in out
  line = (tmp_path / "child.py").read_text().splitlines().index(
      "fit(trainer(num_epochs=1, data_workers=1))") + 1
  assert f"child.py, line {line}.)" in out  # the fit() call
  assert "finished" not in out


def test_a_stop_signal_ends_a_run_that_never_reaches_a_step_boundary(
    tmp_path):
  p = _start(tmp_path, """
      from gaf_optax.training import _guard
      _guard.STOP_GRACE_SECONDS = 3

      class Stuck(training.Trainer):
        def train_batches(self, *args, **kwargs):
          it = super().train_batches(*args, **kwargs)
          yield next(it)
          print("stuck", flush=True)
          threading.Event().wait()  # an input pipeline that never delivers

      if __name__ == "__main__":
        fit(trainer(Stuck, num_epochs=1), sys.argv[1])
  """)
  deadline = time.monotonic() + TIMEOUT
  try:
    _until(p, "stuck", deadline)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, out = _finish(p, deadline)
  finally:
    _kill_group(p)
  assert code == 128 + signal.SIGTERM, out[-3000:]
  assert ("gaf_optax: SIGTERM arrived, but the run made no progress for 3 s "
          "(a step or the input pipeline is stuck); exiting without saving, "
          "status 143.") in out
  assert 3 <= time.monotonic() - t0 < 15


def test_sigterm_to_the_group_during_evaluation_stops_with_a_checkpoint(
    tmp_path):
  p = _start(tmp_path, """
      class Slow(training.Trainer):
        def __init__(self, *args, **kwargs):
          super().__init__(*args, **kwargs)
          step, self.seen = self._eval_step, 0

          def slow(state, batch):
            self.seen += 1
            if self.seen == 17:  # epoch 2's second batch of 15
              print(f"evaluating {int(self.state.step)}", flush=True)
              time.sleep(1)  # the signal lands while the workers read
            return step(state, batch)
          self._eval_step = slow

      if __name__ == "__main__":
        fit(trainer(Slow, num_epochs=3, data_workers=2, eval_batch_size=32),
            sys.argv[1])
  """)
  deadline = time.monotonic() + TIMEOUT
  try:
    lines = _until(p, "evaluating 42", deadline)
    os.killpg(p.pid, signal.SIGTERM)
    code, out = _finish(p, deadline)
  finally:
    _kill_group(p)
  out = "".join(lines) + out
  assert code == 128 + signal.SIGTERM, out[-3000:]
  assert "Worker process was terminated" not in out
  assert ("Stopped by SIGTERM after step 42: saved a checkpoint at step 42"
          in out), out[-3000:]
  work = str(tmp_path / "work")
  assert [r["step"] for r in training.read_records(
      os.path.join(work, "metrics.jsonl"))] == [21, 42]
  ckpt = training.Checkpointer(work)
  try:
    assert ckpt.all_steps() == [42]
  finally:
    ckpt.close()


def test_evaluation_starts_its_workers_once_per_fit(monkeypatch):
  ds = data.get("digits")

  def run(workers):
    trainer = training.Trainer(
        models.MLP(features=(8,), num_classes=10), optax.sgd(0.05, 0.9), ds,
        batch_size=64, eval_batch_size=100, num_epochs=3,
        mesh=training.make_mesh(1), data_workers=workers)
    return trainer.fit(None, progress=False, log_to_stdout=False,
                       tensorboard=False)

  ref = run(0)
  pools = []
  grain_batches = _batching._grain_batches

  def counted(fn, *args):
    pools.append(type(fn).__name__)
    return grain_batches(fn, *args)

  monkeypatch.setattr(_batching, "_grain_batches", counted)
  got = run(1)
  assert sorted(pools) == ["_Batcher", "_Repeat"]  # train, and evaluation
  assert _strip_timing(got["records"]) == _strip_timing(ref["records"])
  assert len(got["records"]) == 3
