"""Study 7 (ANAct robustness) smoke test: the mechanism's records obey the
running rule's bounds and rate limit, the batch rule's do not; the grid's
counts add up; the report and plot are written."""

import os

import jax
import numpy as np

from experiments.studies import anact_robustness
from gaf_optax import nn as gnn
from tests.experiments.studies import tables


def test_study_anact_robustness_smoke(tmp_path):
  out = str(tmp_path / "rob")
  res = anact_robustness.main(["--smoke", "--seeds", "2", "--data", "digits",
                               "--out", out])
  text = open(os.path.join(out, "results.md")).read()
  assert "## A. " in text and "## B. " in text and "## C. " in text
  assert os.path.getsize(os.path.join(out, "mechanism.png")) > 10_000

  mech = res["mechanism"]
  steps = anact_robustness.SMOKE_MECHANISM.steps
  lam0 = float(gnn.gaussian_lambda(jax.nn.relu))
  running, batch = mech["running"]["lambda"], mech["batch"]["lambda"]
  assert running.shape == batch.shape == (steps, 4)
  # The running rule: within max_ratio = 1.5 of lambda_0, and at most
  # max_step = 0.001 in log per step, from lambda_0.
  assert np.all((running >= lam0 / 1.5 - 1e-6) & (running <= lam0 * 1.5 + 1e-6))
  moves = np.diff(np.log(np.concatenate([np.full((1, 4), lam0), running])), axis=0)
  assert np.all(np.abs(moves) <= 0.001 + 1e-6), moves
  # The batch rule follows each batch: it moves far more in the same steps.
  assert np.max(np.abs(np.diff(np.log(batch), axis=0))) > 0.01
  for rule in ("batch", "running"):
    for key in ("rho", "rho_prime", "pre_std", "grad_norm"):
      assert mech[rule][key].shape == (steps, 4), (rule, key)
      assert np.all(np.isfinite(mech[rule][key])), (rule, key)
    assert np.all((mech[rule]["dead"] >= 0) & (mech[rule]["dead"] <= 1))

  grid = res["grid"]
  assert set(grid) == {"cifar"}  # --data digits in the cifar slot
  summary = anact_robustness.summary(grid)
  for arm in anact_robustness.ARMS:
    assert summary[arm]["runs"] == 1 * 1 * 2 * 2  # datasets, depths, opts, seeds
    (row,) = tables.table_rows(text, arm)[:1]
    collapsed, runs = tables.numbers(row[1])
    assert (collapsed, runs) == (summary[arm]["collapsed"], 4)

  (acc,) = [res["control"]["digits"][4][0.01]]
  assert acc.shape == (2,) and np.all((acc >= 0) & (acc <= 1))
  (row,) = tables.table_rows(text, "digits")[-1:]
  assert tables.numbers(row[-1])[0] == round(100 * acc.mean(), 1)


def test_arms_merge_over_reused_results_and_missing_arms_are_refused():
  cell = lambda acc: {"test_accuracy": np.array([acc]),
                      "finite": np.array([True]),
                      "collapsed": np.array([acc < 0.2])}
  old = {4: {"sgd@0.01": {"relu": cell(0.9), "half_backward": cell(0.1)}}}
  new = {4: {"sgd@0.01": {"half_backward": cell(0.8)}}}
  merged = anact_robustness._merge(old, new)
  assert set(merged[4]["sgd@0.01"]) == {"relu", "half_backward"}
  assert merged[4]["sgd@0.01"]["half_backward"]["test_accuracy"][0] == 0.8
  assert merged[4]["sgd@0.01"]["relu"]["test_accuracy"][0] == 0.9
  assert anact_robustness._has_arms(old, {"relu"})
  assert not anact_robustness._has_arms(new, {"relu"})
  assert anact_robustness._has_arms(None, set())


def test_unknown_or_uncovered_arms_are_an_error(tmp_path, capsys):
  import pytest  # pylint: disable=import-outside-toplevel
  for argv, msg in (
      (["--arms", "gelu"], "--arms: unknown ['gelu']"),
      (["--arms", "half_backward", "--datasets", "digits"],
       "leaves out arms that no --reuse run has for dataset 'digits'")):
    with pytest.raises(SystemExit):
      anact_robustness.main(argv + ["--smoke", "--out", str(tmp_path)])
    assert msg in capsys.readouterr().err
