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

  Raises:
    ValueError: naming the file and line for a line that is not JSON.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}:{number} is not a JSON record ({e}); the metrics file is "
            "damaged. Move it aside to start a new one.") from e
  return records


def _clean(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings
  return value


class MetricWriter:
  """Writes one record per epoch; only process 0 writes.

  Args:
    workdir: directory of ``metrics.jsonl`` and the TensorBoard events.
    tensorboard: also write TensorBoard scalars (needs ``tensorboardX``,
      part of the ``experiments`` extra; skipped with a note if missing).
    stdout: print each record as one line.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True,
               stdout: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.active = jax.process_index() == 0
    self.stdout = stdout
    self._tb = None
    if self.active and tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        print("tensorboardX is not installed: no TensorBoard events "
              "(pip install tensorboardX).", file=sys.stderr)
      else:
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> list[dict[str, Any]]:
    """Keeps the records up to ``step`` (for a resumed run); returns them."""
    records = [r for r in read_records(self.path) if r["step"] <= step]
    if self.active and os.path.exists(self.path):
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        for r in records:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)
    return records

  def write(self, record: dict[str, Any]) -> None:
    if not self.active:
      return
    record = {k: _clean(v) for k, v in record.items()}
    if self.stdout:
      print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in record.items()), flush=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step":
          self._tb.add_scalar(k, v, record["step"])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
