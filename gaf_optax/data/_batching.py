"""Batches from a random-access source: shuffled, sharded, resumable.

The order of an epoch is a permutation that depends only on ``(seed,
epoch)``, so every process computes the same one without talking to the
others. Global batch ``i`` is rows ``[i * B, (i + 1) * B)`` of that order;
process ``p`` of ``P`` gets rows ``[p * b, (p + 1) * b)`` of it, with
``b = B // P``. Stacking the processes' batches in process order gives the
one-process batch exactly, and batch ``i`` can be produced without reading
batches ``0 .. i - 1`` (exact resume from a step count).
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from typing import Any

import numpy as np


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
    num_workers: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over one epoch of a source in this process's share of batches.

  Args:
    source: a random-access source (``len(src)``, ``src[i] -> (image,
      label)``); one with ``get_batch(indices, seed=...)`` is read in one call
      per batch.
    batch_size: the GLOBAL batch size, divisible by ``process_count``.
    seed: shuffling seed (also keys host-side random crops of lazy sources).
    epoch: epoch number; with ``seed`` it fixes the order.
    shuffle: shuffle (training) or keep the source's order (evaluation).
    drop_remainder: drop the last incomplete global batch (training). If
      false, the last batch is padded to ``batch_size`` rows (repeating the
      epoch's first example) and every batch carries a boolean
      ``mask``, true for real rows.
    process_index: this process, ``jax.process_index()``.
    process_count: number of processes, ``jax.process_count()``.
    start_batch: global batches to skip; cheap, for exact resume.
    num_workers: threads reading batches ahead (for lazy sources that decode
      or crop on the host); 0 reads in the calling thread. The output does not
      depend on it.

  Yields:
    ``dict(image=uint8[b, H, W, C], label=int32[b])`` with
    ``b = batch_size // process_count``, plus ``mask=bool[b]`` when
    ``drop_remainder`` is false.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.data import ArraySource, batches
    >>> src = ArraySource(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10))
    >>> [b["label"].tolist() for b in batches(src, 4, seed=0, epoch=0,
    ...     shuffle=False, drop_remainder=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(
        f"need 0 <= process_index < process_count, got {process_index} and "
        f"{process_count}")
  if batch_size % process_count:
    raise ValueError(
        f"the global batch_size ({batch_size}) must be divisible by "
        f"process_count ({process_count})")
  if start_batch < 0:
    raise ValueError(f"start_batch must be >= 0, got {start_batch}")
  n = len(source)
  order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
  num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
  local = batch_size // process_count
  lo = process_index * local
  transform_seed = (int(seed), int(epoch))

  def make(i: int) -> dict[str, np.ndarray]:
    rows = order[i * batch_size:(i + 1) * batch_size]
    mask = np.zeros(batch_size, bool)
    mask[:len(rows)] = True
    if len(rows) < batch_size:  # Only without drop_remainder.
      rows = np.concatenate(
          [rows, np.full(batch_size - len(rows), order[0], rows.dtype)])
    rows, mask = rows[lo:lo + local], mask[lo:lo + local]
    images, labels = _gather(source, rows, transform_seed)
    out = {"image": np.asarray(images, np.uint8),
           "label": np.asarray(labels, np.int32)}
    if not drop_remainder:
      out["mask"] = mask
    return out

  indices = range(start_batch, num_batches)
  if num_workers <= 0:
    for i in indices:
      yield make(i)
    return
  executor = concurrent.futures.ThreadPoolExecutor(num_workers)
  try:
    pending = collections.deque()
    it = iter(indices)
    for i in it:
      pending.append(executor.submit(make, i))
      if len(pending) >= 2 * num_workers:
        break
    while pending:
      batch = pending.popleft().result()
      for i in it:
        pending.append(executor.submit(make, i))
        break
      yield batch
  finally:
    executor.shutdown(wait=False, cancel_futures=True)
