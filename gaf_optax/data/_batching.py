"""Batches from a random-access source: shuffled, sharded, resumable.

The order of an epoch is a permutation that depends only on ``(seed,
epoch)``, so every process computes the same one without talking to the
others. Global batch ``i`` is rows ``[i * B, (i + 1) * B)`` of that order;
process ``p`` of ``P`` gets rows ``[p * b, (p + 1) * b)`` of it, with
``b = B // P``. Stacking the processes' batches in process order gives the
one-process batch exactly, and batch ``i`` can be produced without reading
batches ``0 .. i - 1`` (exact resume from a step count).

Batches are made in the calling thread, or, with ``num_workers=N``, in N
Grain worker processes (``grain.MapDataset`` + ``mp_prefetch``) that read,
decode and crop ahead of the training step and hand the batches back in
order: the same batches either way. Because a batch is a pure function of
``(seed, epoch, index)``, the step count is the pipeline's whole state; a
checkpoint of the train state resumes the input exactly.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

# How often a worker looks whether the process that started it is alive.
_PARENT_POLL_SECONDS = 0.5


def steps_per_epoch(dataset_or_source: Any, batch_size: int) -> int:
  """Full global batches in one training epoch: ``num_train // batch_size``.

  Args:
    dataset_or_source: a :class:`~gaf_optax.data.Dataset` (its ``train``
      source counts) or a source.
    batch_size: the global batch size.

  Returns:
    the number of batches :func:`batches` yields with ``drop_remainder``.
  """
  source = getattr(dataset_or_source, "train", dataset_or_source)
  return len(source) // batch_size


def epoch_order(num_examples: int, *, seed: int, epoch: int,
                shuffle: bool = True) -> np.ndarray:
  """The example order of an epoch: a function of ``(seed, epoch)`` only."""
  if not shuffle:
    return np.arange(num_examples)
  rng = np.random.default_rng([int(seed), int(epoch)])
  return rng.permutation(num_examples)


def _gather(source, indices: np.ndarray, seed) -> tuple[np.ndarray,
                                                         np.ndarray]:
  if hasattr(source, "get_batch"):
    return source.get_batch(indices, seed=seed)
  examples = [source[int(i)] for i in indices]
  return (np.stack([np.asarray(e[0], np.uint8) for e in examples]),
          np.array([e[1] for e in examples], np.int32))


class _Batcher:
  """Global batch ``k`` of a run, as this process's rows: picklable.

  ``k`` counts batches over epochs: batch ``i`` of epoch ``e`` is ``k = e *
  num_batches + i``. Grain's worker processes get a pickled copy and call it
  with the ``k`` Grain hands them; each copy keeps the order of the epoch it
  is in, so a worker computes an epoch's permutation once.
  """

  def __init__(self, source, batch_size, *, seed, shuffle, drop_remainder,
               process_index, process_count):
    self.source = source if not isinstance(source, int) else None
    self.batch_size = batch_size
    self.seed = int(seed)
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.size = n = source if isinstance(source, int) else len(source)
    self.num_batches = (n // batch_size if drop_remainder
                        else -(-n // batch_size))
    self.local = batch_size // process_count
    self.lo = process_index * self.local
    self._epoch = None
    self._order = None

  def _order_of(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._order = epoch_order(self.size, seed=self.seed, epoch=epoch,
                                shuffle=self.shuffle)
      self._epoch = epoch
    return self._order

  def __getstate__(self):
    return {**self.__dict__, "_epoch": None, "_order": None}

  def rows(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(epoch, this process's rows, their mask)`` of batch ``k``."""
    epoch, i = divmod(int(k), self.num_batches)
    order = self._order_of(epoch)
    b = self.batch_size
    rows = order[i * b:(i + 1) * b]
    mask = np.zeros(b, bool)
    mask[:len(rows)] = True
    if len(rows) < b:  # Only without drop_remainder.
      rows = np.concatenate([rows, np.full(b - len(rows), order[0],
                                           rows.dtype)])
    return (epoch, rows[self.lo:self.lo + self.local],
            mask[self.lo:self.lo + self.local])

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    epoch, rows, mask = self.rows(k)
    if self.source is None:  # batch_rows(): the indices alone
      return {"rows": rows.astype(np.int32)}
    images, labels = _gather(self.source, rows, (self.seed, epoch))
    out = {"image": np.asarray(images, np.uint8),
           "label": np.asarray(labels, np.int32)}
    if not self.drop_remainder:
      out["mask"] = mask
    return out


def _import_grain():
  try:
    import grain  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "num_workers > 0 reads batches in Grain worker processes and needs "
        "grain: pip install grain, or pip install 'gaf-optax[training]'."
    ) from e
  # Grain's worker pool reads absl flags (its profiling switch); outside an
  # absl.app program nothing has parsed them and that read raises. Taking
  # the flags' defaults is what such a program would do.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


def _watch_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(_PARENT_POLL_SECONDS)
  os._exit(1)  # pylint: disable=protected-access


def _init_worker(parent: int, worker_index: int, worker_count: int) -> None:
  """Runs first in each Grain worker (its ``worker_init_fn``).

  Two choices, both because the parent owns the workers' lives:

  - The worker ignores SIGINT and SIGTERM. A Ctrl-C or a scheduler's SIGTERM
    to the process group reaches the workers too; the parent's stop
    handler finishes the step (reading more batches), saves and then stops
    the workers itself (Grain's stop event, then SIGKILL), so a worker that
    died of the signal would only turn the clean stop into a crash.
  - A daemon thread exits the worker as soon as its parent is gone (its
    parent pid changes), so a parent killed with SIGKILL leaves no worker
    (and, through them, no resource tracker) behind. A thread rather than
    Linux's ``PR_SET_PDEATHSIG``: that fires when the parent *thread* that
    started the worker ends, and Grain starts workers from its own threads.
  """
  del worker_index, worker_count
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
  threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                   name="gaf-optax-parent-watch").start()


_GUARD_HELP = (
    "Grain worker processes are spawned: each imports the main module "
    "again, so a script that starts workers (batches(num_workers=N), "
    "Trainer(data_workers=N)) at its top level must do that under an "
    "`if __name__ == \"__main__\":` guard; without it every worker dies "
    "while starting and the parent waits for it for ever. Put the script's "
    "work in main() and call it under the guard, or use 0 workers.")


def _is_main_test(test: ast.AST) -> bool:
  if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
    return any(map(_is_main_test, test.values))
  if not isinstance(test, ast.Compare):
    return False
  sides = [test.left, *test.comparators]
  return (any(isinstance(n, ast.Name) and n.id == "__name__" for n in sides)
          and any(isinstance(n, ast.Constant) and n.value == "__main__"
                  for n in sides))


def _under_main_guard(tree: ast.AST, line: int) -> bool:
  """Whether ``line`` of a module lies inside ``if __name__ == "__main__":``."""
  return any(isinstance(n, ast.If) and _is_main_test(n.test) and
             n.body[0].lineno <= line <= n.body[-1].end_lineno
             for n in ast.walk(tree))


def _check_main_guard() -> None:
  """Refuses to start workers that would re-run this script and die.

  Spawned workers import ``__main__`` again (as ``__mp_main__``). If the
  call that starts them is reached from the top level of the main script,
  outside an ``if __name__ == "__main__":`` block, each worker would start
  workers of its own while bootstrapping, which multiprocessing refuses:
  the worker dies, and the parent blocks for ever in ``Process.start``
  (its pipe to the dead worker never drains). Checked from the call stack
  and the script's source; without a script file (``python -c``, a
  notebook, pytest) there is nothing to re-run and nothing to check.

  Raises:
    RuntimeError: naming the guard, in the parent (and in a worker that is
      re-running an unguarded script).
  """
  if getattr(multiprocessing.current_process(), "_inheriting", False):
    raise RuntimeError(_GUARD_HELP)  # a worker re-running the script
  main = sys.modules.get("__main__")
  path = getattr(main, "__file__", None)
  if main is None or not path or not os.path.isfile(path):
    return
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    if (frame.f_globals is main.__dict__ and
        frame.f_code.co_name == "<module>"):
      break
    frame = frame.f_back
  if frame is None:
    return
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
  except (OSError, SyntaxError, ValueError):
    return
  if not _under_main_guard(tree, frame.f_lineno):
    raise RuntimeError(f"{_GUARD_HELP} (started from {path}, line "
                       f"{frame.f_lineno}.)")


def _grain_batches(batcher: Any, first: int, last: int, num_workers: int,
                   prefetch: int) -> Iterator[dict[str, np.ndarray]]:
  """Batches ``first .. last - 1`` of ``batcher``, made in worker processes.

  Grain spawns ``num_workers`` processes, hands each a pickled ``batcher``
  and interleaves their results back into index order, so the output is the
  in-process output whatever the worker count. The workers are stopped when
  the iterator is exhausted or closed (``close()``, or garbage collection),
  ignore SIGINT/SIGTERM and exit with their parent (:func:`_init_worker`).
  """
  grain = _import_grain()
  dataset = grain.MapDataset.range(first, last).map(batcher)
  dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=0)).mp_prefetch(
          grain.MultiprocessingOptions(num_workers=num_workers,
                                       per_worker_buffer_size=prefetch),
          worker_init_fn=functools.partial(_init_worker, os.getpid()))
  iterator = iter(dataset)
  try:
    yield from iterator
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def _check(batch_size, process_index, process_count, **ints) -> None:
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index < process_count, got {process_index} and "
        f"{process_count}")
  if batch_size % process_count:
    raise ValueError(
        f"the global batch_size ({batch_size}) must be divisible by "
        f"process_count ({process_count})")
  lows = {"epoch": 0, "start_batch": 0, "num_epochs": 1, "num_workers": 0,
          "prefetch": 1}
  for name, value in ints.items():
    low = lows[name]
    if not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _span(batcher, epoch, start_batch, num_epochs) -> range:
  per_epoch = batcher.num_batches
  first = epoch * per_epoch + min(start_batch, per_epoch)
  return range(first, max(first, (epoch + num_epochs) * per_epoch))


def batches(
    source: Any,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    num_epochs: int = 1,
    num_workers: int = 0,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over epochs of a source in this process's share of batches.

  Args:
    source: a random-access source (``len(src)``, ``src[i] -> (image,
      label)``); one with ``get_batch(indices, seed=...)`` is read in one call
      per batch.
    batch_size: the GLOBAL batch size, divisible by ``process_count``.
    seed: shuffling seed (also keys host-side random crops of lazy sources).
    epoch: the first epoch; with ``seed`` it fixes the order.
    shuffle: shuffle (training) or keep the source's order (evaluation).
    drop_remainder: drop the last incomplete global batch (training). If
      false, the last batch is padded to ``batch_size`` rows (repeating the
      epoch's first example) and every batch carries a boolean
      ``mask``, true for real rows.
    process_index: this process, ``jax.process_index()``.
    process_count: number of processes, ``jax.process_count()``.
    start_batch: batches of the first epoch to skip; cheap, for exact
      resume (nothing before it is read).
    num_epochs: epochs to iterate over, ``epoch .. epoch + num_epochs - 1``,
      as one stream (so worker processes start once for all of them).
    num_workers: Grain worker processes that read, decode and crop batches
      ahead of the training step (for lazy sources: image files, TFDS); 0
      reads in the calling thread. The output does not depend on it. The
      workers are spawned (not forked) and get a pickled copy of ``source``,
      so in-memory sets gain nothing from them. Spawned workers import the
      main module again: a script must start them under an ``if __name__
      == "__main__":`` guard (else this raises a RuntimeError naming it).
      They ignore SIGINT/SIGTERM (the caller stops them by closing the
      iterator) and exit when their parent process dies.
    prefetch: batches each worker keeps ready.

  Yields:
    ``dict(image=uint8[b, H, W, C], label=int32[b])`` with
    ``b = batch_size // process_count``, plus ``mask=bool[b]`` when
    ``drop_remainder`` is false. With ``num_workers > 0``, close the
    iterator (``it.close()``) when stopping early, to stop the workers.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.data import ArraySource, batches
    >>> src = ArraySource(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10))
    >>> [b["label"].tolist() for b in batches(src, 4, seed=0, epoch=0,
    ...     shuffle=False, drop_remainder=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
  """
  _check(batch_size, process_index, process_count, epoch=epoch,
         start_batch=start_batch, num_epochs=num_epochs,
         num_workers=num_workers, prefetch=prefetch)
  batcher = _Batcher(source, batch_size, seed=seed, shuffle=shuffle,
                     drop_remainder=drop_remainder,
                     process_index=process_index, process_count=process_count)
  span = _span(batcher, epoch, start_batch, num_epochs)
  if num_workers == 0 or not span:
    return map(batcher, span)
  _check_main_guard()
  return _grain_batches(batcher, span.start, span.stop, num_workers, prefetch)


class _Repeat:
  """Batch ``k % num_batches`` of a batcher: one epoch, read over and over."""

  def __init__(self, batcher: _Batcher):
    self.batcher = batcher

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    return self.batcher(int(k) % self.batcher.num_batches)


def evaluation_passes(source: Any, batch_size: int, *, passes: int,
                      num_workers: int, process_index: int = 0,
                      process_count: int = 1, prefetch: int = 2
                      ) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
  """``passes`` evaluation passes over ``source`` as one stream.

  Each pass is what ``batches(source, batch_size, seed=0, epoch=0,
  shuffle=False, drop_remainder=False, ...)`` yields, batch for batch (the
  same host-transform keys too), so the trainer reads its evaluations of a
  whole ``fit`` from one set of ``num_workers`` Grain workers instead of
  starting new ones every epoch (about 3 s an epoch on digits). Close the
  stream to stop them.

  Returns:
    ``(batches per pass, stream)``.
  """
  _check(batch_size, process_index, process_count, num_epochs=passes,
         num_workers=num_workers, prefetch=prefetch)
  batcher = _Batcher(source, batch_size, seed=0, shuffle=False,
                     drop_remainder=False, process_index=process_index,
                     process_count=process_count)
  n = batcher.num_batches
  if num_workers == 0 or not n:
    return n, map(_Repeat(batcher), range(passes * n))
  _check_main_guard()
  return n, _grain_batches(_Repeat(batcher), 0, passes * n, num_workers,
                           prefetch)


def batch_rows(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    start_batch: int = 0,
    num_epochs: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """The row indices :func:`batches` would read, without reading them.

  For data held on the device (``Trainer(device_data=True)``): the step
  gathers ``images[rows]`` there. Same order, sharding and resume as
  :func:`batches` with ``drop_remainder=True``.

  Yields:
    ``dict(rows=int32[batch_size // process_count])``.

  Example:
    >>> from gaf_optax.data import batch_rows
    >>> [b["rows"].tolist() for b in batch_rows(5, 2, seed=0, epoch=0,
    ...                                           shuffle=False)]
    [[0, 1], [2, 3]]
  """
  _check(batch_size, process_index, process_count, epoch=epoch,
         start_batch=start_batch, num_epochs=num_epochs)
  batcher = _Batcher(int(num_examples), batch_size, seed=seed,
                     shuffle=shuffle, drop_remainder=True,
                     process_index=process_index, process_count=process_count)
  return map(batcher, _span(batcher, epoch, start_batch, num_epochs))
