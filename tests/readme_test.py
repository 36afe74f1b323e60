"""The README's Python examples run as written."""

import os
import re

REPO = os.path.dirname(os.path.dirname(__file__))


def _block(marker: str) -> str:
  text = open(os.path.join(REPO, "README.md")).read()
  after = text.split(f"<!-- {marker} -->", 1)[1]
  return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_python_trainer_example_trains_digits_and_writes_its_files(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_block("test:python-trainer"), "README.md", "exec"),  # pylint: disable=exec-used
       namespace)
  summary = namespace["summary"]
  assert summary["best_test_accuracy"] > 0.9
  assert f"{summary['best_test_accuracy']}" in capsys.readouterr().out
  assert [r["epoch"] for r in summary["records"]] == list(range(1, 11))
  steps = len(summary["step_loss"])
  assert summary["telemetry"]["step"] == list(range(10, steps + 1, 10))
  assert 0 <= min(summary["telemetry"]["gaf_saturated"])
  for name in ("metrics.jsonl", "telemetry.jsonl", "checkpoints",
               "tensorboard"):
    assert os.path.exists(tmp_path / "runs" / "digits" / name), name
