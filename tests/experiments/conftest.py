"""Every test under tests/experiments carries the ``experiments`` marker.

They check experiments/ (studies, benchmarks, configs, the quickstart and
main.py), not the library's lower dependency bounds, and take about half of
the suite's time on a 2-core CPU, so ``.ci/run``'s floor leg deselects them
(``-m "not experiments"``); the newest leg runs them.
"""

import pytest


def pytest_collection_modifyitems(items):
  for item in items:
    if "/tests/experiments/" in str(item.fspath):
      item.add_marker(pytest.mark.experiments)
