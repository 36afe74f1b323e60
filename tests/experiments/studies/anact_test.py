"""Study 4 (ANAct) smoke test. Finite, sane numbers and the claims that hold at any
scale, through the library's trainer; not the full results."""

import os

import numpy as np
import pytest

from experiments.studies import anact
from tests.experiments.studies import tables


def test_study_anact_smoke_gains_and_lambdas(tmp_path):
  out = str(tmp_path / "anact")
  res = anact.main(["--smoke", "--seeds", "1", "--data", "digits",
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
    (row,) = tables.table_rows(text, arm)[-1:]
    assert all(0.0 <= a <= 100.0 for a in tables.numbers(row[1]))
  for name in ("mlp.png", "cnn.png"):
    assert os.path.getsize(os.path.join(out, name)) > 10_000
