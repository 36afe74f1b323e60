"""The model-throughput benchmark runs the library's train step."""

import numpy as np
import pytest

from experiments.benchmarks import models


def test_bench_models_reports_a_finite_step(capsys):
  (result,) = models.main(["--model", "lenet", "--batch", "8", "--steps",
                           "2"])
  assert result["variant"] == "default" and result["batch"] == 8
  assert np.isfinite(result["loss"]) and 0 < result["median_step_s"]
  assert result["images_per_s"] == pytest.approx(8 / result["median_step_s"])
  assert "images/s" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    models.main(["--model", "resnet9"])
