"""Study 3 (GAAF vs dropout) smoke test. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import os

import numpy as np

from experiments.studies import gaaf as study
from tests.experiments.studies import tables


def test_study_gaaf_smoke_reports_saturation_and_gaaf_gradient_gain(tmp_path):
  out = str(tmp_path / "gaaf")
  res = study.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "Seeds: [0, 1, 2]" in text
  rows = tables.table_rows(text, "0.03")  # the smoke grid's one learning rate
  assert [r[1] for r in rows] == list(study.ARMS.values())
  for row in rows:
    assert all(0.0 <= a <= 100.0 for a in tables.numbers(row[2]) + tables.numbers(row[5]))
  (setting,) = study.SMOKE
  histories = res[setting.name][0.03]
  base, gaaf = histories["base"], histories["gaaf"]
  # The 4x-variance init saturates part of the units from the start.
  assert np.all(base["saturated"][:, 0].mean(-1) > 0.02)
  # GAAF adds amplitude * s(y) to tanh', so layer 1 gets a larger gradient.
  assert np.all(gaaf["grad_abs"][:, 0, 0] > base["grad_abs"][:, 0, 0])
  assert os.path.getsize(os.path.join(out, f"{setting.name}.png")) > 10_000
