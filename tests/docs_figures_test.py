"""Every result figure the prose quotes is in the results file it cites.

The studies and the quickstart write their results files
(``experiments/results/<name>/results.md``); the pages quote them. This test
finds the quoted figures in the Markdown (``docs/**/*.md`` except the API
reference and the benchmarks page, ``README.md``, ``experiments/README.md``)
and looks each one up in the results files its paragraph cites, so a re-run
that changes a number fails here until the text is updated.

What counts as a quoted figure (our rules):

- ``A +- B`` (mean +- std): the whole string must be in the file.
- A number followed by ``%``, with the numbers chained to it by ``/``,
  ``vs``, ``-``, ``to``, ``and``, ``or``, ``,`` or ``..`` (``44.5 / 44.6 vs
  43.7%``, ``96-98%``): each must be in the file, as written or as the
  rounding of a file number with more decimals (``19%`` for ``18.9``).
- In a table row, every decimal number (``95.9 / 97.5 / diverged``) outside
  the first column and outside columns that name a setting (``lr``,
  ``backward_exponent, max_ratio``, ...).
- ``N points`` (a difference): ``N`` must be ``|a - b|`` or a spread ``b``
  of figures traced in the same paragraph, at ``N``'s precision; a
  difference in words (``one to two points``, ``within a point``) is an
  error: write it in digits, next to the figures it is the difference of.

Exempt: fenced code, inline code spans, directives, link targets and
HTML comments; numbers that are not results (``5%`` for ``max_ratio=1.05``)
are listed in ``ALLOWED`` with the reason. The files a paragraph cites: a
link or path to a study (``studies/anact.md``, ``experiments/results/anact``),
``study N`` / ``Study N`` in the paragraph or its section heading, and
``quickstart`` (its three results files); a paragraph that cites none is
checked against its page's files in ``PAGES``.
"""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(__file__))
RESULTS = os.path.join(REPO, "experiments", "results")

pytestmark = pytest.mark.docs

STUDIES = {  # study number -> results folder
    "1": ["gaf_cifar", "gaf_cifar_10_epochs"], "2": ["vanishing"],
    "3": ["gaaf"], "4": ["anact"], "5": ["amplification"], "6": ["theory"],
    "7": ["anact_robustness"], "8": ["activations_digits"]}
QUICKSTART = ["quickstart", "quickstart_digits28", "quickstart_shapes28"]

# Pages checked, and the results their uncited paragraphs draw on.
PAGES = {
    "README.md": QUICKSTART,
    "experiments/README.md": [],
    "docs/index.md": QUICKSTART,
    "docs/getting_started.md": QUICKSTART,
    "docs/guides/which_method.md": [],
    "docs/guides/studies.md": [],
    "docs/guides/flax.md": ["activations_digits"],
    "docs/guides/optax.md": [],
    "docs/guides/training.md": [],
    "docs/guides/data.md": [],
    "docs/methods/index.md": [],
    "docs/methods/gaf.md": [],
    "docs/methods/gaaf.md": [],
    "docs/methods/anact.md": [],
    "docs/methods/amplification.md": [],
    "docs/changelog.md": [],
}
# Not checked here: the API reference (docstrings) and the benchmarks page
# (its figures are timings of the benchmark scripts, not study results).
NOT_CHECKED = {"docs/guides/benchmarks.md"}

# (page, figure) -> why it is not a result.
ALLOWED = {
    ("docs/methods/anact.md", "0.1"): "max_step=0.001 as a percentage",
    ("docs/methods/anact.md", "5"): "max_ratio=1.05 as a percentage",
    ("docs/guides/flax.md", "0.1"): "max_step=0.001 as a percentage",
    ("docs/guides/flax.md", "5"): "max_ratio=1.05 as a percentage",
    ("docs/guides/which_method.md", "5"): "max_ratio=1.05 as a percentage",
    ("docs/guides/studies.md", "5"): "max_ratio=1.05 as a percentage",
    ("docs/guides/studies.md", "70"): "Swish's variance gain at N(0, 1)",
    ("docs/guides/studies.md", "50"): "a threshold the table counts by",
    ("docs/methods/anact.md", "20"): "study 7's collapse threshold",
    ("experiments/README.md", "20"): "an assumed cost of vmapped seeds",
    ("experiments/README.md", "50"): "an assumed cost of vmapped seeds",
}

NUM = r"\d+(?:\.\d+)?"
JOIN = r"\s*(?:/|vs\.?|-|–|to|and|or|,|\.\.)\s*"
SETTING_COLUMN = re.compile(
    r"^(lr|init|arm|method|activation|config|dataset|depth|optimizer|rule|"
    r"kappa|problem|measure|backward_exponent|study|command|seeds|file|"
    r"field|name|arm, lr|init, lr)\b", re.I)
# A difference in accuracy points, told from "7 points" (amplification
# points) by the words around it.
_AMOUNT = (r"(?:{n}(?:\s*(?:-|to)\s*{n})?|(?:one|two|three|four|five|a)(?:\s+to\s+(?:one|two|three|"
           r"four|five))?)")
_BEFORE = (r"(?:within|at most|by|costs?|los[et]s?|gain(?:s|ed)?|lift(?:s|ed)?|"
           r"up to|are|about|than|less than)")
_AFTER = (r"(?:above|below|over|under|higher|lower|better|worse|more|less|"
          r"from|of each)")
POINTS = re.compile(
    rf"(?:\b{_BEFORE}\s+({_AMOUNT.format(n=NUM)})\s+points?\b"
    rf"|\b({_AMOUNT.format(n=NUM)})\s+points?\s+{_AFTER}\b)", re.I)


def _strip(text):
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
  return text


def _paragraphs(text):
  """(section heading, paragraph text, is table) in page order."""
  heading = ""
  for block in re.split(r"\n\s*\n", _strip(text)):
    lines = block.strip().splitlines()
    if not lines:
      continue
    if lines[0].startswith("#"):
      heading = lines[0]
      lines = lines[1:]
    if not lines:
      continue
    yield heading, "\n".join(lines)


def _cited(paragraph, heading):
  """Results folders a paragraph cites."""
  found = set()
  for part in (paragraph, heading):
    for name in re.findall(
        r"(?:studies/|experiments/results/|experiments\.studies\.)(\w+)",
        part):
      if os.path.isdir(os.path.join(RESULTS, name)):
        found.add(name)
    for number in re.findall(r"\b[Ss]tud(?:y|ies) (\d)\b", part):
      found.update(STUDIES.get(number, []))
    for number in re.findall(r"\b[Ss]tudies (?:\d, )*\d,? and (\d)\b", part):
      found.update(STUDIES.get(number, []))
    if re.search(r"\bquickstart\b", part, re.I):
      found.update(QUICKSTART)
  return found


def _file_numbers(names):
  text = ""
  for name in names:
    path = os.path.join(RESULTS, name, "results.md")
    if os.path.exists(path):
      text += open(path).read() + "\n"
  return text, set(re.findall(NUM, text))


def _in_file(figure, file_text, file_numbers):
  if "+-" in figure:
    return figure in " ".join(file_text.split())
  if figure in file_numbers:
    return True
  decimals = len(figure.split(".")[1]) if "." in figure else 0
  return any(
      len(n.split(".")[1] if "." in n else "") > decimals
      and f"{float(n):.{decimals}f}" == figure for n in file_numbers)


def _table_figures(paragraph):
  """Figures of a results table (``+-`` in a cell, or accuracy/% columns)."""
  rows = [r for r in paragraph.splitlines() if r.startswith("|")]
  if len(rows) < 3:
    return []
  header = [c.strip() for c in rows[0].strip("|").split("|")]
  if not ("+-" in paragraph or re.search(r"%|\bacc", rows[0])):
    return _prose_figures(paragraph)[0]  # a table of settings
  figures = []
  for row in rows[2:]:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    for col, cell in enumerate(cells[1:], 1):
      name = header[col] if col < len(header) else ""
      if SETTING_COLUMN.match(name):
        continue
      cell = re.sub(r"`[^`]*`", "", cell)
      cell = re.sub(r"\]\([^)]*\)", "]", cell)
      figures += re.findall(rf"{NUM} \+- {NUM}", cell)
      cell = re.sub(rf"{NUM} \+- {NUM}", "", cell)
      figures += re.findall(r"\d+\.\d+", cell)
  return figures


def _prose_figures(paragraph):
  """(figures to trace, 'N points' claims, differences in words)."""
  text = re.sub(r"`[^`]*`", " ", paragraph)
  text = re.sub(r"\]\([^)]*\)", "]", text)
  text = re.sub(r"\{\w+\}", " ", text)
  text = " ".join(text.split())
  figures = re.findall(rf"{NUM} \+- {NUM}", text)
  rest = re.sub(rf"({NUM}) \+- {NUM}", r"\1", text)
  for group in re.finditer(rf"((?:{NUM}{JOIN})*){NUM}\s?%", rest):
    figures += re.findall(NUM, group.group(0))
  points, words = [], []
  for match in POINTS.finditer(text):
    amount = match.group(1) or match.group(2)
    (points if re.search(r"\d", amount) else words).append(
        match.group(0))
  return figures, points, words


def _is_difference(claim, figures):
  values = []
  for f in figures:
    values += [float(x) for x in re.findall(NUM, f)]
  decimals = len(claim.split(".")[1]) if "." in claim else 0
  target = float(claim)
  tolerance = 0.5 * 10 ** -decimals + 1e-9
  if any(abs(v - target) <= tolerance for v in values):
    return True  # a quoted spread
  return any(abs(abs(a - b) - target) <= tolerance
             for a in values for b in values)


_USED = set()


def _check_page(page):
  text = open(os.path.join(REPO, page)).read()
  problems, traced = [], 0
  for heading, paragraph in _paragraphs(text):
    names = _cited(paragraph, heading) or set(PAGES[page])
    file_text, file_numbers = _file_numbers(names)
    if paragraph.lstrip().startswith("|"):
      figures, points, words = _table_figures(paragraph), [], []
    else:
      figures, points, words = _prose_figures(paragraph)
    where = " ".join(paragraph.split())[:90]
    for figure in figures:
      if (page, figure) in ALLOWED:
        _USED.add((page, figure))
        continue
      traced += 1
      if not _in_file(figure, file_text, file_numbers):
        problems.append(f"{page}: {figure!r} not in {sorted(names)} "
                        f"results ({where!r})")
    for claim in points:
      traced += 1
      if not all(_is_difference(n, figures) for n in re.findall(NUM, claim)):
        problems.append(f"{page}: {claim!r} is no difference of the "
                        f"paragraph's figures ({where!r})")
    for words_ in words:
      problems.append(f"{page}: {words_!r}: write the difference in digits, "
                      f"with its figures ({where!r})")
  return problems, traced


def test_every_page_with_figures_is_listed():
  pages = {os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, "docs", "**", "*.md"), recursive=True)}
  pages = {p for p in pages if not p.startswith(os.path.join("docs", "api"))
           and not p.startswith(os.path.join("docs", "guides", "studies",
                                             ""))
           and not p.startswith(os.path.join("docs", "_build"))}
  assert pages - NOT_CHECKED <= set(PAGES), sorted(pages - set(PAGES))


@pytest.mark.parametrize("page", sorted(PAGES))
def test_quoted_figures_are_in_the_cited_results(page):
  problems, _ = _check_page(page)
  assert not problems, "\n".join(problems)


def test_every_allowed_number_is_still_quoted():
  for page in PAGES:
    _check_page(page)
  assert set(ALLOWED) <= _USED, sorted(set(ALLOWED) - _USED)


def test_the_check_sees_figures_and_catches_a_stale_one(tmp_path):
  # The rules have teeth: the studies page quotes many figures, and a figure
  # that no results file holds is reported.
  problems, traced = _check_page("docs/guides/studies.md")
  assert traced > 100, traced
  stale = ("### Study 4: x\n\nNSwish 95.9 +- 0.6% and 97.5%, "
           "1.3 points below, within a point of each.\n")
  page = tmp_path / "stale.md"
  page.write_text(stale)
  PAGES[str(page)] = []
  try:
    problems, traced = _check_page(str(page))
  finally:
    del PAGES[str(page)]
  assert traced == 4, traced  # 95.9 +- 0.6, 95.9, 97.5, 1.3 points
  assert len(problems) == 5, problems
  assert "'95.9 +- 0.6' not in ['anact']" in problems[0], problems
  assert "'1.3 points below' is no difference" in problems[3], problems
  assert "'within a point': write the difference" in problems[4], problems
