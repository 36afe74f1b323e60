"""Vanishing-gradient study smoke test. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import math
import os

import numpy as np

from experiments.studies import vanishing
from tests.experiments.studies import tables


def test_study_vanishing_smoke_writes_finite_table_and_plot(tmp_path):
  out = str(tmp_path / "vanishing")
  res = vanishing.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.studies.vanishing --smoke" in text
  assert "Seeds: [0, 1, 2]" in text
  for arm in vanishing.ARMS:
    (row,) = tables.table_rows(text, vanishing.DESCRIPTIONS[arm])
    assert "diverged" not in " ".join(row) and "nan" not in " ".join(row)
    values = [v for c in row[1:] for v in tables.numbers(c)]
    assert len(values) >= 10 and all(math.isfinite(v) for v in values), row
  for setting in vanishing.SMOKE:
    path = os.path.join(out, f"grad_norms_{setting.name}.png")
    assert os.path.getsize(path) > 10_000
    results = res[setting.name]
    # Amplification starts at epoch 1: its epoch 0 is plain SGD's.
    sgd, _ = results["sgd"]
    amp, _ = results["amplification"]
    np.testing.assert_allclose(amp["grad_norms"][:, 0], sgd["grad_norms"][:, 0],
                               rtol=1e-5)
    # GAAF adds to the activation's derivative, so the first layer's
    # gradient is larger than with the plain activation.
    gaaf, _ = results["gaaf"]
    assert np.all(gaaf["grad_norms"][:, 0, 0] > sgd["grad_norms"][:, 0, 0])


# The CNN studies read the shared CIFAR-10 archive by default; their smoke
# versions read the embedded digits (8x8 images) instead, with one seed.
