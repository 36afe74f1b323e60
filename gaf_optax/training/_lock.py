"""One run per workdir: an advisory lock held while a run writes there.

Two runs in one workdir would interleave their records in ``metrics.jsonl``
and rotate each other's checkpoints. :meth:`Trainer.fit` (and
``train_and_evaluate``, before it reads any data) takes
``WORKDIR/lock`` with ``fcntl.flock`` for as long as it runs; a second run
fails at once with :class:`WorkdirLocked`, naming the lock file and the
holder (pid, host, start time, command) that the file records.

Design choices:

- **No stale locks.** The lock is the kernel's ``flock`` on the open file,
  not the file's existence: it is released when the holder's file is
  closed, which the kernel does when the process ends in any way (SIGKILL,
  a crash, an OOM kill). The file itself stays, naming the last holder;
  it is never removed (removing it would let two runs lock two different
  files of one name). So a crashed run never blocks the next one, and there
  is nothing to clean up by hand. On network file systems ``flock`` is as
  good as the server's lock service (NFSv4 and Lustre with ``flock``
  support hold it across clients).
- **Per thread, reentrant.** The same thread may take a lock it holds
  (``train_and_evaluate`` and the ``fit`` inside it); another thread of the
  same process is refused like another process.
- **Multi-process jobs.** In a ``jax.distributed`` job process 0 takes
  ``WORKDIR/lock`` and process ``i > 0`` takes ``WORKDIR/lock.process<i>``,
  so every process of a second job into the same workdir fails at once,
  and a single-process run conflicts with the job's process 0.
- The file descriptor is not inheritable, so data workers (spawned) never
  hold the lock. Where ``fcntl`` does not exist (Windows), no lock is
  taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

try:
  import fcntl
except ImportError:  # pragma: no cover (Windows)
  fcntl = None

__all__ = ["WorkdirLock", "WorkdirLocked", "lock_path"]

LOCK = "lock"

# realpath -> [thread ident, fd, depth] of the locks this process holds.
_held: dict[str, list] = {}
_held_guard = threading.Lock()


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir's lock.

  Attributes:
    path: the lock file.
    holder: what the file says about the holder (pid, host, time, argv),
      ``{}`` if it could not be read.
  """

  def __init__(self, message: str, *, path: str, holder: dict):
    super().__init__(message)
    self.path = path
    self.holder = holder


def lock_path(workdir: str, process_index: int = 0) -> str:
  """The lock file of ``workdir`` for one process of a job."""
  name = LOCK if process_index == 0 else f"{LOCK}.process{process_index}"
  return os.path.join(workdir, name)


def _read_holder(fd: int) -> dict:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 1 << 16).decode() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return "a run whose details could not be read"
  started = holder.get("time")
  when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
          if isinstance(started, (int, float)) else "?")
  argv = " ".join(holder.get("argv") or [])
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
          f"{when}" + (f": {argv}" if argv else ""))


class WorkdirLock:
  """``WORKDIR/lock`` held for a ``with`` block (see the module docstring).

  Args:
    workdir: the run's directory (created if missing).
    process_index: this process's index in a multi-process job.

  Raises:
    WorkdirLocked: on entering, when another process or thread holds it.

  Example:
    >>> import tempfile
    >>> from gaf_optax.training import WorkdirLock, WorkdirLocked
    >>> work = tempfile.mkdtemp()
    >>> with WorkdirLock(work):
    ...   with WorkdirLock(work):  # the same thread: reentrant
    ...     pass
  """

  def __init__(self, workdir: str, *, process_index: int = 0):
    self.path = os.path.abspath(lock_path(workdir, process_index))
    self._key = os.path.realpath(self.path)
    self._locked = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or raises :class:`WorkdirLocked` at once."""
    if fcntl is None or self._locked:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = threading.get_ident()
    with _held_guard:
      held = _held.get(self._key)
      if held is not None:
        if held[0] != me:
          raise self._error(_read_holder(held[1]), "another thread of this "
                            "process")
        held[2] += 1
        self._locked = True
        return
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise self._error(holder, None) from None
      info = {"pid": os.getpid(), "host": socket.gethostname(),
              "time": time.time(), "argv": sys.argv}
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(info).encode(), 0)
      _held[self._key] = [me, fd, 1]
      self._locked = True

  def release(self) -> None:
    """Lets the lock go (the outermost release of this thread)."""
    if not self._locked:
      return
    self._locked = False
    with _held_guard:
      held = _held.get(self._key)
      if held is None:
        return
      held[2] -= 1
      if held[2] == 0:
        del _held[self._key]
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])

  def _error(self, holder: dict, who: str | None) -> WorkdirLocked:
    workdir = os.path.dirname(self.path)
    return WorkdirLocked(
        f"{workdir} is in use by another run ({who or _describe(holder)}; "
        f"lock file {self.path}). Two runs in one workdir would interleave "
        "their metrics and checkpoints: wait for it to end, or use another "
        "workdir. The lock is released when its holder exits in any way, "
        "so this is not a leftover of a crashed run.",
        path=self.path, holder=holder)
