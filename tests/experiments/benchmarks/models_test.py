"""The model-throughput benchmark runs the library's train step."""

import numpy as np
import pytest

from experiments.benchmarks import models as bench_models


def test_bench_models_script_runs_every_variant(capsys):
  variants = ["default"] + (["cpu-no-ynn"] if bench_models.ynn_supported()
                            else [])  # older jaxlib: no YNNPACK fusions
  results = bench_models.main(["--model", "lenet", "--batch", "4", "--steps",
                               "2", "--variants", ",".join(variants)])
  assert [r["variant"] for r in results] == variants
  if len(results) == 2:
    assert results[1]["compiler_options"] == bench_models.CPU_NO_YNN
  for r in results:
    assert r["batch"] == 4 and np.isfinite(r["loss"])
    assert r["images_per_s"] == pytest.approx(4 / r["median_step_s"])
  assert "images/s" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    bench_models.main(["--model", "resnet9"])
