"""What stops a run early without losing work: divergence and preemption.

Two ways a long run ends before its last step, and what :meth:`Trainer.fit`
does for each:

- **Divergence.** The step counts non-finite steps on the device
  (``TrainState.health``); the loop reads the count where it already waits
  for the device (every ``check_every`` steps, before each checkpoint, at
  each epoch's end), so there is no extra host sync per step. More than
  ``skip_nonfinite_steps`` consecutive non-finite steps raise
  :class:`NonFiniteError`, naming the step and the last good checkpoint. A
  state is only saved after the check, and only if all its floating arrays
  are finite, so checkpoint rotation never replaces a good checkpoint with a
  diverged one.
- **Preemption.** SIGTERM (what schedulers send before they evict a job) or
  SIGINT finishes the current step, saves a checkpoint, flushes the metric
  writers and raises :class:`Preempted`. On several processes the step is
  agreed through JAX's preemption sync service
  (``multihost_utils.reached_preemption_sync_point``, which catches SIGTERM
  in every process of a ``jax.distributed`` job): all processes save the
  same step.

Both errors derive from :class:`TrainingStopped`; ``experiments/main.py``
turns them into a non-zero exit status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp

__all__ = [
    "NonFiniteError",
    "Preempted",
    "TrainingStopped",
]


class TrainingStopped(RuntimeError):
  """A run stopped before its last step; what was good is on disk.

  Attributes:
    step: the step at which it stopped (see the subclasses).
    checkpoint: the latest checkpoint's step on disk, None if there is none.
  """

  def __init__(self, message: str, *, step: int, checkpoint: int | None):
    super().__init__(message)
    self.step = step
    self.checkpoint = checkpoint


class NonFiniteError(TrainingStopped):
  """The loss or gradient was non-finite for too many consecutive steps.

  ``step`` is the first step of that streak (as the records count steps);
  ``checkpoint`` the last good checkpoint, from which a run with another
  configuration (a new workdir) can start.
  """


class Preempted(TrainingStopped):
  """A stop signal arrived; the run saved ``step`` and can be resumed.

  Attributes:
    signum: the signal (``signal.SIGTERM``, ``signal.SIGINT``), or None
      when JAX's preemption service of a multi-process job stopped it.
  """

  def __init__(self, message: str, *, step: int, checkpoint: int | None,
               signum: int | None):
    super().__init__(message, step=step, checkpoint=checkpoint)
    self.signum = signum


def _floating(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


@jax.jit
def all_finite(tree) -> jax.Array:
  """True when every floating leaf of ``tree`` is finite (one reduction)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if _floating(x)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# Seconds a stop signal waits for the loop to reach a step boundary.
STOP_GRACE_SECONDS = 120.0


class StopSignals:
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  A context manager around the loop. In one process it installs handlers
  (main thread only; the previous handlers come back on exit), and a second
  signal of the same kind is not caught, so a user can still abort a stuck
  save. In a ``jax.distributed`` job it installs nothing: JAX's preemption
  service catches SIGTERM in each process and :meth:`should_stop` asks it,
  every step, whether all processes have reached the agreed step.

  A signal also arms a watchdog: if the loop then makes no progress for
  ``grace_seconds`` (no step ends and no evaluation batch arrives: a step,
  or the input pipeline, that never ends), the watchdog says so on stderr
  and ends the process with status ``128 + signum`` (``os._exit``: the hung
  thread cannot run any cleanup; the last checkpoint on disk is what a
  resume gets). A stop must end the process, or a scheduler's SIGTERM (and
  ``timeout``'s) would be lost on a hung run. Progress, not total time, so
  a long evaluation or a slow save after the signal is never cut short.
  Two minutes by default: longer than a first compile of the models
  here, and a bound on a hung run.

  Args:
    grace_seconds: the watchdog's wait; default :data:`STOP_GRACE_SECONDS`.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, grace_seconds: float | None = None):
    self.signum: int | None = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    self._grace = (STOP_GRACE_SECONDS if grace_seconds is None
                   else float(grace_seconds))
    self._watchdog: threading.Thread | None = None
    self._done = threading.Event()
    self._last = 0.0

  def __enter__(self) -> "StopSignals":
    if (not self._multiprocess and
        threading.current_thread() is threading.main_thread()):
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._disarm()
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum = signum
    # A second signal of this kind takes the previous (default) action.
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
    self.beat()
    if self._watchdog is None:
      self._watchdog = threading.Thread(target=self._watch, args=(signum,),
                                        daemon=True, name="gaf-optax-stop")
      self._watchdog.start()

  def beat(self) -> None:
    """Notes progress (a step or an evaluation batch) for the watchdog."""
    self._last = time.monotonic()

  def _watch(self, signum: int) -> None:
    while not self._done.wait(min(1.0, self._grace / 4)):
      if time.monotonic() - self._last > self._grace:
        sys.stderr.write(
            f"gaf_optax: {signal.Signals(signum).name} arrived, but the run "
            f"made no progress for {self._grace:g} s (a step or the input "
            "pipeline is stuck); exiting without saving, status "
            f"{128 + signum}.\n")
        sys.stderr.flush()
        os._exit(128 + signum)  # pylint: disable=protected-access

  def _disarm(self) -> None:
    self._done.set()

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (call it at every step)."""
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # the preemption service is off
        return False
    if self.signum is not None:
      self._disarm()  # a step boundary: the stop path takes over
      return True
    return False


def health(state) -> dict[str, int]:
  """``state.health`` on the host, as ints."""
  return {k: int(v) for k, v in jax.device_get(state.health).items()}


def _last(step: int | None, directory: str | None) -> str:
  if step is None:
    return "no checkpoint was saved before it"
  return f"the last good checkpoint is step {step} in {directory}"


def nonfinite_error(h: dict[str, int], *, allowed: int,
                    checkpoint: int | None, directory: str | None
                    ) -> NonFiniteError:
  """The error for a run whose non-finite streak exceeded ``allowed``."""
  ride = (f"more than skip_nonfinite_steps={allowed} consecutive steps"
          if allowed else "skip_nonfinite_steps=0: the run stops at the first")
  return NonFiniteError(
      f"Non-finite loss or gradient from step {h['first']} on ({ride}; "
      f"{h['total']} non-finite steps in all). The run diverged: lower the "
      "learning rate, add clipping, or set skip_nonfinite_steps to ride out "
      "rare bad batches (optax.apply_if_finite). No state after the "
      f"divergence was saved; {_last(checkpoint, directory)}.",
      step=h["first"], checkpoint=checkpoint)


def preempted(step: int, signum: int | None, checkpoint: int | None,
              directory: str | None) -> Preempted:
  what = (signal.Signals(signum).name if signum is not None
          else "a preemption notice")
  saved = (f"saved a checkpoint at step {step} in {directory}; run the same "
           "command again to resume" if directory and checkpoint == step
           else "no workdir, so nothing was saved")
  return Preempted(f"Stopped by {what} after step {step}: {saved}.",
                   step=step, checkpoint=checkpoint, signum=signum)
