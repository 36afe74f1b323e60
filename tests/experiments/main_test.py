"""The config-by-name entry point, experiments/main.py."""

import json
import os
import subprocess
import sys


def _main(work, *flags):
  """Runs experiments/main.py on the digits config for 2 epochs."""
  return subprocess.run(
      [sys.executable, "-m", "experiments.main",
       "--config=experiments/configs/digits_mlp.py", f"--workdir={work}",
       "--config.num_epochs=2", "--config.progress=False", *flags],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_main_entry_point_trains_and_writes_metrics(tmp_path):
  work = tmp_path / "run"
  proc = _main(work, "--config.optimizer=sgd_gaf", "--config.tensorboard=True")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["test_accuracy"] > 0.8
  assert "last test accuracy" in proc.stdout
  assert os.listdir(work / "tensorboard")
  assert os.listdir(work / "checkpoints") == ["42"]


def test_main_exits_nonzero_on_divergence_naming_the_step(tmp_path):
  work = tmp_path / "run"
  proc = _main(work, "--config.learning_rate=1e6", "--config.tensorboard=False")
  assert proc.returncode == 3, proc.stderr[-3000:]  # EXIT_DIVERGED
  assert "Non-finite loss or gradient from step" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(work / "checkpoints") or not os.listdir(
      work / "checkpoints")
