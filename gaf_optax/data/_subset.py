"""Dataset options: in memory, class-balanced subsets, downsampled images."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from gaf_optax.data._sources import ArraySource
from gaf_optax.data._sources import Dataset

__all__ = ["balanced_subset", "in_memory", "subset"]


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
  """Every example of a source, as uint8 images and int32 labels."""
  everything = np.arange(len(source))
  if hasattr(source, "get_batch"):
    images, labels = source.get_batch(everything)
  else:
    examples = [source[int(i)] for i in everything]
    images = np.stack([np.asarray(e[0], np.uint8) for e in examples])
    labels = np.array([e[1] for e in examples], np.int32)
  return np.asarray(images), np.asarray(labels)


def in_memory(dataset: Dataset) -> Dataset:
  """The dataset with both splits read into memory (:class:`ArraySource`).

  For sets that fit in host memory and are read from files (TFDS CIFAR, a
  lazy folder at its crop size): what ``Trainer(device_data=True)`` and
  ``Trainer.fit_seeds`` need. Host crops of lazy sources are applied once,
  keyed as for ``src[i]`` (a fixed crop per image). A dataset already in
  memory is returned as it is.

  Example:
    >>> from gaf_optax import data
    >>> ds = data.get("digits")
    >>> data.in_memory(ds) is ds
    True
  """
  if (isinstance(dataset.train, ArraySource)
      and isinstance(dataset.test, ArraySource)):
    return dataset
  return dataclasses.replace(
      dataset, train=ArraySource(*_read_all(dataset.train)),
      test=ArraySource(*_read_all(dataset.test)))


def balanced_subset(labels: np.ndarray, size: int, num_classes: int,
                    seed: int = 0) -> np.ndarray:
  """Sorted indices of ``size // num_classes`` examples of each class.

  Args:
    labels: int labels ``[N]``.
    size: the subset's size, a multiple of ``num_classes``.
    num_classes: classes ``0 .. num_classes - 1``.
    seed: which examples of each class are drawn
      (``np.random.default_rng(seed)``).

  Raises:
    ValueError: ``size`` is not a positive multiple of ``num_classes``, or a
      class has fewer than ``size // num_classes`` examples.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.data import balanced_subset
    >>> idx = balanced_subset(np.array([0, 0, 1, 1, 1, 0]), 4, 2)
    >>> len(idx), np.bincount(np.array([0, 0, 1, 1, 1, 0])[idx]).tolist()
    (4, [2, 2])
  """
  if size <= 0 or size % num_classes:
    raise ValueError(f"size must be a positive multiple of the {num_classes} "
                     f"classes; got {size}.")
  rng = np.random.default_rng(seed)
  per_class = size // num_classes
  picks = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f"size {size} needs {per_class} examples of class {c}; "
                       f"the split has {len(members)}.")
    picks.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(picks))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """Antialiased bilinear resize of uint8 images to ``size x size``."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shape = (len(images), size, size, images.shape[-1])
  out = jax.image.resize(images.astype(np.float32), shape, "linear",
                         antialias=True)
  return np.asarray(jnp.clip(jnp.round(out), 0, 255), np.uint8)


# Where the host's memory size is unknown, resizing may use at most this.
_FALLBACK_MEMORY = 64 << 30
# Bytes a resize holds per output pixel of the split being resized beyond its
# uint8 result: float32 output and its rounded copy.
_RESIZE_WORK_BYTES = 8


def host_memory_bytes() -> int:
  """This host's physical memory in bytes (64 GiB where it is unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):
    return _FALLBACK_MEMORY


def _resize_bytes(size: int, counts: tuple[int, ...], channels: int) -> int:
  """About the memory a resize of splits of ``counts`` images to size^2 needs.

  The uint8 results of every split, plus float32 work space for the largest.
  """
  pixels = size * size * channels
  return pixels * (sum(counts) + _RESIZE_WORK_BYTES * max(counts))


def _check_image_size(image_size, counts: tuple[int, ...], channels: int,
                      what: str) -> None:
  """Refuses an ``image_size`` that is not an int or would not fit in memory.

  A size whose resized dataset would need more bytes than the host has used
  to abort the whole process inside XLA; it is refused by value instead.
  """
  if (not isinstance(image_size, (int, np.integer))
      or isinstance(image_size, bool) or image_size < 1):
    raise ValueError(f"image_size must be a positive int or None; got "
                     f"{image_size!r}.")
  limit = host_memory_bytes()
  needed = _resize_bytes(int(image_size), counts, channels)
  if needed <= limit:
    return
  largest = math.isqrt(limit // _resize_bytes(1, counts, channels))
  while _resize_bytes(largest + 1, counts, channels) <= limit:
    largest += 1  # isqrt of the floor can be one short.
  raise ValueError(
      f"image_size={image_size} is too large for {what}: resizing its "
      f"{' + '.join(str(c) for c in counts)} images to {image_size}x"
      f"{image_size}x{channels} needs about {needed:,} bytes (uint8 results "
      f"and float32 work space), more than this host's {limit:,} bytes of "
      f"memory. image_size must be in 1..{largest} here.")


def subset(dataset: Dataset, *, train_size: int | None = None,
           test_size: int | None = None, image_size: int | None = None,
           seed: int = 0) -> Dataset:
  """A dataset restricted to class-balanced subsets, optionally downsampled.

  The subsets are read into memory (:class:`ArraySource`). The per-channel
  ``mean``/``std`` stay the full training set's, so a subset is normalised
  like the set it came from.

  Args:
    dataset: the full :class:`Dataset`.
    train_size: training examples to keep, a multiple of the class count
      (None: all).
    test_size: test examples to keep, likewise.
    image_size: resize images to ``image_size x image_size`` (antialiased
      bilinear, rounded back to uint8; None: as stored). A size whose
      resized splits, with the resize's float32 work space (8 bytes per
      pixel of the larger split), would need more than the host's physical
      memory is refused.
    seed: which examples are drawn.

  Returns:
    the new :class:`Dataset` (the same object when nothing is asked).

  Raises:
    ValueError: naming the argument, for an ``image_size`` that is not a
      positive int or is too large for this host's memory (the message gives
      the bytes needed and the accepted range), and for sizes that
      :func:`balanced_subset` refuses.

  Example:
    >>> from gaf_optax import data
    >>> small = data.subset(data.get("digits"), train_size=100,
    ...                     test_size=50, image_size=16)
    >>> small.num_train, small.num_test, small.image_shape
    (100, 50, (16, 16, 1))
  """
  if train_size is None and test_size is None and image_size is None:
    return dataset
  if image_size is not None:
    counts = tuple(
        size if isinstance(size, int) and size > 0 else max(len(source), 1)
        for size, source in ((train_size, dataset.train),
                             (test_size, dataset.test)))
    _check_image_size(image_size, counts, dataset.image_shape[-1],
                      repr(dataset.name))
    image_size = int(image_size)

  def take(source, size):
    if size is None and image_size is None:
      return source
    images, labels = _read_all(source)
    if size is not None:
      idx = balanced_subset(np.asarray(labels), size, dataset.num_classes,
                            seed)
      images, labels = np.asarray(images)[idx], np.asarray(labels)[idx]
    if image_size is not None and image_size != images.shape[1]:
      images = _resize(np.asarray(images), image_size)
    return ArraySource(images, labels)

  shape = dataset.image_shape
  if image_size is not None:
    shape = (image_size, image_size, shape[-1])
  parts = []
  if train_size is not None:
    parts.append(f"train_size={train_size}")
  if test_size is not None:
    parts.append(f"test_size={test_size}")
  if image_size is not None:
    parts.append(f"image_size={image_size}")
  return dataclasses.replace(
      dataset, name=f"{dataset.name}[{','.join(parts)}]",
      image_shape=tuple(shape), train=take(dataset.train, train_size),
      test=take(dataset.test, test_size))
