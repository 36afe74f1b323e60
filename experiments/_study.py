"""Small helpers shared by the ``experiments.study_*`` scripts."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import numpy as np


def command(module: str, argv) -> str:
  """The command line that ran ``module`` (``argv`` None: ``sys.argv``)."""
  args = sys.argv[1:] if argv is None else argv
  return " ".join(["python -m", module, *map(shlex.quote, args)])


def mean_std(values, decimals: int) -> str:
  """``mean +- std`` over seeds, or how many runs were not finite."""
  values = np.asarray(values, np.float64)
  if not np.all(np.isfinite(values)):
    return f"diverged ({int(np.sum(~np.isfinite(values)))}/{values.size})"
  return f"{values.mean():.{decimals}f} +- {values.std():.{decimals}f}"


def table(header, rows) -> list[str]:
  """A markdown table's lines."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


def write(out: str, markdown: str, results: dict) -> None:
  """Writes ``results.md`` and ``results.json`` to ``out``."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown.rstrip() + "\n")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, default=_jsonable)


def _jsonable(x):
  if isinstance(x, (np.ndarray, np.generic)):
    return x.tolist()
  if hasattr(x, "__array__"):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def parser(doc: str, default_out: str, *, seeds: int = 3,
           data: bool = False) -> argparse.ArgumentParser:
  """The arguments every study takes: ``--smoke``, ``--seeds``, ``--out``
  (and ``--data`` for the CIFAR studies)."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--smoke", action="store_true",
                 help="a tiny version in seconds (for tests)")
  p.add_argument("--seeds", type=int, default=seeds)
  p.add_argument("--out", default=default_out)
  if data:
    from experiments import _cifar  # pylint: disable=import-outside-toplevel
    p.add_argument("--data", default=_cifar.DEFAULT_DATA,
                   help="a gaf_optax.data name (default: the shared "
                   "CIFAR-10 JPEG archive)")
  return p
