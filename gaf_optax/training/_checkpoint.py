"""Orbax checkpoints of the whole train state, with clear restore errors."""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from gaf_optax.training import _workdir

__all__ = ["CheckpointWriteError", "Checkpointer"]

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


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a quota, a lost mount).

  The message is one line naming the step, the directory, the cause (Orbax's
  or TensorStore's error, shortened) and the earlier checkpoints, which are
  kept: an unfinished save never replaces them, and its temporary folder is
  removed when the next run opens the directory. The full cause is the
  exception's ``__cause__``.

  Attributes:
    step: the step whose save failed.
    directory: the checkpoint directory.
    kept: the complete checkpoints' steps that remain.
  """

  def __init__(self, message: str, *, step: int | None, directory: str,
               kept: list[int]):
    super().__init__(message)
    self.step = step
    self.directory = directory
    self.kept = kept

  def __str__(self) -> str:
    return self.args[0]


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


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
    try:  # also reports the previous save's failure, found here
      self._manager.save(step, args=ocp.args.StandardSave(tree))
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._pending or step, e) from e
    self._pending = step

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is complete on disk.

    Raises:
      CheckpointWriteError: the save failed (e.g. the disk is full).
    """
    pending, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(pending, e) from e

  def _write_error(self, step: int | None, e: Exception
                   ) -> CheckpointWriteError:
    self._pending = None
    try:
      kept = sorted(s for s in self._manager.all_steps() if s != step)
    except Exception:  # pylint: disable=broad-except
      kept = []
    return CheckpointWriteError(
        f"Could not write the checkpoint of step {step} in {self.directory} "
        f"({_first_line(e)}). The earlier checkpoints are kept: {kept}; free "
        "space (or fix the file system) and run the same command again to "
        "resume from the latest of them.",
        step=step, directory=self.directory, kept=kept)

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
    """Waits for the save in flight, then releases Orbax's resources.

    Raises:
      CheckpointWriteError: the save in flight failed (the resources are
        released even so).
    """
    try:
      self.wait()
    except CheckpointWriteError:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # the same failure again; the first report is the one raised
      raise
    self._manager.close()
