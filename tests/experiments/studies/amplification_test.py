"""Study 5 (amplification sweep) smoke test, on digits. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import os

import numpy as np
import pytest

from experiments.studies import amplification
from tests.experiments.studies import tables


def test_study_amplification_smoke_sweeps_with_the_matched_control(tmp_path):
  out = str(tmp_path / "amplification")
  res = amplification.main(["--smoke", "--seeds", "1", "--data",
                                  "digits", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  rows = {r[0]: r for r in tables.table_rows(text)}
  for description in amplification.ARMS.values():
    assert all(0.0 <= a <= 100.0 for a in tables.numbers(rows[description][1]))
  results = res["results"]
  # SGD ran at lr and at factor * lr; the matched row is the latter.
  assert set(results["sgd"]) == {0.1, 0.2}
  matched = rows[f"SGD at lr x {amplification.FACTOR:g} (matched)"]
  final = 100 * results["sgd"][0.2][0]["records"][-1]["test_accuracy"]
  assert tables.numbers(matched[1])[0] == pytest.approx(final, abs=0.01)
  # Amplification starts at epoch 1: epoch 0 is plain SGD, step for step.
  cfg = res["config"]
  spe = cfg.train_size // cfg.batch_size
  for arm in ("random", "cv", "weights"):
    np.testing.assert_allclose(results[arm][0.1][0]["step_loss"][:spe + 1],
                               results["sgd"][0.1][0]["step_loss"][:spe + 1],
                               rtol=1e-5)
    assert not np.allclose(results[arm][0.1][0]["step_loss"],
                           results["sgd"][0.1][0]["step_loss"], rtol=1e-5)
  # The points' controller amplified some points in epochs [1, end).
  # (The trainer's telemetry: the factors each step's forward pass used.)
  steps = np.array(results["cv"][0.1][0]["telemetry"]["amp_factors"])
  factors = steps.reshape(cfg.epochs, spe, -1).mean(1)
  np.testing.assert_array_equal(factors[0], 1.0)
  assert factors[1].max() == amplification.FACTOR
  assert os.path.getsize(os.path.join(out, "sweep.png")) > 10_000
