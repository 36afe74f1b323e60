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
# Types go with each documented argument ("Parameters" and "Returns"), as
# optax's and Flax's sites show them; the signature line stays short (optax's
# and jax's aliases expand to long unions there).
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
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
  """A field whose default is a function from elsewhere (``activation``).

  Anything else is autodoc's own decision (``None``): it leaves out private
  and special members and what ``members`` does not ask for.
  """
  del app, name, skip, options
  module = getattr(obj, "__module__", "") or ""
  if what == "class" and callable(obj) and not module.startswith("gaf_optax"):
    return True
  return None


def _public_name(value):
  """``jax.nn.silu`` for the function, ``jax.numpy.float32`` for the type."""
  import importlib  # pylint: disable=g-import-not-at-top
  name = getattr(value, "__name__", None)
  if not isinstance(name, str):
    return None
  for namespace in ("jax.nn", "jax.numpy", "gaf_optax.nn", "gaf_optax",
                    "gaf_optax.training", "flax.linen", "optax",
                    "optax.losses"):
    try:
      module = importlib.import_module(namespace)
    except ImportError:
      continue
    if getattr(module, name, None) is value:
      return f"{namespace}.{name}"
  return None


class _Shown:
  """A default value shown by its public name in a signature."""

  def __init__(self, text):
    self.text = text

  def __repr__(self):
    return self.text


def _readable_signature(app, what, name, obj, options, signature,
                        return_annotation):
  """Real signatures for NNX and Linen modules, defaults by public name.

  NNX modules' and variables' metaclass hides ``__init__`` behind
  ``(*args, **kwargs)``;
  Linen's dataclass fields show ``parent``, which users never pass, and
  function defaults print as ``<PjitFunction of <function silu>>``.
  """
  del app, name, options
  import inspect  # pylint: disable=g-import-not-at-top
  if what not in ("class", "function", "method") or signature is None:
    return None
  target = obj
  drop = set()
  if what == "class":
    try:
      from flax import linen, nnx  # pylint: disable=g-import-not-at-top
    except ImportError:
      return None
    if isinstance(obj, type) and (issubclass(obj, nnx.Module) or
                                  signature == "(*args, **kwargs)"):
      target = obj.__init__
      drop = {"self"}
    elif isinstance(obj, type) and issubclass(obj, linen.Module):
      drop = {"parent"}
    elif "<" not in signature:
      return None
  elif "<" not in signature:
    return None
  elif what == "method":
    drop = {"self", "cls"}  # autodoc shows methods without them
  try:
    sig = inspect.signature(target)
  except (TypeError, ValueError):
    return None
  params = []
  for p in sig.parameters.values():
    if p.name in drop or type(p.default).__name__ == "_Sentinel":
      continue  # Linen's ``parent``: set by Flax, never by a user
    default = p.default
    if default is not p.empty:
      shown = _public_name(default)
      if shown is not None:
        default = _Shown(shown)
    params.append(p.replace(default=default, annotation=p.empty))
  text = str(sig.replace(parameters=params,
                         return_annotation=inspect.Signature.empty))
  return text, return_annotation


def setup(app):
  app.connect("include-read", _rewrite_links)
  app.connect("autodoc-process-docstring", _own_docstring_only)
  app.connect("autodoc-skip-member", _skip_foreign_defaults)
  app.connect("autodoc-process-signature", _readable_signature)
