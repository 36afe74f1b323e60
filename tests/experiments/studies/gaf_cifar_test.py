"""Study 1 (GAF on CIFAR) smoke test, on digits. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import json
import math
import os

import numpy as np
import pytest

from experiments.studies import gaf_cifar
from tests.experiments.studies import tables


def test_study_gaf_cifar_smoke_runs_the_arms_from_the_same_start(tmp_path):
  out = str(tmp_path / "gaf_cifar")
  # Three arms (each compiles its own step): a baseline, its matched-lr
  # twin and GAF; every arm's table row is built the same way.
  arms = ["sgd", "sgd_matched", "sgd_gaf"]
  res = gaf_cifar.main(["--smoke", "--seeds", "1", "--data", "digits",
                              "--arms", ",".join(arms), "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.studies.gaf_cifar --smoke" in text
  for arm in arms:
    (row,) = tables.table_rows(text, f"`{arm}`: {gaf_cifar.ARMS[arm][0]}")
    acc = tables.numbers(row[1]) + tables.numbers(row[2])
    assert all(0.0 <= a <= 100.0 for a in acc), row
    assert math.isfinite(tables.numbers(row[3])[0]), row
  assert os.path.getsize(os.path.join(out, "curves.png")) > 10_000
  results = res["results"]
  cfg = res["config"]
  steps = cfg.epochs * (cfg.train_size // cfg.batch_size)
  first = {arm: results[arm][0]["step_loss"] for arm in arms}
  for arm in arms:
    assert len(first[arm]) == steps
    # Same initialization, first batch and augmentation for every arm: the
    # loss before the first update is the same number.
    np.testing.assert_allclose(first[arm][0], first["sgd"][0], rtol=1e-6)
  # ...and the optimizers differ from the second step on.
  assert first["sgd"][1] != first["sgd_matched"][1]
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["runs"]["sgd"][0]["step_loss"] == first["sgd"]
