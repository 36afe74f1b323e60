"""Dataset options: in memory, class-balanced subsets, downsampled images."""

from __future__ import annotations

import dataclasses

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
      bilinear, rounded back to uint8; None: as stored).
    seed: which examples are drawn.

  Returns:
    the new :class:`Dataset` (the same object when nothing is asked).

  Example:
    >>> from gaf_optax import data
    >>> small = data.subset(data.get("digits"), train_size=100,
    ...                     test_size=50, image_size=16)
    >>> small.num_train, small.num_test, small.image_shape
    (100, 50, (16, 16, 1))
  """
  if image_size is not None and (not isinstance(image_size, int) or
                                 image_size < 1):
    raise ValueError(f"image_size must be a positive int or None; got "
                     f"{image_size!r}.")
  if train_size is None and test_size is None and image_size is None:
    return dataset

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
