"""Smoke and correctness tests for the experiment entry points."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import gaf_optax
from experiments import bench_methods, bench_optimizer, param_trees, quickstart


def test_param_tree_counts_match_pytorch_references():
  assert param_trees.num_params("resnet18_cifar10") == 11_173_962
  assert param_trees.num_params("resnet50_imagenet") == 25_557_032
  tree = param_trees.random_tree("resnet18_cifar10", jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(tree)) == 11_173_962


def test_bench_rejects_unknown_tree(capsys):
  with pytest.raises(SystemExit):
    bench_optimizer.main(["--trees", "vgg99"])
  assert "unknown --trees ['vgg99']" in capsys.readouterr().err


def test_quickstart_reduced_mode_writes_a_finite_table(tmp_path, capsys):
  out = str(tmp_path / "qs")
  results = quickstart.main(["--epochs", "1", "--seeds", "1", "--out", out])
  printed = capsys.readouterr().out
  assert set(results["arms"]) == set(quickstart.ARMS)
  for arm, res in results["arms"].items():
    (run,) = res["runs"]
    for key in ("final_test_accuracy", "best_test_accuracy",
                "final_train_loss", "seconds"):
      assert np.isfinite(run[key]), (arm, key, run[key])
    assert 0.3 < run["final_test_accuracy"] <= 1.0, (arm, run)
    assert f"| {arm} | " in printed
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["arms"]["sgd"]["runs"][0]["final_test_accuracy"] == (
      results["arms"]["sgd"]["runs"][0]["final_test_accuracy"])
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000


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


def test_bench_methods_times_every_method_and_mesh(capsys):
  med = bench_methods.main(["--model", "lenet", "--batch", "8", "--rounds",
                            "1", "--methods", "sgd,amplification,anact"])
  assert set(med) == {"sgd", "amplification", "anact"}
  assert all(np.isfinite(v) and v > 0 for v in med.values())
  med = bench_methods.main(["--model", "lenet", "--batch", "8", "--rounds",
                            "1", "--scaling"])
  assert set(med) == {"1 devices", "2 devices", "4 devices", "8 devices"}
  out = capsys.readouterr().out
  assert "| amplification |" in out and "| 8 |" in out
  with pytest.raises(SystemExit):
    bench_methods.main(["--methods", "lion"])
