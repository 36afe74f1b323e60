"""The model-throughput benchmark runs the library's train step."""

import numpy as np
import pytest

from experiments.benchmarks import models as bench_models
from gaf_optax import training


def test_bench_models_script_runs_every_variant(capsys):
  variants = ["default", "xla-defaults"]
  results = bench_models.main(["--model", "lenet", "--batch", "4", "--steps",
                               "2", "--variants", ",".join(variants)])
  assert [r["variant"] for r in results] == variants
  assert results[0]["compiler_options"] == (
      training.default_compiler_options() or {})
  assert results[1]["compiler_options"] == {}
  for r in results:
    assert r["batch"] == 4 and np.isfinite(r["loss"])
    assert r["images_per_s"] == pytest.approx(4 / r["median_step_s"])
  out = capsys.readouterr().out
  assert "images/s" in out and "step time vs default" in out
  with pytest.raises(SystemExit):
    bench_models.main(["--model", "resnet9"])
  with pytest.raises(SystemExit):
    bench_models.main(["--variants", "cpu-no-ynn"])

