"""Smoke tests of the studies: study_theory and study_vanishing (--smoke)."""

import math
import os
import re

import numpy as np

from experiments import study_theory
from experiments import study_vanishing

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _table_rows(text: str, first_cell: str | None = None) -> list[list[str]]:
  """Cells of the markdown table rows (header and separator excluded)."""
  rows = []
  for line in text.splitlines():
    if not line.startswith("| ") or line.startswith("|---"):
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if first_cell is None or cells[0] == first_cell:
      rows.append(cells)
  return rows


def _numbers(cell: str) -> list[float]:
  return [float(x) for x in _NUMBER.findall(cell)]


def test_study_theory_smoke_writes_table_plot_and_matched_claim(tmp_path):
  out = str(tmp_path / "theory")
  res = study_theory.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.study_theory --smoke" in text
  assert "Seeds: [0, 1, 2]" in text
  header = next(r for r in _table_rows(text) if r[0] == "kappa")
  assert header[2:] == [arm.name for arm in study_theory.ARMS]
  quad_rows = [r for r in _table_rows(text) if r[0] in ("10", "100")]
  saddle_rows = [r for r in _table_rows(text) if r[0].startswith("dim ")]
  assert quad_rows and saddle_rows
  for rows in (quad_rows, saddle_rows):
    for column in range(len(study_theory.ARMS)):
      cells = [r[-len(study_theory.ARMS) + column] for r in rows]
      assert "nan" not in " ".join(cells).lower()
      # Every arm reaches its goal somewhere in the grid, with finite counts.
      values = [v for c in cells if not c.startswith("never")
                for v in _numbers(c)]
      assert values and all(math.isfinite(v) for v in values), cells
  assert os.path.getsize(os.path.join(out, "theory.png")) > 10_000

  # The claim-level check: where GD at lr*alpha*beta is stable (lr*L = 0.5),
  # GAF at lr needs the same number of iterations on the quadratic within
  # 15% (its arctan is linear near 0), and 1/(alpha*beta) of GD at lr.
  cfg, quad = res["config"], res["quadratic"]
  j = cfg.lr_times_l.index(0.5)
  gd = quad[study_theory.Arm("gd")][:, j]
  for a, b in study_theory.GAF_SETTINGS:
    gaf = quad[study_theory.Arm("gaf", a, b)][:, j]
    matched = quad[study_theory.Arm("matched", a, b)][:, j]
    assert (gaf <= cfg.max_steps).all() and (matched <= cfg.max_steps).all()
    np.testing.assert_allclose(gaf, matched, rtol=0.15)
    assert np.all(gaf < gd)


def test_study_vanishing_smoke_writes_finite_table_and_plot(tmp_path):
  out = str(tmp_path / "vanishing")
  res = study_vanishing.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.study_vanishing --smoke" in text
  assert "Seeds: [0, 1, 2]" in text
  for arm in study_vanishing.ARMS:
    (row,) = _table_rows(text, study_vanishing.DESCRIPTIONS[arm])
    assert "diverged" not in " ".join(row) and "nan" not in " ".join(row)
    values = [v for c in row[1:] for v in _numbers(c)]
    assert len(values) >= 10 and all(math.isfinite(v) for v in values), row
  for setting in study_vanishing.SMOKE:
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
