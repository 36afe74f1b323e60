"""The documentation site builds without warnings and its examples run."""

import importlib
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(__file__))
DOCS = os.path.join(REPO, "docs")
PACKAGES = ("gaf_optax", "gaf_optax.nn", "gaf_optax.nnx", "gaf_optax.models",
            "gaf_optax.data", "gaf_optax.training")

pytestmark = pytest.mark.docs


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_lists_every_public_name(package):
  page = open(os.path.join(DOCS, "api", f"{package}.md")).read()
  listed = set(re.findall(r"^   (\w+)$", page, re.M))
  assert listed == set(importlib.import_module(package).__all__)


def _sphinx(builder, out):
  return subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       builder, "-d", str(out / "doctrees"), DOCS, str(out / builder)],
      capture_output=True, text=True, cwd=REPO, check=False)


def test_html_builds_with_warnings_as_errors_and_the_examples_pass(tmp_path):
  html = _sphinx("html", tmp_path)
  assert html.returncode == 0, html.stderr[-5000:]
  index = (tmp_path / "html" / "index.html").read_text()
  assert "Getting started" in index and "Which method should I try?" in index
  api = (tmp_path / "html" / "api" / "_autosummary" /
         "gaf_optax.sgd_gaf.html").read_text()
  assert "SGD_atanMom" in api
  # Included plots were copied: the studies page shows study 7's figure.
  assert (tmp_path / "html" / "_images" / "mechanism.png").exists()
  doctest = _sphinx("doctest", tmp_path)
  assert doctest.returncode == 0, (doctest.stdout + doctest.stderr)[-5000:]
  output = (tmp_path / "doctest" / "output.txt").read_text()
  assert re.search(r"\b0 failures in tests", output), output[-2000:]
  assert not re.search(r"^\s+0 tests", output, re.M), output[-2000:]
