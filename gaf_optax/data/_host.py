"""Sources that read and crop each example on the host when it is asked for.

Two kinds of storage are read this way: TFDS ArrayRecord files
(:class:`~gaf_optax.data.TfdsSource`) and image files on disk
(:func:`image_files`, the lazy form of ``folder:PATH``). Both are a
:class:`RecordSource`: a random-access sequence of records (``{"image":
uint8 array, "label": int}``) plus an optional host transform ``fn(image,
rng) -> image`` that brings images of any size to one shape (the ImageNet
crops). The transform's generator is seeded from ``(seed, epoch, index)``
when :func:`gaf_optax.data.batches` reads a batch, so an example's crop
depends on neither the batch it lands in nor the process or worker that
reads it; Grain worker processes (``batches(..., num_workers=N)``) get a
pickled copy of the source.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gaf_optax.data import _augment
from gaf_optax.data import _sources
from gaf_optax.data import _subset

# ImageNet recipe: training crops and evaluation crops of this size; the
# evaluation crop is the centre after scaling the shorter side to
# CROP_SIZE * 256 / 224.
CROP_SIZE = 224
RESIZE_RATIO = 256 / 224
# Examples read to estimate mean/std of a set without known statistics.
STATS_SAMPLE = 512


class RecordSource:
  """Random access to records as ``(uint8 HWC image, int label)``.

  Args:
    records: a random-access sequence (``len``, ``records[i]``; optionally
      ``records.__getitems__(indices)``, one call for a batch) of mappings
      with an image and a label.
    transform: optional ``fn(image, rng) -> image`` applied per example on the
      host (the ImageNet crops); ``rng`` is a NumPy generator seeded from
      ``(seed, epoch, index)`` by :func:`gaf_optax.data.batches`, or from the
      index alone for ``src[i]``.
    image_key: the record's image field.
    label_key: the record's label field.
  """

  def __init__(self, records, *, transform: Callable | None = None,
               image_key: str = "image", label_key: str = "label"):
    self.records = records
    self.transform = transform
    self.image_key = image_key
    self.label_key = label_key
    self._batch_reads = True

  @property
  def data_source(self):
    """The records (TFDS calls them a data source)."""
    return self.records

  def __len__(self) -> int:
    return len(self.records)

  def _example(self, record, rng_seed) -> tuple[np.ndarray, int]:
    image = np.asarray(record[self.image_key], np.uint8)
    if image.ndim == 2:
      image = image[:, :, None]
    if self.transform is not None:
      image = self.transform(image, np.random.default_rng(rng_seed))
    return image, int(record[self.label_key])

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    index = int(index)
    return self._example(self.records[index], [index])

  def get_batch(self, indices: np.ndarray, seed: Any = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels at ``indices``; ``seed`` keys the host transform."""
    indices = [int(i) for i in indices]
    records = None
    if self._batch_reads:
      try:  # One call: ArrayRecord reads the records in parallel.
        records = self.records.__getitems__(indices)
      except (AttributeError, TypeError):
        # No batch reads (image files; tfds.testing.mock_data's
        # __getitems__ takes other arguments): read one at a time from now
        # on. A genuine error is raised again by the per-example read below.
        self._batch_reads = False
    if records is None:
      records = [self.records[i] for i in indices]
    prefix = [] if seed is None else [int(s) for s in np.atleast_1d(seed)]
    examples = [self._example(r, prefix + [i])
                for r, i in zip(records, indices)]
    return (np.stack([e[0] for e in examples]),
            np.array([e[1] for e in examples], np.int32))

  def __repr__(self) -> str:
    return f"{type(self).__name__}({len(self)} examples)"


def _eval_crop(image: np.ndarray, rng: np.random.Generator, *, size: int,
               resize: int) -> np.ndarray:
  del rng  # Deterministic.
  return _augment.center_crop(image, size=size, resize=resize)


def crops(size: int = CROP_SIZE) -> tuple[Callable, Callable]:
  """The host transforms ``(train, eval)`` for images of varying size.

  ``train`` is :func:`~gaf_optax.data.random_resized_crop` to ``size``;
  ``eval`` scales the shorter side to ``round(size * 256 / 224)`` and cuts
  the central ``size x size`` square (:func:`~gaf_optax.data.center_crop`).
  Both are picklable (Grain workers).
  """
  if not isinstance(size, int) or size < 1:
    raise ValueError(f"crop size must be a positive int, got {size!r}")
  return (functools.partial(_augment.random_resized_crop, size=size),
          functools.partial(_eval_crop, size=size,
                            resize=int(round(size * RESIZE_RATIO))))


def sample_stats(source) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean/std from up to :data:`STATS_SAMPLE` spread examples."""
  n = len(source)
  sample = np.unique(np.linspace(0, n - 1, min(n, STATS_SAMPLE)).astype(int))
  images, _ = source.get_batch(sample, seed=0)
  return _sources.channel_stats(images)


@dataclasses.dataclass(frozen=True)
class ImageFiles:
  """Image files as records, decoded when read (picklable: paths only).

  Attributes:
    files: the image paths.
    labels: their labels.
    channels: 1 (grey) or 3 (RGB); images are converted to it as
      :func:`gaf_optax.data.folder` converts them.
  """

  files: tuple[str, ...]
  labels: tuple[int, ...]
  channels: int = 3

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.files[index]
    image = _sources._decode_image(path, path)  # pylint: disable=protected-access
    return {"image": _sources._to_channels(image, self.channels),  # pylint: disable=protected-access
            "label": self.labels[index]}


def image_files(entries: Sequence[tuple[str, str, str]],
                classes: Sequence[str], *, crop_size: int = CROP_SIZE,
                channels: int = 3) -> tuple[RecordSource, RecordSource]:
  """Lazy train and test sources over listed image files.

  Args:
    entries: ``(split, class, path)`` of every image.
    classes: class names in label order.
    crop_size: the output size (train: random-resized crop; test: resize +
      centre crop).
    channels: 1 or 3.

  Returns:
    ``(train, test)`` sources.
  """
  index = {c: i for i, c in enumerate(classes)}
  train_fn, eval_fn = crops(crop_size)
  out = []
  for split, fn in (("train", train_fn), ("test", eval_fn)):
    rows = sorted((cls, path) for s, cls, path in entries if s == split)
    records = ImageFiles(tuple(p for _, p in rows),
                         tuple(index[c] for c, _ in rows), channels)
    out.append(RecordSource(records, transform=fn))
  return out[0], out[1]


def _header(source, what: str) -> tuple[tuple[int, int], bool]:
  """An image's shown ``(width, height)`` and whether it is grey (header)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(source) as im:
      return _sources.shown_size(im), (
          im.mode in _sources._GREY_MODES  # pylint: disable=protected-access
          or im.mode.startswith("I;16"))
  except Exception as e:  # Pillow raises several types for bad files.
    raise ValueError(f"cannot decode image {what}: {e}") from e


def scan_headers(files: Sequence[str]) -> tuple[set, bool]:
  """Image sizes seen and whether every image is grey, from headers only.

  Pillow reads a file's header without decoding its pixels. Sizes are as
  decoded, after the EXIF orientation (width and height swapped for a
  quarter turn). The scan stops at the second distinct size (the answer
  "sizes differ" is then known).

  Returns:
    ``(sizes, grey)``: the ``(width, height)`` pairs seen, and whether every
    scanned image has a grey mode.
  """
  sizes, grey = set(), True
  for path in files:
    size, is_grey = _header(path, path)
    sizes.add(size)
    grey = grey and is_grey
    if len(sizes) > 1:
      return sizes, False
  return sizes, grey


def _decoded_bytes(count: int, sizes: set, grey: bool) -> int:
  width, height = next(iter(sizes)) if sizes else (0, 0)
  return count * width * height * (1 if grey else 3)


def folder_is_lazy(path: str, lazy: bool | None, max_cache_bytes: int
                   ) -> tuple[bool, list[tuple[str, str, str]]]:
  """Whether to read a folder (not an archive) lazily, and its listing.

  Decided as documented in :func:`gaf_optax.data.folder`.
  """
  if lazy is False:  # the cached path lists the folder itself
    return False, []
  entries = _sources._listing_dir(path, _sources._image_extensions())  # pylint: disable=protected-access
  if lazy:
    return True, entries
  sizes, grey = scan_headers([p for s, _, p in entries if s == "train"])
  if len(sizes) > 1:
    return True, entries
  return _decoded_bytes(len(entries), sizes, grey) > max_cache_bytes, entries


def archive_is_lazy(path: str, max_cache_bytes: int) -> bool:
  """:func:`folder_is_lazy`'s answer for an archive, from one read of it.

  The members are streamed and only their headers parsed; the read stops at
  the second training-image size. A damaged archive is a ValueError here or,
  if the read stopped early, when it is unpacked.
  """
  sizes, grey, count, bad = set(), True, 0, None
  for split, _, name, data in _sources._listing_tar(  # pylint: disable=protected-access
      path, _sources._image_extensions()):  # pylint: disable=protected-access
    count += 1
    if split != "train" or bad is not None:
      continue
    try:
      size, is_grey = _header(io.BytesIO(data), f"{name} in {path}")
    except ValueError as e:
      # Read on: a corrupt compressed byte garbles the images after it, and
      # the archive's checksum at its end names the real cause.
      bad = e
      continue
    sizes.add(size)
    grey = grey and is_grey
    if len(sizes) > 1:
      return True
  if bad is not None:
    raise bad
  return _decoded_bytes(count, sizes, grey) > max_cache_bytes


def archive_folder(path: str, *, cache_dir: str | None, name: str,
                   lazy: bool | None, crop_size: int, max_cache_bytes: int,
                   decode_workers: int) -> _sources.Dataset:
  """:func:`gaf_optax.data.folder` for an archive: cached, or unpacked + lazy.

  A design choice: rather than read members out of the archive per example
  (gzip has no random access), a lazy archive is unpacked once into the
  cache (:func:`~gaf_optax.data._sources.unpack_archive`) and read as the
  folder it holds. With ``lazy=None``, what the cache already holds for this
  archive decides (its decoded arrays: cached; its unpacked folder: decided
  as for that folder); otherwise one streamed read of the headers does.
  """
  npz, unpacked = _sources.cache_paths(path, cache_dir)
  entries = None
  if lazy is None:
    if os.path.exists(npz):
      lazy = False
    elif os.path.isdir(unpacked):
      lazy, entries = folder_is_lazy(unpacked, None, max_cache_bytes)
    else:
      lazy = archive_is_lazy(path, max_cache_bytes)
  if not lazy:
    return _sources.cached_folder(path, cache_dir=cache_dir, name=name,
                                  decode_workers=decode_workers, filename=npz)
  root = _sources.unpack_archive(path, unpacked)
  if entries is None:
    entries = _sources._listing_dir(root, _sources._image_extensions())  # pylint: disable=protected-access
  return lazy_folder(root, entries, crop_size=crop_size, name=name,
                     shown=path)


def lazy_folder(path: str, entries, *, crop_size: int, name: str,
                shown: str | None = None) -> _sources.Dataset:
  """The lazy form of :func:`gaf_optax.data.folder`.

  ``shown``: the path that messages name (an archive unpacked at ``path``).
  """
  classes = _sources.folder_classes(shown or path, {
      split: [cls for s, cls, _ in entries if s == split]
      for split in ("train", "test")}, _sources.class_folders(path))
  sample = min(sum(s == "train" for s, _, _ in entries), STATS_SAMPLE)
  needed = 2 * sample * crop_size * crop_size * 3  # crops + Pillow's copies
  limit = _subset.host_memory_bytes()
  if needed > limit:
    largest = math.isqrt(limit // (2 * sample * 3))
    raise ValueError(
        f"crop_size={crop_size} is too large: the statistics of {sample} "
        f"{crop_size}x{crop_size}x3 crops of {shown or path!r} need about "
        f"{needed:,} bytes, more than this host's {limit:,} bytes of "
        f"memory. crop_size must be in 1..{largest} here.")
  train, test = image_files(entries, classes, crop_size=crop_size)
  # The statistics of centre crops of a spread sample of training images.
  mean, std = sample_stats(RecordSource(train.records,
                                        transform=test.transform))
  return _sources.Dataset(
      name=name, num_classes=len(classes),
      image_shape=(crop_size, crop_size, 3), train=train, test=test,
      mean=mean, std=std, class_names=tuple(classes))


def check_lazy_args(lazy, crop_size, max_cache_bytes) -> None:
  if lazy not in (None, True, False):
    raise ValueError(f"lazy must be None, True or False, got {lazy!r}")
  if not isinstance(crop_size, int) or crop_size < 1:
    raise ValueError(f"crop_size must be a positive int, got {crop_size!r}")
  if not isinstance(max_cache_bytes, int) or max_cache_bytes < 0:
    raise ValueError(
        f"max_cache_bytes must be an int >= 0, got {max_cache_bytes!r}")



def folder(path: str, *, cache_dir: str | None = None,
           name: str | None = None, lazy: bool | None = None,
           crop_size: int = CROP_SIZE,
           max_cache_bytes: int = 4 << 30,
           decode_workers: int = 1) -> _sources.Dataset:
  """An image-folder dataset: decoded once and cached, or read lazily.

  Layout: ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>``
  (deeper sub-folders inside a class are read too; torchvision's
  ImageFolder layout, ImageNet's usual form on disk), images in any format
  Pillow reads. Labels number the ``train/`` class folders in sorted order.
  Symlinked class folders, sub-folders and image files are followed (a link
  to a folder that contains it, a loop, is an error naming it). Every
  ``train/`` class folder is a class: one without images is refused, as
  torchvision's ImageFolder refuses it, never dropped (dropping it would
  renumber the classes after it); a ``test/`` class folder must match a
  ``train/`` one and may be empty.
  ``PATH`` may also be a ``.tar``/``.tar.gz``/``.tgz`` archive of that
  layout (optionally under one top folder), read as the folder it holds:
  the cached form streams its members in place; the lazy form unpacks it
  once into ``<cache_dir>/archive-<key>`` (keyed like the decoded arrays
  below, written under a temporary name and renamed when complete) and
  reads that folder. An archive is read to its end: one that is truncated
  (even at a member boundary) or damaged is an error, never a smaller
  dataset, and leaves nothing in the cache.

  Two ways of reading:

  - **Cached** (small sets of one image size, e.g. CIFAR or Tiny ImageNet
    as files): every image is decoded once into uint8 arrays held in
    memory and cached on disk, and images keep their size.
  - **Lazy** (images of different sizes, e.g. ImageNet, or sets too large
    to hold decoded): each image is decoded when a batch asks for it and
    brought to ``crop_size x crop_size`` on the host: a random-resized crop
    for ``train`` (:func:`~gaf_optax.data.random_resized_crop`, keyed by
    ``(seed, epoch, index)``), the shorter side scaled to ``crop_size * 256
    / 224`` and the centre cut for ``test``. Images are RGB (grey ones
    repeated). ``mean``/``std`` come from centre crops of 512 training
    images spread over the set. Decoding runs in Grain worker processes
    with ``batches(..., num_workers=N)`` (the trainer's ``data_workers``).

  With ``lazy=None`` the folder is read lazily when its training images
  differ in size (Pillow reads headers only; the scan stops at the second
  size) or their decoded size would exceed ``max_cache_bytes``; for an
  archive, one streamed read of its headers decides the first time, and
  later what the cache holds for it (its decoded arrays, or its unpacked
  folder, decided as a folder) does.

  Images are turned upright by their EXIF orientation tag
  (``PIL.ImageOps.exif_transpose``): a photo stored sideways with
  orientation 6 is read as viewers show it, and its shown size is the one
  that counts. That is our choice; torchvision's default loader and TFDS
  read the pixels as stored.

  Pixels become uint8 as follows. 8-bit images are read as they are; 16-bit
  grey images keep their top 8 bits (``v >> 8``: 65535 -> 255, 32768 -> 128),
  as Pillow does for 16-bit RGB PNGs; alpha channels are dropped. Floating
  point and 32-bit integer images (e.g. float TIFFs) are refused, since
  their range is unknown.

  Channels (cached form): the training split decides. If every ``train/``
  image is grey (Pillow modes ``1``, ``L``, ``LA`` or 16-bit grey) the
  dataset has one channel, and colour ``test/`` images are converted to grey
  with Pillow's ``convert("L")`` (ITU-R 601-2 luma, ``L = R * 299/1000 + G *
  587/1000 + B * 114/1000``). If any training image is colour, it has three,
  and grey images of both splits are repeated into R, G and B. Both splits
  always have the same ``(H, W, C)``; images of different sizes are refused.

  The decoded arrays are cached as ``<cache_dir>/folder-<key>.npz``, where the
  key hashes the absolute path with the archive's bytes (or with the size,
  modification and change time of every file in the folder); the file is
  written to a temporary name and renamed, so an interrupted run never leaves
  a broken cache, and a failed decode leaves none. A cache file damaged
  otherwise (truncated, or arrays that do not fit together) is decoded
  again and rewritten, with a ``RuntimeWarning`` naming it.

  Args:
    path: the folder or archive.
    cache_dir: where to cache; default :func:`default_cache_dir`.
    name: the dataset's name; default ``"folder:" + path``.
    lazy: True: read lazily; False: decode and cache (images of one size);
      None: decide as above.
    crop_size: the lazy form's output height and width; a size whose
      512 statistics crops would not fit in the host's memory is refused.
    max_cache_bytes: with ``lazy=None``, sets whose decoded images would be
      larger than this are read lazily.
    decode_workers: processes that decode the cached form when it is not
      in the cache yet (1: this process; CIFAR-10's 60,000 JPEGs take it
      10-30 s, depending on the machine). The arrays are the same, bit for
      bit, for any number, so it is not part of the cache key. The workers
      are started with "spawn", which imports the main module again: a
      script passing more than 1 needs the ``if __name__ == "__main__":``
      guard. The lazy form ignores it (it decodes in :func:`batches`'
      workers).

  Returns:
    the :class:`Dataset` (cached: images ``(H, W, 3)``, or ``(H, W, 1)``
    when every training image is grey; lazy: ``(crop_size, crop_size, 3)``).

  Raises:
    FileNotFoundError: if ``path`` does not exist.
    ValueError: naming the file, for an archive that is truncated or damaged,
      an image that cannot be decoded or has no known range, and a layout or
      image sizes that do not fit the above (a class folder without images,
      a link loop); images of several sizes with ``lazy=False``; a
      ``crop_size`` too large.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from gaf_optax import data
    >>> root = tempfile.mkdtemp()
    >>> for split in ("train", "test"):
    ...   for k, size in enumerate([(40, 30), (50, 60)]):
    ...     os.makedirs(f"{root}/{split}/c{k}")
    ...     Image.new("RGB", size).save(f"{root}/{split}/c{k}/a.jpg")
    >>> ds = data.folder(root, crop_size=32)  # two sizes: lazy
    >>> ds.image_shape, ds.num_train, ds.train[1][0].shape
    ((32, 32, 3), 2, (32, 32, 3))
  """
  check_lazy_args(lazy, crop_size, max_cache_bytes)
  _sources.check_decode_workers(decode_workers)
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise _sources._missing_folder(path)  # pylint: disable=protected-access
  name = name or f"folder:{path}"
  if os.path.isdir(path):
    missing = " or ".join(
        s + "/" for s in ("train", "test")
        if not os.path.isdir(os.path.join(path, s)))
    if missing:
      raise ValueError(
          f"image folder {path!r} has no {missing} sub-folder: expected "
          "PATH/train/<class>/<image> and PATH/test/<class>/<image>")
  if _sources._is_tar(path):  # pylint: disable=protected-access
    return archive_folder(path, cache_dir=cache_dir, name=name, lazy=lazy,
                          crop_size=crop_size,
                          max_cache_bytes=max_cache_bytes,
                          decode_workers=decode_workers)
  is_lazy, entries = folder_is_lazy(path, lazy, max_cache_bytes)
  if is_lazy:
    return lazy_folder(path, entries, crop_size=crop_size, name=name)
  return _sources.cached_folder(path, cache_dir=cache_dir, name=name,
                               decode_workers=decode_workers)
