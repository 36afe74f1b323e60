"""The CNN studies take their data as an argument, with no default path."""

import pytest

from experiments.studies import amplification
from experiments.studies import anact
from experiments.studies import gaf_cifar


@pytest.mark.parametrize("study", [gaf_cifar, anact, amplification],
                         ids=["gaf_cifar", "anact", "amplification"])
def test_missing_data_is_a_usage_error_saying_how_to_get_it(study, capsys):
  with pytest.raises(SystemExit) as e:
    study.main(["--smoke"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--data is required" in err
  assert "tfds build cifar10" in err and "folder:PATH" in err
