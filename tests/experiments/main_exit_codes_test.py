"""experiments/main.py's exit codes, the workdir lock and a failed write.

Each case runs ``python -m experiments.main`` (or main.main under a small
wrapper) in a subprocess on the digits MLP.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

from experiments import main as main_lib
from gaf_optax import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
FLAGS = ["--config=experiments/configs/digits_mlp.py", "--config.progress=False",
         "--config.tensorboard=False", "--config.log_to_stdout=False"]


def _argv(work, *flags):
  return [f"--workdir={work}", *FLAGS, *flags]


def _run(args, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, timeout=300,
                        cwd=REPO, **kwargs)


def test_the_exit_codes_are_distinct_and_documented():
  codes = (main_lib.EXIT_BAD_INPUT, main_lib.EXIT_DIVERGED, main_lib.EXIT_IO)
  assert codes == (2, 3, 4)
  for code in codes:
    assert f"- {code}: " in main_lib.__doc__


def test_bad_config_exits_2_in_one_line(tmp_path):
  proc = _run([sys.executable, "-m", "experiments.main",
               *_argv(tmp_path / "run", "--config.batch_size=0")])
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "ValueError: config.batch_size must be an int >= 1; got 0.")
  assert "Traceback" not in proc.stderr


def test_a_second_run_in_the_workdir_exits_2_and_the_first_is_untouched(
    tmp_path):
  work = tmp_path / "run"
  first = subprocess.Popen(
      [sys.executable, "-m", "experiments.main",
       *_argv(work, "--config.num_epochs=3")], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not os.path.exists(work / "lock") or not open(work / "lock").read():
      assert time.time() < deadline and first.poll() is None
      time.sleep(0.1)
    second = _run([sys.executable, "-m", "experiments.main",
                   *_argv(work, "--config.num_epochs=3")])
    out, err = first.communicate(timeout=300)
  finally:
    first.kill()
  assert second.returncode == 2, second.stderr[-3000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"WorkdirLocked: {work} is in use by another run "
                         f"(pid {first.pid} on "), last
  assert f"lock file {work}/lock)" in last
  assert first.returncode == 0, err[-3000:]
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2, 3]  # one run's, once
  # The lock went with the first run: a third run resumes (nothing to do).
  third = _run([sys.executable, "-m", "experiments.main",
                *_argv(work, "--config.num_epochs=3")])
  assert third.returncode == 0, third.stderr[-3000:]


# A real write failure: the file-size limit (RLIMIT_FSIZE) is lowered just
# before the final save, so TensorStore's write of the checkpoint fails in
# Orbax's background thread as on a full disk (EFBIG instead of ENOSPC).
_WRAPPER = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {repo!r})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from gaf_optax.training import _checkpoint
    save = _checkpoint.Checkpointer.save
    def limited_save(self, step, tree):
      if step >= {step}:
        self.wait()  # the disk fills after the previous save
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (4096, resource.RLIM_INFINITY))
      return save(self, step, tree)
    _checkpoint.Checkpointer.save = limited_save
    from absl import app
    from experiments import main
    app.run(main.main)
""")


def test_a_failed_checkpoint_write_exits_4_in_one_line_and_resumes(tmp_path):
  work = tmp_path / "run"
  spe = 1348 // 64
  script = tmp_path / "wrapper.py"
  script.write_text(_WRAPPER.format(repo=REPO, step=2 * spe))
  flags = _argv(work, "--config.num_epochs=2",
                f"--config.checkpoint_every_steps={spe}")
  proc = _run([sys.executable, str(script), *flags])
  assert proc.returncode == 4, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) <= 3, proc.stderr[-5000:]  # no Orbax tracebacks
  assert lines[-1].startswith(
      f"CheckpointWriteError: Could not write the checkpoint of step "
      f"{2 * spe} in {work}/checkpoints ("), lines[-1]
  assert f"The earlier checkpoints are kept: [{spe}]" in lines[-1]
  ckpt = training.Checkpointer(str(work))
  try:
    assert ckpt.all_steps() == [spe]
  finally:
    ckpt.close()
  assert [n for n in os.listdir(work / "checkpoints")] == [str(spe)]
  # Without the limit the same command resumes and completes.
  proc = _run([sys.executable, "-m", "experiments.main", *flags])
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2]
