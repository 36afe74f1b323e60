"""The FSDP memory benchmark reads the bytes from the arrays' shards."""

import pytest

from experiments.benchmarks import sharding


def test_fsdp_holds_about_one_eighth_per_device(capsys):
  res = sharding.main(["--model", "lenet", "--devices", "8",
                       "--optimizers", "sgd,sgd_gaf,adam_gaf",
                       "--fsdp-min-bytes", "0"])
  rep, part = res[("sgd", "replicated")], res[("sgd", "fsdp")]
  assert rep == 2 * 4 * 62_006  # float32 params + momentum, all of them
  # conv1 (5x5x3x6) and fc3 (84x10) have no dimension 8 divides: whole.
  assert rep / 8 < part < rep / 6
  # GAF adds no state: sgd_gaf holds what sgd holds; adam_gaf one more
  # buffer per parameter (and a step count).
  assert res[("sgd_gaf", "replicated")] == rep
  assert res[("sgd_gaf", "fsdp")] == part
  assert res[("adam_gaf", "replicated")] == 3 * 4 * 62_006 + 4
  # Their jitted updates keep the split: no all-gather, and the state they
  # return is as small per device as the trainer's.
  for opt in ("sgd", "sgd_gaf", "adam_gaf"):
    assert res[(opt, "fsdp_update_all_gathers")] == 0, opt
    assert res[(opt, "fsdp_updated")] == res[(opt, "fsdp")], opt
  out = capsys.readouterr().out
  assert "| sgd_gaf |" in out and "| adam_gaf |" in out
  with pytest.raises(SystemExit):
    sharding.main(["--optimizers", "lion"])
