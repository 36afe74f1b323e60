"""A run's directory: what a fresh start sets aside, what a resume checks.

``WORKDIR/run.json`` records the settings that give a step its meaning
(the data and its order, the batch size, the model and optimizer config)
and a fingerprint of the model and optimizer (:func:`fingerprint`); a
resume that changes any of them is refused, naming them, because the
checkpoint's step count would silently be reinterpreted (a new batch size
makes step 1000 a different point of a different epoch) or its state
restored into another optimizer. A checkpoint without a readable
``run.json`` is not resumed unless its step is named explicitly
(``restore_step``): design choice, as nothing else shows what its steps
mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any

import jax
import numpy as np
import optax

__all__ = ["check_run_info", "fingerprint", "read_run_info",
           "set_aside_outputs", "set_aside_steps"]

RUN_INFO = "run.json"
OUTPUTS = ("metrics.jsonl", "telemetry.jsonl", "tensorboard")
STEPS_ASIDE = "checkpoints.aside"
# Keys of run.json that are not settings but derived from them
# (fingerprint()); "fingerprint.versions" is never compared itself.
FINGERPRINT = "fingerprint"


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


def set_aside_steps(workdir: str, directory: str, steps: list[int],
                    reason: str) -> list[str]:
  """Moves checkpoint steps out of ``directory`` into ``checkpoints.aside``.

  ``checkpoints/63`` becomes ``WORKDIR/checkpoints.aside/63`` (``63.old1``
  ... if that exists), outside the folder Orbax reads, so the step is no
  longer resumed or skipped as saved, and nothing is deleted. Only process
  0 moves; a note on stderr names the new paths.

  Returns:
    The new paths.
  """
  moved = []
  if jax.process_index() != 0 or not steps:
    return moved
  aside = os.path.join(workdir, STEPS_ASIDE)
  os.makedirs(aside, exist_ok=True)
  for step in steps:
    src = os.path.join(directory, str(step))
    if not os.path.exists(src):
      continue
    dest = os.path.join(aside, str(step))
    if os.path.exists(dest):
      dest = _aside_name(dest)
    os.replace(src, dest)
    moved.append(dest)
  if moved:
    print(f"{reason}: the later checkpoints are set aside as "
          f"{', '.join(moved)} (delete them when no longer needed).",
          file=sys.stderr)
  return moved


def read_run_info(workdir: str) -> dict[str, Any] | None:
  """``WORKDIR/run.json`` as a dict; None if there is none.

  Raises:
    ValueError: naming the file, if it cannot be read as a JSON object.
  """
  path = os.path.join(workdir, RUN_INFO)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      info = json.load(f)
    if not isinstance(info, dict):
      raise ValueError(f"a JSON {type(info).__name__}, not an object")
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
    raise ValueError(
        f"{path} cannot be read ({type(e).__name__}: {e}). It records the "
        "settings of the checkpointed run, which a resume checks. Restore it "
        "from a copy; or, if this run's settings are the checkpointed run's, "
        "delete it and resume with restore_step set to the step to resume "
        "(config.restore_step), which writes it anew; or use a new "
        "workdir.") from e
  return info


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


def _digest(*parts) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else str(part).encode())
  return h.hexdigest()[:16]


def _node_names(tree: Any) -> list[str]:
  """The NamedTuple classes of an optax state, in order (nested too)."""
  named = lambda x: isinstance(x, tuple) and hasattr(x, "_fields")
  out = []
  for leaf in jax.tree.leaves(tree, is_leaf=named):
    if named(leaf):
      out.append(type(leaf).__name__)
      out += _node_names(tuple(leaf))
  return out


def _arrays(tree: Any) -> str:
  leaves = jax.tree.leaves(tree)
  size = sum(int(np.prod(x.shape)) for x in leaves)
  shapes = [(jax.tree_util.keystr(k), tuple(x.shape), str(x.dtype))
            for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return f"{len(leaves)} arrays, {size} values, {_digest(shapes)}"


def fingerprint(tx: optax.GradientTransformation, state: Any,
                update_kwargs: dict[str, Any] | None = None
                ) -> dict[str, Any]:
  """What identifies a run's model and optimizer, for ``run.json``.

  Design: a checkpoint holds arrays, not the code that made them, so
  ``Trainer`` records what can be read off any model and any optax
  transformation without knowing its kind:

  - ``params``: the parameters' number, count of values and a digest of
    their paths, shapes and dtypes (another width or depth);
  - ``opt_state``: the NamedTuple classes of the optimizer's state in order
    (``ScaleByAdamState, EmptyState``) and a digest of its arrays (another
    optimizer, momentum on or off, another chain);
  - ``update``: a digest of the jaxpr of ``tx.update`` traced on abstract
    gradients, state and parameters, with the values of the arrays it
    closes over. It catches what changes the computation: the learning
    rate and every other hyperparameter, a schedule's constants, the
    ``apply_if_finite`` wrapper. It is compared only between runs with the
    same JAX and optax versions (``versions``), whose tracing it depends on;
    after an upgrade only ``params`` and ``opt_state`` are checked (a note
    says so).

  Not detected: a transformation whose behaviour depends on Python state
  that tracing does not see (a callback, a value read from a file at each
  call), and, after a JAX or optax upgrade, hyperparameter changes. Changes
  that leave the update's computation equal are accepted by design (e.g. a
  learning rate given as ``0.1`` or as ``jnp.float32(0.1)``).

  Args:
    tx: the run's transformation (as the step calls it).
    state: the train state's shapes (``jax.eval_shape`` of its init), with
      ``params`` and ``opt_state``.
    update_kwargs: extra keyword arguments of ``tx.update`` as abstract
      arrays (e.g. ``layer_stats``).

  Returns:
    ``{"params", "opt_state", "update", "versions"}``, JSON values;
    ``update`` is None if ``tx.update`` could not be traced.

  Example:
    >>> import jax, optax
    >>> params = {"w": jax.ShapeDtypeStruct((3,), jax.numpy.float32)}
    >>> state = {"params": params,
    ...          "opt_state": jax.eval_shape(optax.adam(1e-3).init, params)}
    >>> fingerprint(optax.adam(1e-3), state)["opt_state"].split(";")[0]
    'ScaleByAdamState, EmptyState'
    >>> (fingerprint(optax.adam(1e-3), state)["update"] ==
    ...  fingerprint(optax.adam(1e-2), state)["update"])
    False
  """
  get = (lambda k: state[k]) if isinstance(state, dict) else (
      lambda k: getattr(state, k))
  params, opt_state = get("params"), get("opt_state")
  kwargs = update_kwargs or {}
  try:
    traced = jax.make_jaxpr(lambda g, s, p, kw: tx.update(g, s, p, **kw))(
        params, opt_state, params, kwargs)
    # Function addresses that a parameter may print are not part of it.
    text = re.sub(r"0x[0-9a-fA-F]+", "0x", str(traced))
    consts = [np.asarray(c).tobytes() for c in traced.consts
              if hasattr(c, "shape")]
    update = _digest(text, *consts)
  except Exception:  # pylint: disable=broad-except
    update = None  # not traceable on abstract inputs: not compared
  names = ", ".join(_node_names(opt_state)) or "(no NamedTuple)"
  return {"params": _arrays(params),
          "opt_state": f"{names}; {_arrays(opt_state)}",
          "update": update,
          "versions": {"jax": jax.__version__, "optax": optax.__version__}}


def check_run_info(workdir: str, info: dict[str, Any], *, step: int,
                   explicit: bool = False) -> None:
  """Refuses to resume a run in ``workdir`` with other step-defining settings.

  The settings are compared first; the fingerprint (:func:`fingerprint`),
  which follows from them, is reported only when no setting differs (then
  it names what the settings do not show: another optimizer, width or
  learning rate in a ``Trainer`` of your own), and only its parts present
  in both (a ``run.json`` of an older version has none). Without a
  ``run.json`` the checkpoint is resumed only if its step was asked for
  (``explicit``), and ``run.json`` is then written for this run.

  Args:
    workdir: the run's directory, which holds a checkpoint.
    info: this run's settings (nested dicts of JSON values).
    step: the checkpoint's step that would be resumed (for the messages).
    explicit: the step was named by ``restore_step``.

  Raises:
    ValueError: naming every setting that differs, with both values; or
      for a missing or unreadable ``run.json`` (naming the file).
  """
  path = os.path.join(workdir, RUN_INFO)
  saved = read_run_info(workdir)
  if saved is None:
    if not explicit:
      raise ValueError(
          f"{workdir} holds a checkpoint (step {step}) but no {RUN_INFO}, "
          "which records the settings of the run that saved it, so it cannot "
          "be checked that this run's are the same (another batch size would "
          f"make step {step} another point of another epoch). If they are "
          f"the same, resume it explicitly with restore_step={step} "
          f"(--config.restore_step={step}), which writes {RUN_INFO} anew; "
          "otherwise use a new workdir.")
    print(f"{path} is missing: resuming step {step} as asked "
          "(restore_step) without checking that the settings match; "
          "writing it now.", file=sys.stderr)
    write_run_info(workdir, info)
    return
  saved = _flat(_normal(saved))
  now = _flat(_normal(info))
  prefix = FINGERPRINT + "."
  keys = sorted(set(saved) | set(now))
  settings = [k for k in keys if not k.startswith(prefix)]
  versions = {k: saved.get(k) for k in keys if k.startswith(prefix +
                                                          "versions.")}
  same_versions = versions == {k: now.get(k) for k in versions} and versions
  derived = [k for k in keys if k.startswith(prefix) and
             not k.startswith(prefix + "versions.") and
             k in saved and k in now and saved[k] is not None and
             now[k] is not None and
             (same_versions or k != prefix + "update")]
  diffs = [k for k in settings if saved.get(k) != now.get(k)]
  also = [k for k in derived if saved[k] != now[k]]
  if not diffs:
    diffs, also = also, []
    if not same_versions and f"{prefix}update" in saved:
      print(f"{path} was written with other JAX/optax versions "
            f"({versions}): the optimizer's update is not compared, only "
            "the shapes of the model and optimizer state.", file=sys.stderr)
  if diffs:
    lines = [f"{k}: {saved.get(k, '(absent)')!r} in the checkpointed run, "
             f"{now.get(k, '(absent)')!r} now" for k in diffs]
    extra = f"; and so: {', '.join(also)}" if also else ""
    raise ValueError(
        f"{workdir} holds a checkpoint of a run with other settings (step "
        f"{step}{extra}), which would change what its step count means or "
        "what its state is:\n  " + "\n  ".join(lines) +
        "\nUse a new workdir for the new settings, or set them back to "
        "resume.")
