"""The config-by-name entry point, experiments/main.py."""

import json
import os
import subprocess
import sys


def test_main_entry_point_trains_and_writes_metrics(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main",
       "--config=experiments/configs/digits_mlp.py", f"--workdir={work}",
       "--config.num_epochs=2", "--config.optimizer=sgd_gaf",
       "--config.progress=False", "--config.tensorboard=True"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [r["epoch"] for r in records] == [1, 2]
  assert records[-1]["test_accuracy"] > 0.8
  assert "last test accuracy" in proc.stdout
  assert os.listdir(work / "tensorboard")
  assert os.listdir(work / "checkpoints") == ["42"]


def test_main_exits_nonzero_on_divergence_naming_the_step(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main",
       "--config=experiments/configs/digits_mlp.py", f"--workdir={work}",
       "--config.num_epochs=2", "--config.learning_rate=1e6",
       "--config.progress=False", "--config.tensorboard=False"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Non-finite loss or gradient from step" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(work / "checkpoints") or not os.listdir(
      work / "checkpoints")
