"""Orbax checkpoints of the whole train state, with clear restore errors."""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from gaf_optax.training import _workdir

__all__ = ["Checkpointer"]

_UNFINISHED = ".orbax-checkpoint-tmp"


def _remove_unfinished(directory: str) -> None:
  """Removes the temporary folders of saves that a kill cut short.

  Orbax's own ``cleanup_tmp_directories`` runs in the background and is only
  awaited by the next save, so a run that stops before saving leaves them
  (and its thread fails at interpreter exit); this is synchronous.
  """
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if _UNFINISHED in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class Checkpointer:
  """Saves and restores a pytree of arrays under ``workdir/checkpoints``.

  Orbax writes each checkpoint to a temporary directory and renames it when
  complete, so an interrupted save never becomes the latest step; the
  temporary directories such a save leaves (``*.orbax-checkpoint-tmp*``)
  are removed when the next run opens the directory. A step that is present
  but cannot be read (damaged files) raises a ValueError that names it and
  the earlier steps that are kept; nothing is deleted.

  Args:
    workdir: the run's directory.
    max_to_keep: checkpoints kept (older ones are removed after a newer one
      is complete).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    _remove_unfinished(self.directory)
    self._pending: int | None = None
    self._max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep,
                                             create=True))

  def set_aside_after(self, step: int) -> list[str]:
    """Moves the checkpoints after ``step`` aside, so ``step`` is the latest.

    For a resume from an earlier step (``restore_step``): the later steps
    (damaged, or of the run being redone) would otherwise stay the latest,
    so the redone run's saves of those steps would be skipped as existing
    and the next plain resume would take the old ones again. They go to
    ``WORKDIR/checkpoints.aside/`` (not deleted; see
    :func:`gaf_optax.training._workdir.set_aside_steps`).

    Returns:
      The new paths (process 0; empty elsewhere).
    """
    self.wait()
    later = [s for s in self.all_steps() if s > step]
    if not later:
      return []
    self._manager.close()
    moved = _workdir.set_aside_steps(
        self.workdir, self.directory, later,
        f"Resuming {self.directory} from step {step} (restore_step)")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("gaf_optax set_aside_after")
    self._manager = self._open()
    return moved

  def latest_step(self) -> int | None:
    """The newest step saved, or being saved (complete after :meth:`close`)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    steps = set(self._manager.all_steps())
    if self._pending is not None:
      steps.add(self._pending)
    return sorted(steps)

  def save(self, step: int, tree: Any) -> None:
    """Starts saving ``tree`` as ``step`` and returns without waiting.

    Orbax writes the files in a background thread; the next save, a restore
    and :meth:`close` wait for it, so training does not stall on the file
    system. It is handed a device copy of ``tree``: the train step donates
    the state's buffers, and older Orbax releases (0.11) still read them
    after ``save`` returns (a resumed run then differed from an
    uninterrupted one), so the caller may donate or delete ``tree`` at once.
    """
    if step in self.all_steps():
      return
    tree = jax.tree.map(
        lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)
    self._manager.save(step, args=ocp.args.StandardSave(tree))
    self._pending = step

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is complete on disk."""
    self._manager.wait_until_finished()
    self._pending = None

  def restore(self, target: Any, step: int | None = None) -> tuple[int, Any]:
    """Restores ``step`` (default: the latest) into the structure of target.

    Returns:
      ``(step, tree)``.

    Raises:
      ValueError: if the step does not exist or cannot be read.
    """
    self.wait()
    steps = self.all_steps()
    if step is None:
      step = self.latest_step()
    if step is None or step not in steps:
      raise ValueError(
          f"No checkpoint for step {step} in {self.directory}; available: "
          f"{steps or 'none'}.")
    try:
      tree = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      earlier = [s for s in steps if s < step]
      if earlier:
        remedy = (f"Earlier checkpoints are kept: {earlier}. To resume from "
                  f"one, set restore_step to it (--config.restore_step="
                  f"{earlier[-1]}): the later ones are then set aside in "
                  f"{os.path.join(self.workdir, _workdir.STEPS_ASIDE)}.")
      else:
        remedy = ("There is no earlier checkpoint: move "
                  f"{os.path.join(self.directory, str(step))} aside to start "
                  "anew.")
      raise ValueError(
          f"Checkpoint step {step} in {self.directory} could not be restored "
          f"({type(e).__name__}: {str(e)[:300]}). It is probably damaged or "
          "incomplete (the run's settings were checked against run.json "
          "first; without run.json it may also be a run's with another model "
          f"or optimizer). {remedy}") from e
    return step, tree

  def close(self) -> None:
    """Waits for the save in flight, then releases Orbax's resources."""
    self.wait()
    self._manager.close()
