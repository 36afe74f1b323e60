"""The one-accelerator reproduction command, on the CPU at smoke size."""

import os

import pytest

from experiments import reproduce
from tests.experiments.studies import tables


def test_plan_epochs_fits_the_budget():
  cal = {"compile_s": 30.0, "step_s": 0.02, "eval_s": 2.0,
         "steps_per_epoch": 195}
  # 8 runs: 240 s of compiles, then 8 * (3.9 + 2) = 47.2 s per epoch.
  assert reproduce.plan_epochs(cal, 8, 600.0) == 7
  assert reproduce.plan_epochs(cal, 8, 100.0) == 1  # at least one


def test_smoke_trains_reports_and_resumes_without_retraining(tmp_path):
  out, work = str(tmp_path / "out"), str(tmp_path / "work")
  argv = ["--smoke", "--data", "digits", "--arms", "amp_cv",
          "--workdir", work, "--out", out]
  res = reproduce.main(argv)
  plan = res["plan"]
  assert plan["epochs"] == 2 and plan["num_train"] == 320
  assert plan["calibration"]["steps_per_epoch"] == 5
  assert plan["calibration"]["compile_s"] > plan["calibration"]["step_s"] > 0
  text = open(os.path.join(out, "results.md")).read()
  assert "Device: cpu" in text and "2 epochs per arm" in text
  for arm in ("amp_cv",):
    (row,) = tables.table_rows(text, f"`{arm}`: {reproduce.ARMS[arm]}")
    acc = tables.numbers(row[1]) + tables.numbers(row[2])
    assert all(0.0 <= a <= 100.0 for a in acc), row
    (run,) = res["results"][arm]
    assert [r["epoch"] for r in run["records"]] == [1, 2]
    assert len(run["step_loss"]) == 10
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000
  # Run again: the plan and the finished arms are read, nothing retrained.
  again = reproduce.main(argv)
  assert again["results"] == res["results"]
  with pytest.raises(SystemExit):  # a new --epochs needs a new workdir
    reproduce.main(argv + ["--epochs", "3"])
