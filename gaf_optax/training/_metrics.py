"""Metrics to stdout, a JSON-lines file and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import jax

__all__ = ["MetricWriter", "read_records"]


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a JSON-lines metrics file (empty if it does not exist).

  A last line that is not JSON is a write torn by a kill: it is dropped,
  with a note on stderr (a resumed run rewrites the file without it).

  Raises:
    ValueError: naming the file and line for an earlier line that is not
      JSON, or a record without an integer ``step``.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  records = []
  for i, (number, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        print(f"{path}:{number}: dropping a torn last line (a write cut "
              f"short by a kill): {line[:80]!r}", file=sys.stderr)
        break
      raise ValueError(
          f"{path}:{number} is not a JSON record ({e}); the metrics file is "
          "damaged. Move it aside to start a new one.") from e
    if not isinstance(record, dict) or not isinstance(record.get("step"),
                                                      int):
      raise ValueError(
          f"{path}:{number} is not a record with an integer 'step' "
          f"({line[:80].strip()!r}); this file was not written by "
          "gaf_optax.training. Move it aside to start a new one.")
    records.append(record)
  return records


def _clean(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings
  return value


def _clean_tree(value):
  if isinstance(value, list):
    return [_clean_tree(v) for v in value]
  return _clean(value)


def _labels(key: str, names: dict[str, list[str]], n: int) -> list[str]:
  """Entry labels of a telemetry vector: layer, lambda or point names."""
  for prefix, group in (("layer_", "layer"), ("anact_lambda", "anact_lambda"),
                        ("amp_factors", "point"), ("signal_norms", "point")):
    if key.startswith(prefix) and len(names.get(group, ())) == n:
      return list(names[group])
  return [str(i) for i in range(n)]


class MetricWriter:
  """Writes one record per epoch and the kept steps' telemetry.

  Only process 0 writes. Epoch records go to ``metrics.jsonl``, telemetry
  rows to ``telemetry.jsonl`` (vectors as lists), both to TensorBoard
  (vectors as one scalar per entry, ``layer_grad_norm/fc1``).

  Args:
    workdir: directory of the files and the TensorBoard events; None writes
      no files (stdout only).
    tensorboard: also write TensorBoard scalars (needs ``tensorboardX``,
      part of the ``training`` extra; skipped with a note if missing).
    stdout: print each epoch record as one line.
  """

  def __init__(self, workdir: str | None, *, tensorboard: bool = True,
               stdout: bool = True):
    self.path = (None if workdir is None
                 else os.path.join(workdir, "metrics.jsonl"))
    self.telemetry_path = (None if workdir is None
                           else os.path.join(workdir, "telemetry.jsonl"))
    self.active = jax.process_index() == 0
    self.stdout = stdout
    self._tb = None
    if self.active and tensorboard and workdir is not None:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        print("tensorboardX is not installed: no TensorBoard events "
              "(pip install tensorboardX).", file=sys.stderr)
      else:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> list[dict[str, Any]]:
    """Keeps the records up to ``step`` (for a resumed run); returns them.

    Telemetry rows after ``step`` are dropped too.
    """
    if self.path is None:
      return []
    kept = {}
    for path in (self.path, self.telemetry_path):
      kept[path] = [r for r in read_records(path) if r["step"] <= step]
      if self.active and os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
          for r in kept[path]:
            f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)
    return kept[self.path]

  def _append(self, path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def _scalars(self, record: dict[str, Any], names: dict[str, list[str]]):
    for k, v in record.items():
      if k == "step":
        continue
      if isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, record["step"])
      elif isinstance(v, list):
        labels = _labels(k, names, len(v))
        for label, x in zip(labels, v):
          if isinstance(x, (int, float)):
            self._tb.add_scalar(f"{k}/{label}", x, record["step"])
    self._tb.flush()

  def write(self, record: dict[str, Any]) -> None:
    """Writes an epoch record (stdout, ``metrics.jsonl``, TensorBoard)."""
    if not self.active:
      return
    record = {k: _clean(v) for k, v in record.items()}
    if self.stdout:
      print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in record.items()
                     if not isinstance(v, list)), flush=True)
    if self.path is not None:
      self._append(self.path, record)
    if self._tb is not None:
      self._scalars(record, {})

  def write_telemetry(self, row: dict[str, Any],
                      names: dict[str, list[str]]) -> None:
    """Writes one step's telemetry (``telemetry.jsonl``, TensorBoard)."""
    if not self.active:
      return
    row = {k: _clean_tree(v) for k, v in row.items()}
    if self.telemetry_path is not None:
      self._append(self.telemetry_path, row)
    if self._tb is not None:
      self._scalars(row, names)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
