"""Study 6 (GAF theory checks) smoke test. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import math
import os

import numpy as np

from experiments.studies import theory
from tests.experiments.studies import tables


def test_study_theory_smoke_writes_table_plot_and_matched_claim(tmp_path):
  out = str(tmp_path / "theory")
  res = theory.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.studies.theory --smoke" in text
  assert "Seeds: [0, 1, 2]" in text
  header = next(r for r in tables.table_rows(text) if r[0] == "kappa")
  assert header[2:] == [arm.name for arm in theory.ARMS]
  quad_rows = [r for r in tables.table_rows(text) if r[0] in ("10", "100")]
  saddle_rows = [r for r in tables.table_rows(text) if r[0].startswith("dim ")]
  assert quad_rows and saddle_rows
  for rows in (quad_rows, saddle_rows):
    for column in range(len(theory.ARMS)):
      cells = [r[-len(theory.ARMS) + column] for r in rows]
      assert "nan" not in " ".join(cells).lower()
      # Every arm reaches its goal somewhere in the grid, with finite counts.
      values = [v for c in cells if not c.startswith("never")
                for v in tables.numbers(c)]
      assert values and all(math.isfinite(v) for v in values), cells
  assert os.path.getsize(os.path.join(out, "theory.png")) > 10_000

  # The claim-level check: where GD at lr*alpha*beta is stable (lr*L = 0.5),
  # GAF at lr needs the same number of iterations on the quadratic within
  # 15% (its arctan is linear near 0), and 1/(alpha*beta) of GD at lr.
  cfg, quad = res["config"], res["quadratic"]
  j = cfg.lr_times_l.index(0.5)
  gd = quad[theory.Arm("gd")][:, j]
  for a, b in theory.GAF_SETTINGS:
    gaf = quad[theory.Arm("gaf", a, b)][:, j]
    matched = quad[theory.Arm("matched", a, b)][:, j]
    assert (gaf <= cfg.max_steps).all() and (matched <= cfg.max_steps).all()
    np.testing.assert_allclose(gaf, matched, rtol=0.15)
    assert np.all(gaf < gd)
