"""Datasets, batching and augmentation for image classification.

Pick a dataset by name with :func:`get`:

=====================  ====================================================
name                   what
=====================  ====================================================
``digits``             scikit-learn's bundled 8x8 digits (no download):
                       1,348 train / 449 test, split fixed by a seeded
                       shuffle (``np.random.default_rng(0)``, last 25% test)
``digits28``           the digits redrawn at 28x28 (rotated, scaled,
                       shifted, noisy): 2,696 train / 898 test, generated
                       from a fixed seed (:func:`digits28`)
``shapes28``           ten kinds of generated 28x28 shapes, 2,000 train /
                       2,000 test, fixed seed (:func:`shapes28`)
``cifar10``            TFDS ``cifar10`` (32x32x3, 10 classes)
``cifar100``           TFDS ``cifar100`` (32x32x3, 100 fine labels)
``imagenet2012``       TFDS ``imagenet2012``, read lazily and cropped on the
                       host to 224x224 (train: random-resized crop; test =
                       ``validation`` split: resize 256, centre crop 224)
``tfds:NAME``          any TFDS set with ``image`` and ``label`` features
``folder:PATH``        ``PATH/{train,test}/<class>/<image>``, or a .tar.gz of
                       that layout read in place; decoded once and cached,
                       or (images of several sizes, large sets) read
                       lazily and cropped on the host to 224x224
=====================  ====================================================

Every dataset has ``train`` and ``test`` random-access sources
(``len(src)``, ``src[i] -> (uint8 HWC image, int label)``); small ones hold
arrays in memory, lazy ones (TFDS, large image folders) decode and crop
each example on the host when it is read. :func:`batches` turns a source
into per-process batches whose order depends only on ``(seed, epoch)``,
read in the calling thread or, with ``num_workers=N``, in Grain worker
processes that decode ahead of the training step (same batches either
way); :func:`preprocess` augments and normalises a batch on the device.

Dependencies: ``digits`` and ``digits28`` need scikit-learn; image folders need Pillow; TFDS
sets need ``tensorflow-datasets`` and ``array_record`` (read through
``tfds.data_source``, no TensorFlow). All are in the ``training`` extra.
The sources are plain random-access sequences, so Grain can also read them
directly (``grain.MapDataset.source(ds.train)``).

Preparing a TFDS dataset is a one-time step on a machine with network access
(TensorFlow may be needed there, never for reading)::

  tfds build cifar10 --file_format=array_record --data_dir=DATA_DIR

then ``get("cifar10", data_dir=DATA_DIR)``; ``get(..., download=True)`` tries
that step itself. ImageNet's archives must be placed by hand in
``DATA_DIR/downloads/manual/`` first. Without a prepared copy, :func:`get`
raises :class:`TfdsNotPreparedError` saying so.

Example:
  >>> import jax, numpy as np
  >>> from gaf_optax import data
  >>> ds = data.get("digits")
  >>> ds.num_classes, ds.image_shape, ds.num_train, ds.num_test
  (10, (8, 8, 1), 1348, 449)
  >>> batch = next(data.batches(ds.train, 32, seed=0, epoch=0))
  >>> x = data.preprocess(batch["image"], jax.random.key(0), mean=ds.mean,
  ...                     std=ds.std, train=True, crop_padding=1)
  >>> x.shape, batch["label"].shape
  ((32, 8, 8, 1), (32,))
"""

from __future__ import annotations

import difflib
import functools
from typing import Callable

from gaf_optax.data._augment import center_crop
from gaf_optax.data._augment import preprocess
from gaf_optax.data._augment import random_resized_crop
from gaf_optax.data._batching import batch_rows
from gaf_optax.data._batching import batches
from gaf_optax.data._batching import epoch_order
from gaf_optax.data._batching import steps_per_epoch
from gaf_optax.data._sources import ArraySource
from gaf_optax.data._sources import Dataset
from gaf_optax.data._sources import check_decode_workers as _check_workers
from gaf_optax.data._sources import default_cache_dir
from gaf_optax.data._sources import digits
from gaf_optax.data._host import RecordSource
from gaf_optax.data._host import folder
from gaf_optax.data._synthetic import digits28
from gaf_optax.data._synthetic import shapes28
from gaf_optax.data._subset import balanced_subset
from gaf_optax.data._subset import in_memory
from gaf_optax.data._subset import subset
from gaf_optax.data._tfds import TfdsNotPreparedError
from gaf_optax.data._tfds import TfdsSource
from gaf_optax.data._tfds import load as load_tfds

# Named datasets; "tfds:NAME" and "folder:PATH" are handled by prefix.
# Each loader takes the keyword arguments data_dir and download.
_NAMED: dict[str, Callable[..., Dataset]] = {
    "digits": lambda data_dir, download: digits(),
    "digits28": lambda data_dir, download: digits28(),
    "shapes28": lambda data_dir, download: shapes28(),
    "cifar10": functools.partial(load_tfds, "cifar10"),
    "cifar100": functools.partial(load_tfds, "cifar100"),
    "imagenet2012": functools.partial(load_tfds, "imagenet2012"),
}
_PREFIXES = ("tfds:NAME", "folder:PATH")


def known_datasets() -> tuple[str, ...]:
  """The names :func:`get` accepts (prefix forms shown with a placeholder)."""
  return tuple(_NAMED) + _PREFIXES


def get(name: str, *, data_dir: str | None = None, download: bool = False,
        cache_dir: str | None = None, train_size: int | None = None,
        test_size: int | None = None, image_size: int | None = None,
        subset_seed: int = 0, decode_workers: int = 1) -> Dataset:
  """Loads a dataset by name.

  Args:
    name: ``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``,
      ``"tfds:NAME"`` (any TFDS image classification set) or
      ``"folder:PATH"`` (an image folder or a .tar.gz of one).
    data_dir: TFDS data directory (TFDS sets only; default TFDS's own).
    download: for TFDS sets that are not prepared, try downloading and
      preparing them (needs network access).
    cache_dir: where decoded image folders are cached; default
      ``$GAF_OPTAX_CACHE`` or ``~/.cache/gaf_optax``.
    train_size, test_size, image_size, subset_seed: class-balanced subsets
      and downsampling (:func:`subset`); None keeps the set as it is.
    decode_workers: processes that decode an image folder or archive
      (``folder:PATH``) on its first read, before it is cached (:func:`folder`;
      1: this process). Any number gives the same arrays; other sets ignore
      it.

  Returns:
    the :class:`Dataset`.

  Raises:
    ValueError: unknown name (the message lists the known ones), a folder
      without ``train/``/``test/``, without images or with an empty class
      folder, or an ``image_size`` that is not a positive int or whose
      resized set would not fit in this host's memory (the message gives
      the bytes and the accepted range; :func:`subset`).
    TfdsNotPreparedError: a TFDS set that is not prepared and was not
      downloaded; the message says how to prepare it.
  """
  _check_workers(decode_workers)
  return subset(_load(name, data_dir, download, cache_dir, decode_workers),
                train_size=train_size, test_size=test_size,
                image_size=image_size, seed=subset_seed)


def _load(name, data_dir, download, cache_dir, decode_workers) -> Dataset:
  if name.startswith("folder:"):
    path = name[len("folder:"):]
    if not path:
      raise ValueError("folder: needs a path, as in 'folder:/data/my_set'")
    return folder(path, cache_dir=cache_dir, name=name,
                  decode_workers=decode_workers)
  if name.startswith("tfds:"):
    tfds_name = name[len("tfds:"):]
    if not tfds_name:
      raise ValueError("tfds: needs a TFDS name, as in 'tfds:mnist'")
    return load_tfds(tfds_name, data_dir=data_dir, download=download,
                     dataset_name=name)
  if name not in _NAMED:
    close = difflib.get_close_matches(name, list(_NAMED), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown dataset {name!r}{hint}; known: "
        f"{', '.join(known_datasets())}")
  return _NAMED[name](data_dir=data_dir, download=download)


__all__ = [
    "ArraySource",
    "Dataset",
    "RecordSource",
    "TfdsNotPreparedError",
    "TfdsSource",
    "balanced_subset",
    "batch_rows",
    "batches",
    "center_crop",
    "default_cache_dir",
    "digits",
    "digits28",
    "epoch_order",
    "folder",
    "get",
    "in_memory",
    "known_datasets",
    "load_tfds",
    "preprocess",
    "random_resized_crop",
    "shapes28",
    "steps_per_epoch",
    "subset",
]
