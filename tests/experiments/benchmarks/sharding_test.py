"""The FSDP memory benchmark reads the bytes from the arrays' shards."""

import pytest

from experiments.benchmarks import sharding


def test_fsdp_holds_about_one_eighth_per_device(capsys):
  res = sharding.main(["--model", "lenet", "--devices", "8",
                       "--optimizers", "sgd", "--fsdp-min-bytes", "0"])
  rep, part = res[("sgd", "replicated")], res[("sgd", "fsdp")]
  assert rep == 2 * 4 * 62_006  # float32 params + momentum, all of them
  # conv1 (5x5x3x6) and fc3 (84x10) have no dimension 8 divides: whole.
  assert rep / 8 < part < rep / 6
  assert "| sgd |" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    sharding.main(["--optimizers", "lion"])
