"""A run's directory: what a fresh start sets aside, what a resume checks.

``WORKDIR/run.json`` records the settings that give a step its meaning
(the data and its order, the batch size, the model and optimizer config);
a resume that changes any of them is refused, naming them, because the
checkpoint's step count would silently be reinterpreted (a new batch size
makes step 1000 a different point of a different epoch).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax

__all__ = ["check_run_info", "set_aside_outputs"]

RUN_INFO = "run.json"
OUTPUTS = ("metrics.jsonl", "telemetry.jsonl", "tensorboard")


def _normal(value: Any) -> Any:
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def _aside_name(path: str) -> str:
  i = 1
  while os.path.exists(f"{path}.old{i}"):
    i += 1
  return f"{path}.old{i}"


def set_aside_outputs(workdir: str) -> list[str]:
  """Renames the outputs of an earlier run that left no checkpoint.

  A fresh start in such a workdir would otherwise append its records to the
  old ``metrics.jsonl``. ``metrics.jsonl`` becomes ``metrics.jsonl.old1``
  (``.old2`` ... if that exists), likewise ``telemetry.jsonl`` and
  ``tensorboard/``. Only process 0 renames.

  Returns:
    The new names (empty when there was nothing to set aside).
  """
  moved = []
  if jax.process_index() != 0:
    return moved
  for name in OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      new = _aside_name(path)
      os.replace(path, new)
      moved.append(new)
  if moved:
    print(f"{workdir} has outputs of an earlier run but no checkpoint: "
          f"starting anew, the old files are kept as {', '.join(moved)}.",
          file=sys.stderr)
  return moved


def write_run_info(workdir: str, info: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, RUN_INFO)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_normal(info), f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def check_run_info(workdir: str, info: dict[str, Any]) -> None:
  """Refuses to resume a run in ``workdir`` with other step-defining settings.

  Args:
    workdir: the run's directory, which holds a checkpoint.
    info: this run's settings (nested dicts of JSON values).

  Raises:
    ValueError: naming every setting that differs, with both values.
  """
  path = os.path.join(workdir, RUN_INFO)
  if not os.path.exists(path):
    print(f"{path} is missing (a run of an older version?): resuming without "
          "checking that the settings match; writing it now.",
          file=sys.stderr)
    write_run_info(workdir, info)
    return
  with open(path) as f:
    saved = _flat(json.load(f))
  now = _flat(_normal(info))
  diffs = [f"{k}: {saved.get(k, '(absent)')!r} in the checkpointed run, "
           f"{now.get(k, '(absent)')!r} now"
           for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if diffs:
    raise ValueError(
        f"{workdir} holds a checkpoint of a run with other settings, which "
        "would change what its step count means:\n  " + "\n  ".join(diffs) +
        "\nUse a new workdir for the new settings, or set them back to "
        "resume.")
