"""The method-cost benchmark times the library's train step."""

import numpy as np
import pytest

from experiments.benchmarks import methods


def test_bench_methods_times_every_method_and_mesh(capsys):
  med = methods.main(["--model", "lenet", "--batch", "8", "--rounds", "1",
                      "--methods", "sgd,amplification,anact"])
  assert set(med) == {"sgd", "amplification", "anact"}
  assert all(np.isfinite(v) and v > 0 for v in med.values())
  med = methods.main(["--model", "lenet", "--batch", "8", "--rounds", "1",
                      "--scaling"])
  assert set(med) == {"1 devices", "2 devices", "4 devices", "8 devices"}
  out = capsys.readouterr().out
  assert "| amplification |" in out and "| 8 |" in out
  with pytest.raises(SystemExit):
    methods.main(["--methods", "lion"])


def test_steps_are_trainers_whose_state_advances():
  steps = methods.build_steps("lenet", 8, ["sgd", "amplification"])
  methods.time_steps(steps, rounds=2)
  for s in steps.values():
    # compile call + warm-up + 2 rounds
    assert int(s["trainer"].state.step) == 4
    assert np.isfinite(s["loss"])
