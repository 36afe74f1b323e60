"""Smoke tests of the studies (``--smoke``): finite, sane numbers and the
claims that hold at any scale, not the full results."""

import json
import math
import os
import re

import numpy as np
import pytest

from experiments import study_amplification
from experiments import study_anact
from experiments import study_gaaf
from experiments import study_gaf_cifar
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


# The CNN studies read the shared CIFAR-10 archive by default; their smoke
# versions read the embedded digits (8x8 images) instead, with one seed.


def test_study_gaf_cifar_smoke_runs_the_arms_from_the_same_start(tmp_path):
  out = str(tmp_path / "gaf_cifar")
  arms = ["sgd", "sgd_matched", "clip_value", "sgd_gaf", "adam_gaf"]
  res = study_gaf_cifar.main(["--smoke", "--seeds", "1", "--data", "digits",
                              "--arms", ",".join(arms), "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "python -m experiments.study_gaf_cifar --smoke" in text
  for arm in arms:
    (row,) = _table_rows(text, f"`{arm}`: {study_gaf_cifar.ARMS[arm][0]}")
    acc = _numbers(row[1]) + _numbers(row[2])
    assert all(0.0 <= a <= 100.0 for a in acc), row
    assert math.isfinite(_numbers(row[3])[0]), row
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


def test_study_gaaf_smoke_reports_saturation_and_gaaf_gradient_gain(tmp_path):
  out = str(tmp_path / "gaaf")
  res = study_gaaf.main(["--smoke", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "Seeds: [0, 1, 2]" in text
  rows = _table_rows(text, "0.03")  # the smoke grid's one learning rate
  assert [r[1] for r in rows] == list(study_gaaf.ARMS.values())
  for row in rows:
    assert all(0.0 <= a <= 100.0 for a in _numbers(row[2]) + _numbers(row[5]))
  (setting,) = study_gaaf.SMOKE
  histories = res[setting.name][0.03]
  base, gaaf = histories["base"], histories["gaaf"]
  # The 4x-variance init saturates part of the units from the start.
  assert np.all(base["saturated"][:, 0].mean(-1) > 0.02)
  # GAAF adds amplitude * s(y) to tanh', so layer 1 gets a larger gradient.
  assert np.all(gaaf["grad_abs"][:, 0, 0] > base["grad_abs"][:, 0, 0])
  assert os.path.getsize(os.path.join(out, f"{setting.name}.png")) > 10_000


def test_study_anact_smoke_gains_and_lambdas(tmp_path):
  out = str(tmp_path / "anact")
  res = study_anact.main(["--smoke", "--seeds", "1", "--data", "digits",
                          "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "## A. " in text and "## B. " in text
  mlp = res["mlp"][0.01]
  swish, nswish = mlp["swish"], mlp["nswish"]
  np.testing.assert_array_equal(swish["lambda"], 1.0)
  assert np.all(nswish["lambda"] > 1.0)  # Swish shrinks both gains
  # Swish at its own pre-activations loses signal forward and backward:
  # both gains are below 1 in every layer.
  assert np.all(swish["rho_eff"] < 1.0) and np.all(swish["rho_prime_eff"] < 1.0)
  np.testing.assert_allclose(nswish["rho_eff"],
                             nswish["lambda"] ** 2 * nswish["rho"])
  assert set(res["cnn"]) == {"swish", "nswish"}
  for arm in ("swish", "nswish"):
    (row,) = _table_rows(text, arm)[-1:]
    assert all(0.0 <= a <= 100.0 for a in _numbers(row[1]))
  for name in ("mlp.png", "cnn.png"):
    assert os.path.getsize(os.path.join(out, name)) > 10_000


def test_study_amplification_smoke_sweeps_with_the_matched_control(tmp_path):
  out = str(tmp_path / "amplification")
  res = study_amplification.main(["--smoke", "--seeds", "1", "--data",
                                  "digits", "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  rows = {r[0]: r for r in _table_rows(text)}
  for description in study_amplification.ARMS.values():
    assert all(0.0 <= a <= 100.0 for a in _numbers(rows[description][1]))
  results = res["results"]
  # SGD ran at lr and at factor * lr; the matched row is the latter.
  assert set(results["sgd"]) == {0.1, 0.2}
  matched = rows[f"SGD at lr x {study_amplification.FACTOR:g} (matched)"]
  final = 100 * results["sgd"][0.2][0]["epochs"][-1]["test_acc"]
  assert _numbers(matched[1])[0] == pytest.approx(final, abs=0.01)
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
  factors = np.array([e["factors"]
                      for e in results["cv"][0.1][0]["epochs"]])
  np.testing.assert_array_equal(factors[0], 1.0)
  assert factors[1].max() == study_amplification.FACTOR
  assert os.path.getsize(os.path.join(out, "sweep.png")) > 10_000
