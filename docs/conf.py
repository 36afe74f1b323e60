"""Sphinx configuration of the gaf_optax documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are
errors); ``-b doctest`` runs the pages' examples.
"""

import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "gaf_optax"
author = "the gaf_optax authors"
copyright = "2026, the gaf_optax authors"  # pylint: disable=redefined-builtin

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
# The docstrings' Args say in words what each argument accepts; the
# annotations (optax's and jax's aliases expand to long unions) would repeat
# it less readably.
autodoc_typehints = "none"
doctest_test_doctest_blocks = ""  # docstring examples run under pytest
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_book_theme"
html_title = "gaf_optax"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
napoleon_use_ivar = True  # "Attributes:" as fields, not duplicate objects
# Heading levels inside the READMEs and results files that pages include
# are theirs (a README's "###" study under a page's title).
suppress_warnings = ["myst.header"]

# Links in the included READMEs and results files point to repository
# files; on the site they point to the pages that hold those files.
_LINKS = [
    (re.compile(r"\]\((?:\.\./)?docs/methods/([a-z_]+)\.md\)"),
     r"](/methods/\1.md)"),
    (re.compile(r"\]\((?:experiments/)?results/([a-z0-9_]+)/results\.md\)"),
     r"](/guides/studies/\1.md)"),
    (re.compile(r"\]\(experiments/README\.md#([a-z0-9-]+)\)"),
     r"](/guides/studies.md#\1)"),
]


def _rewrite_links(app, relative_path, parent_docname, content):
  del app, relative_path, parent_docname
  text = content[0]
  for pattern, repl in _LINKS:
    text = pattern.sub(repl, text)
  content[0] = text


def _own_docstring_only(app, what, name, obj, options, lines):
  """Data objects (dicts, tuples) would show their type's docstring."""
  del app, name, options
  type_doc = type(obj).__doc__
  if (what in ("data", "attribute") and not callable(obj) and lines
      and isinstance(type_doc, str)
      and "\n".join(lines).strip() == type_doc.strip()):
    lines.clear()


def _skip_foreign_defaults(app, what, name, obj, skip, options):
  """A field whose default is a function from elsewhere (``activation``)."""
  del app, name, options
  module = getattr(obj, "__module__", "") or ""
  if what == "class" and callable(obj) and not module.startswith("gaf_optax"):
    return True
  return skip


def setup(app):
  app.connect("include-read", _rewrite_links)
  app.connect("autodoc-process-docstring", _own_docstring_only)
  app.connect("autodoc-skip-member", _skip_foreign_defaults)
