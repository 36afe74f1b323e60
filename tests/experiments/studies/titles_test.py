"""Each study's results page is titled from one numbered registry."""

import os
import re

from experiments import studies

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
RESULTS = os.path.join(REPO, "experiments", "results")


def _first_line(name):
  with open(os.path.join(RESULTS, name, "results.md")) as f:
    return f.readline().rstrip("\n")


def _epochs(name):
  with open(os.path.join(RESULTS, name, "results.md")) as f:
    return int(re.search(r"batch \d+, (\d+) epochs", f.read()).group(1))


def test_every_study_results_page_starts_with_its_registered_title():
  seen = {}
  for name in sorted(os.listdir(RESULTS)):
    if not os.path.isfile(os.path.join(RESULTS, name, "results.md")):
      continue
    if name.startswith("gaf_cifar"):
      expected = studies.title("gaf_cifar", _epochs(name))
    elif name in studies.TITLES:
      expected = studies.title(name)
    else:
      continue  # not a study (accelerator runs, benchmarks)
    assert _first_line(name) == "# " + expected, name
    seen[name] = expected
  # Two runs of study 1 (3 and 10 epochs) have distinct titles.
  assert seen["gaf_cifar"] != seen["gaf_cifar_10_epochs"]
  assert len(set(seen.values())) == len(seen)
  assert set(studies.TITLES) <= {n.replace("_10_epochs", "") for n in seen}


def test_the_studies_are_numbered_one_to_n_in_order():
  numbers = [int(re.match(r"Study (\d+):", t).group(1))
             for t in studies.TITLES.values()]
  assert numbers == list(range(1, len(numbers) + 1))


def test_the_guides_table_lists_the_studies_in_their_order():
  with open(os.path.join(REPO, "docs", "guides", "studies.md")) as f:
    text = f.read()
  rows = re.findall(r"^\| (\d+)\. .*?\| `python -m experiments\.studies\.(\w+)",
                    text, re.M)
  assert [int(n) for n, _ in rows] == list(range(1, len(rows) + 1))
  for number, name in rows:
    assert studies.TITLES[name].startswith(f"Study {number}:"), name
  assert len(rows) == len(studies.TITLES)
