"""Orbax checkpoints of the whole train state, with clear restore errors."""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

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
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    _remove_unfinished(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(tree))
    self._manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> tuple[int, Any]:
    """Restores ``step`` (default: the latest) into the structure of target.

    Returns:
      ``(step, tree)``.

    Raises:
      ValueError: if the step does not exist or cannot be read.
    """
    steps = self.all_steps()
    if step is None:
      step = self.latest_step()
    if step is None or step not in steps:
      raise ValueError(
          f"No checkpoint for step {step} in {self.directory}; available: "
          f"{steps}.")
    try:
      tree = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      earlier = [s for s in steps if s < step]
      raise ValueError(
          f"Checkpoint step {step} in {self.directory} could not be restored "
          f"({type(e).__name__}: {str(e)[:300]}). It may be damaged or "
          "incomplete, or written by a run with another model or optimizer "
          f"config. Earlier checkpoints are kept: {earlier}. Move "
          f"{os.path.join(self.directory, str(step))} aside to resume from "
          "the previous one, or set config.restore_step.") from e
    return step, tree

  def close(self) -> None:
    self._manager.close()
