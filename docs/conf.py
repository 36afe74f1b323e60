"""Sphinx configuration of the gaf_optax documentation site.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are
errors); ``-b doctest`` runs the pages' examples.
"""

import os
import posixpath
import re
import sys

from docutils import nodes

sys.path.insert(0, os.path.abspath(".."))

project = "gaf_optax"
author = "the gaf_optax authors"
copyright = "2026, the gaf_optax authors"  # pylint: disable=redefined-builtin


def _package_version():
  """The version in ``pyproject.toml``: the one place it is written.

  The checkout's file, not the installed metadata, so a site built from a
  checkout shows that checkout's version even before it is reinstalled.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                      "pyproject.toml")
  with open(path, encoding="utf-8") as f:
    text = f.read()
  project_table = text.split("[project]", 1)[1].split("\n[", 1)[0]
  match = re.search(r'^version\s*=\s*"([^"]+)"', project_table, re.M)
  if match is None:
    raise RuntimeError(f"no [project] version in {path}")
  return match.group(1)


release = version = _package_version()

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Links into optax's, JAX's, Flax's, NumPy's and Python's documentation.
# Intersphinx fetches each site's objects.inv when the build starts; offline
# (this project's machines and CI have no internet) that fetch fails and a
# -W build stops on the warning.  So the links are made only when asked for:
# GAF_OPTAX_DOCS_ONLINE=1, or on Read the Docs (which sets READTHEDOCS=True).
# The offline build leaves those names as plain text, as before.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "jax": ("https://docs.jax.dev/en/latest/", None),
    "flax": ("https://flax.readthedocs.io/en/latest/", None),
    "optax": ("https://optax.readthedocs.io/en/latest/", None),
}
ONLINE = (os.environ.get("GAF_OPTAX_DOCS_ONLINE") == "1"
          or os.environ.get("READTHEDOCS", "").lower() == "true")
if ONLINE:
  extensions.append("sphinx.ext.intersphinx")

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
html_title = f"gaf_optax {release}"
# No repository button: the project has no public repository URL yet
# (pyproject.toml has no [project.urls]); add ``repository_url`` and
# ``use_repository_button`` here when it has one.
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    # One search button, the sidebar's (the book theme's place for it); the
    # PyData header's persistent copy would add a second in an empty bar.
    "navbar_persistent": [],
}
html_static_path = ["_static"]
# Wide tables scroll or wrap inside the text column; plots link to their
# full-size file (see ``_link_images_to_full_size``).
html_css_files = ["custom.css"]
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


def _link_images_to_full_size(app, doctree, docname):
  """Wraps every included image in a link to its full-size file.

  The text column is about 690 px wide at 1280 px, so a 2400 px plot is
  shown squeezed; the link opens it at full size.  Sphinx links only images
  given a ``width``, ``height`` or ``scale`` (``html_scaled_image_link``);
  ours have none, so this does it for all of them, to the copy the HTML
  builder puts in ``_images/``.  An image already inside a link is left.
  """
  builder = app.builder
  if builder.format != "html":
    return
  from sphinx.util.osutil import relative_uri  # pylint: disable=g-import-not-at-top
  images = relative_uri(builder.get_target_uri(docname), "_images")
  for node in list(doctree.findall(nodes.image)):
    if isinstance(node.parent, nodes.reference):
      continue
    uri = node["uri"]
    if uri in app.env.images:
      target = posixpath.join(images, app.env.images[uri][1])
    elif "://" in uri:
      target = uri
    else:
      continue
    reference = nodes.reference("", "", internal="://" not in uri,
                                refuri=target, classes=["image-reference"])
    node.replace_self(reference)
    reference.append(node)


def setup(app):
  app.connect("include-read", _rewrite_links)
  app.connect("doctree-resolved", _link_images_to_full_size)
  app.connect("autodoc-process-docstring", _own_docstring_only)
  app.connect("autodoc-skip-member", _skip_foreign_defaults)
  app.connect("autodoc-process-signature", _readable_signature)
