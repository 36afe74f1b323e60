"""Every study smoke test carries the ``study_smoke`` marker.

They check the experiments, not the library's lower dependency bounds, and
take about a third of the suite's time on a 2-core CPU, so ``.ci/run``'s
floor leg deselects them (``-m "not study_smoke"``); the newest leg runs
them.
"""

import pytest


def pytest_collection_modifyitems(items):
  for item in items:
    if "/tests/experiments/studies/" in str(item.fspath):
      item.add_marker(pytest.mark.study_smoke)
