"""Reading the studies' markdown tables in their smoke tests."""

import re

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def table_rows(text: str, first_cell: str | None = None) -> list[list[str]]:
  """Cells of the markdown table rows (header and separator excluded)."""
  rows = []
  for line in text.splitlines():
    if not line.startswith("| ") or line.startswith("|---"):
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if first_cell is None or cells[0] == first_cell:
      rows.append(cells)
  return rows


def numbers(cell: str) -> list[float]:
  return [float(x) for x in _NUMBER.findall(cell)]
