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
  _check_api_pages(tmp_path / "html" / "api" / "_autosummary")
  _check_site(tmp_path / "html")
  doctest = _sphinx("doctest", tmp_path)
  assert doctest.returncode == 0, (doctest.stdout + doctest.stderr)[-5000:]
  output = (tmp_path / "doctest" / "output.txt").read_text()
  assert re.search(r"\b0 failures in tests", output), output[-2000:]
  assert not re.search(r"^\s+0 tests", output, re.M), output[-2000:]


def _check_site(html):
  """What a reader sees on every page: the stylesheet, links, version."""
  version = re.search(r'^version = "([^"]+)"',
                      open(os.path.join(REPO, "pyproject.toml")).read(),
                      re.M).group(1)
  index = (html / "index.html").read_text()
  # The version, from pyproject.toml, in the sidebar's title and the tab's.
  assert f'logo__title">gaf_optax {version}<' in index, index[:3000]
  assert re.search(rf"<title>[^<]*gaf_optax {re.escape(version)}", index)
  # One search field (the sidebar's); the PyData header holds nothing, so
  # there is no empty top bar with a second search button.
  assert index.count("search-button-field") == 1, index.count(
      "search-button-field")
  header = re.search(r'<header id="pst-header"[^>]*>(.*?)</header>', index,
                     re.S)
  assert header is None or not header.group(1).strip(), header.group(1)
  # No repository button: the project has no repository URL to point to.
  assert "repository-button" not in index
  assert (html / "_static" / "custom.css").exists()
  images = 0
  for page in html.rglob("*.html"):
    if "_static" in page.parts:
      continue
    text = page.read_text()
    assert '_static/custom.css' in text, page
    # Every included image links to its full-size file in _images/ (the
    # theme's own icons, e.g. the module index's, are not included images).
    for match in re.finditer(r'<img [^>]*src="([^"]*_images/[^"]+)"', text):
      images += 1
      src = match.group(1)
      before = text[:match.start()].rstrip()
      assert re.search(r'<a class="[^"]*image-reference[^"]*" href="'
                       + re.escape(src) + r'">$', before), (page, src)
      assert (page.parent / src).resolve().is_file(), (page, src)
  assert images >= 15, images  # the studies' plots


def test_intersphinx_is_off_offline_and_its_mapping_is_well_formed(
    monkeypatch):
  """Offline builds (here, CI) must not fetch; online ones link the five."""
  import runpy  # pylint: disable=g-import-not-at-top
  conf = os.path.join(DOCS, "conf.py")
  for name in ("GAF_OPTAX_DOCS_ONLINE", "READTHEDOCS"):
    monkeypatch.delenv(name, raising=False)
  offline = runpy.run_path(conf)
  assert "sphinx.ext.intersphinx" not in offline["extensions"]
  mapping = offline["intersphinx_mapping"]
  assert set(mapping) == {"python", "numpy", "jax", "flax", "optax"}
  for name, target in mapping.items():
    assert isinstance(target, tuple) and len(target) == 2, (name, target)
    url, inventory = target
    assert re.fullmatch(r"https://[a-z0-9.-]+/[\w./-]*/", url), (name, url)
    assert inventory is None, (name, inventory)
  for name, value in (("GAF_OPTAX_DOCS_ONLINE", "1"),
                      ("READTHEDOCS", "True")):
    with monkeypatch.context() as env:
      env.setenv(name, value)
      online = runpy.run_path(conf)
    assert "sphinx.ext.intersphinx" in online["extensions"], name
  assert offline["release"] == re.search(
      r'^version = "([^"]+)"',
      open(os.path.join(REPO, "pyproject.toml")).read(), re.M).group(1)


def test_results_commands_name_only_paths_inside_the_repository():
  """A reader copies the command a results page shows; it must run here."""
  results = os.path.join(REPO, "experiments", "results")
  checked = 0
  for study in sorted(os.listdir(results)):
    path = os.path.join(results, study, "results.md")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      text = f.read()
    # Nowhere on the page (commands, data lines, lists of runs): a scratch
    # folder or the machine's shared data outside the checkout.
    assert "../shared" not in text and "/tmp/" not in text, study
    for command in re.findall(r"^Command: `([^`]*)`", text, re.M):
      checked += 1
      for word in command.split():
        path_part = word.split(":", 1)[-1]
        assert not path_part.startswith(("/", "..", "~")), (study, command)
  assert checked >= 8, checked


def _check_api_pages(folder):
  """Members, signatures and types on the API pages read as a user needs."""
  signatures = {}
  for page in folder.glob("*.html"):
    text = page.read_text()
    # No private or special members, only the documented ``__init__``.
    private = set(re.findall(r'id="gaf_optax[\w.]*\.(_\w+)"', text))
    assert private <= {"__init__"}, (page.name, private)
    for obj, body in re.findall(
        r'<dt class="sig sig-object py" id="([\w.]+)">(.*?)</dt>', text,
        re.S):
      signatures[obj] = " ".join(re.sub(r"<[^>]+>", "", body).split())
  assert len(signatures) > 100, len(signatures)
  for obj, sig in signatures.items():
    if re.match(r"[\w.]+ = ", sig):
      continue  # a data object's value, e.g. ResNet18's functools.partial
    # Defaults by name, not repr: no "<function ...>", "<PjitFunction ...>",
    # Linen's parent sentinel, or NNX's metaclass "(*args, **kwargs)".
    assert "&lt;" not in sig and "<" not in sig, (obj, sig)
    assert "parent=" not in sig, (obj, sig)
    assert "(*args, **kwargs)" not in sig, (obj, sig)
  assert "activation=jax.nn.silu" in signatures["gaf_optax.nn.NSwish"]
  assert signatures["gaf_optax.nnx.NSwish"].startswith(
      "class gaf_optax.nnx.NSwish(num_features=None")
  # Types with the arguments: sgd_gaf's learning rate takes a schedule.
  sgd_gaf = (folder / "gaf_optax.sgd_gaf.html").read_text()
  params = re.sub(r"<[^>]+>", "", sgd_gaf.split("Parameters", 1)[1])
  assert re.search(r"learning_rate \(float \|[^)]*Callable", params), (
      params[:500])


def test_the_pages_link_relatively_so_they_also_work_on_a_code_host():
  absolute = []
  for folder, _, files in os.walk(DOCS):
    if "_build" in folder or "_autosummary" in folder:
      continue
    for name in files:
      if name.endswith(".md"):
        path = os.path.join(folder, name)
        with open(path) as f:
          absolute += [(os.path.relpath(path, DOCS), m) for m in
                       re.findall(r"\]\((/[^)]*)\)", f.read())]
  assert not absolute
