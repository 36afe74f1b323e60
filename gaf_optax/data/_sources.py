"""Datasets held in memory: the embedded digits set and image folders.

A dataset is a :class:`Dataset`: two random-access sources (``train``,
``test``) with ``len(src)`` and ``src[i] -> (uint8 HWC image, int label)``,
plus the facts a training program needs (classes, image shape, per-channel
mean and standard deviation). Sources here hold whole arrays in memory and
also answer ``src.get_batch(indices)`` in one NumPy gather.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# Bump when the cached arrays' layout or the decoding changes. 2: 16-bit
# images scaled, float images refused, archives checked to their end, test
# images converted to the train split's channels, archive keys hash contents.
# 3: EXIF orientation applied; symlinked class folders and files followed.
_CACHE_VERSION = 3
_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset: train and test sources and their statistics.

  Attributes:
    name: the name it was loaded by (``"digits"``, ``"cifar10"``,
      ``"folder:PATH"`` ...).
    num_classes: number of classes; labels are ``0 .. num_classes - 1``.
    image_shape: ``(H, W, C)`` of the images the sources return.
    train: random-access training source.
    test: random-access evaluation source.
    mean: per-channel mean, float32 ``[C]``, in [0, 1] image units.
    std: per-channel standard deviation, float32 ``[C]``, in [0, 1] units.
    class_names: class names in label order.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train: Any
  test: Any
  mean: np.ndarray
  std: np.ndarray
  class_names: tuple[str, ...] = ()

  @property
  def num_train(self) -> int:
    return len(self.train)

  @property
  def num_test(self) -> int:
    return len(self.test)


class ArraySource:
  """A random-access source over in-memory arrays.

  Attributes:
    images: uint8 ``[N, H, W, C]``.
    labels: int32 ``[N]``.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(
          f"{len(images)} images but {len(labels)} labels")
    self.images = np.asarray(images, np.uint8)
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def get_batch(self, indices: np.ndarray, seed: Any = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels at ``indices`` (``seed`` is unused: no randomness)."""
    del seed
    return self.images[indices], self.labels[indices]

  def __repr__(self) -> str:
    return (f"ArraySource(images={self.images.shape}, "
            f"labels={self.labels.shape})")


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation in [0, 1] units, float32.

  Args:
    images: uint8 ``[N, H, W, C]``.

  Returns:
    ``(mean, std)``, each float32 ``[C]``.
  """
  c = images.shape[-1]
  flat = images.reshape(-1, c)
  # Sums in chunks keep float64 accuracy without a float copy of the set.
  total = np.zeros(c, np.float64)
  total_sq = np.zeros(c, np.float64)
  for start in range(0, len(flat), 1 << 22):
    chunk = flat[start:start + (1 << 22)].astype(np.float64)
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
  mean = total / len(flat)
  var = np.maximum(total_sq / len(flat) - np.square(mean), 0.0)
  return ((mean / 255.0).astype(np.float32),
          (np.sqrt(var) / 255.0).astype(np.float32))


# --------------------------------------------------------------------------
# digits

DIGITS_SPLIT_SEED = 0


def digits() -> Dataset:
  """scikit-learn's bundled digits: 1,797 8x8 grey images, 10 classes.

  Needs no download (the data ship inside scikit-learn). Pixel values 0..16
  are scaled to uint8 0..255 (``round(v * 255 / 16)``). The split is fixed:
  the examples are shuffled with ``np.random.default_rng(0)``; the first
  1,348 are ``train`` and the last 449 (25%, ``1797 // 4``) are ``test``.

  Returns:
    the :class:`Dataset`, images ``(8, 8, 1)``.
  """
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "The 'digits' dataset needs scikit-learn: pip install scikit-learn "
        "(or pip install 'gaf-optax[training]').") from e
  bunch = datasets.load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
  order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
  num_test = len(labels) // 4
  train_idx, test_idx = order[:-num_test], order[-num_test:]
  mean, std = channel_stats(images[train_idx])
  return Dataset(
      name="digits", num_classes=10, image_shape=(8, 8, 1),
      train=ArraySource(images[train_idx], labels[train_idx]),
      test=ArraySource(images[test_idx], labels[test_idx]),
      mean=mean, std=std, class_names=tuple(str(i) for i in range(10)))


# --------------------------------------------------------------------------
# image folders


def default_cache_dir() -> str:
  """``$GAF_OPTAX_CACHE`` if set, else ``~/.cache/gaf_optax``."""
  return os.environ.get("GAF_OPTAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "gaf_optax")


def _image_extensions() -> frozenset[str]:
  """The extensions Pillow reads: the first use of Pillow for a folder."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "image folders and archives are decoded with Pillow: pip install "
        "pillow (or pip install 'gaf-optax[training]').") from e
  Image.init()
  return frozenset(Image.registered_extensions())


def _is_tar(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(
      (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _split_parts(relpath: str) -> tuple[str, str] | None:
  """``(split, class)`` of ``[prefix/]split/class/.../file``, else None."""
  parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("",
                                                                          ".")]
  if any(p.startswith(".") for p in parts):
    return None
  for k, part in enumerate(parts[:-2]):
    if part in _SPLITS:
      return part, parts[k + 1]
  return None


class _DamagedArchive(Exception):
  """An archive that ends or breaks before its end-of-archive marker."""


class _CheckedTarInfo(tarfile.TarInfo):
  """Member headers that fail loudly where ``tarfile`` would stop quietly.

  ``tarfile`` ends its iteration not only at the end-of-archive marker (a zero
  block) but also, silently, where the archive was cut at a member boundary
  (nothing left to read), inside a header, or at a header with a bad
  checksum. Here only the marker ends it; the others raise.
  """

  @classmethod
  def fromtarfile(cls, archive):  # pylint: disable=arguments-renamed
    try:
      return super().fromtarfile(archive)
    except tarfile.EOFHeaderError:
      raise  # The end-of-archive marker: a normal end.
    except tarfile.EmptyHeaderError as e:
      raise _DamagedArchive(
          "it ends before its end-of-archive marker") from e
    except tarfile.HeaderError as e:
      raise _DamagedArchive(
          f"bad member header at byte {archive.offset}: {e}") from e


# Errors that reading a cut or corrupt archive raises: tarfile's, the
# decompressors' (gzip's EOFError and BadGzipFile, zlib.error, bz2's OSError,
# lzma.LZMAError).
_ARCHIVE_ERRORS = (_DamagedArchive, tarfile.TarError, EOFError, OSError,
                   zlib.error, lzma.LZMAError)


def _decompressed(raw):
  """``raw`` (a binary file) decompressed by its magic number, if compressed."""
  head = raw.read(6)
  raw.seek(0)
  if head.startswith(b"\x1f\x8b"):
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if head.startswith(b"BZh"):
    return bz2.BZ2File(raw)
  if head.startswith(b"\xfd7zXZ\x00"):
    return lzma.LZMAFile(raw)
  return raw


def _listing_tar(path: str, exts, folders: dict[str, set[str]] | None = None
                 ) -> Iterator[tuple[str, str, str, Any]]:
  """Streams ``(split, class, member name, bytes)`` from an archive.

  ``folders``, if given, gets each split's class folders that the archive
  holds as directory members (with images or not).

  The whole archive is checked: it must reach its end-of-archive marker with
  every member whole, and a compressed one must also reach the end of its
  compressed stream with a matching checksum (gzip's CRC-32 and length,
  xz's and bzip2's checks). Anything short of that is an error, never fewer
  images.

  Raises:
    ValueError: naming ``path``, if the archive is truncated or damaged.
  """
  with open(path, "rb") as raw:
    try:
      with _decompressed(raw) as stream:
        with tarfile.open(fileobj=stream, mode="r|",
                          tarinfo=_CheckedTarInfo) as archive:
          for member in archive:
            if member.isdir() and folders is not None:
              where = _split_parts(member.name.rstrip("/") + "/_")
              if where is not None:
                folders.setdefault(where[0], set()).add(where[1])
            if not member.isfile():
              continue
            where = _split_parts(member.name)
            if (where is None
                or os.path.splitext(member.name)[1].lower() not in exts):
              continue
            yield (where[0], where[1], member.name,
                   archive.extractfile(member).read())
        # Past the marker, read the compressed stream to its end: that is
        # where the decompressor finds a cut stream or a checksum mismatch.
        while stream.read(1 << 20):
          pass
    except _ARCHIVE_ERRORS as e:
      reason = str(e) or type(e).__name__
      raise ValueError(
          f"archive {path!r} is truncated or damaged ({reason}); no images "
          "were read from it. Re-download it, or re-create it (e.g. "
          "tar -czf NAME.tar.gz train test), and load it again.") from e


def _walk(top: str) -> Iterator[tuple[str, list[str]]]:
  """``(dirpath, filenames)`` of every folder under ``top``, in sorted order.

  Unlike ``os.walk``'s default, symlinked folders are followed (a class
  folder may be a link, as in torchvision's ImageFolder); a symlinked file is
  listed like any file (and so is a broken link, which then fails to decode,
  naming it). Hidden folders (``.name``) are skipped.

  Raises:
    ValueError: naming the link, for a link to a folder that contains it (a
      loop, which would otherwise list its images again and again).
  """
  stack = [(top, frozenset([os.path.realpath(top)]))]
  while stack:
    dirpath, ancestors = stack.pop()
    dirnames, filenames = [], []
    with os.scandir(dirpath) as it:
      for entry in it:
        if entry.is_dir():  # Follows links.
          if not entry.name.startswith("."):
            dirnames.append(entry.name)
        else:
          filenames.append(entry.name)
    yield dirpath, sorted(filenames)
    for name in sorted(dirnames, reverse=True):  # popped in sorted order
      child = os.path.join(dirpath, name)
      real = os.path.realpath(child)
      if real in ancestors:
        raise ValueError(
            f"folder link {child!r} points to {real!r}, a folder that "
            "contains it: a link loop. Remove the link (or point it outside "
            "the image folder) and load it again.")
      stack.append((child, ancestors | {real}))


def _listing_dir(path: str, exts) -> list[tuple[str, str, str]]:
  """``(split, class, file path)`` of every image under path/{train,test}.

  Symlinked class folders, sub-folders and image files are followed
  (:func:`_walk`).
  """
  out = []
  for split in _SPLITS:
    root = os.path.join(path, split)
    if not os.path.isdir(root):
      continue
    for dirpath, filenames in _walk(root):
      rel = os.path.relpath(dirpath, path)
      for filename in filenames:
        if os.path.splitext(filename)[1].lower() not in exts:
          continue
        where = _split_parts(os.path.join(rel, filename))
        if where is not None:
          out.append((where[0], where[1], os.path.join(dirpath, filename)))
  return out


def class_folders(path: str) -> dict[str, list[str]]:
  """Each split's class folders (links to folders included, hidden not)."""
  out = {}
  for split in _SPLITS:
    root = os.path.join(path, split)
    names = []
    if os.path.isdir(root):
      with os.scandir(root) as it:
        names = [e.name for e in it
                 if e.is_dir() and not e.name.startswith(".")]
    out[split] = sorted(names)
  return out


# Pillow modes holding 16-bit unsigned samples; "I" (32-bit signed) holds them
# too when it comes from a format that stores at most 16 bits (PNG; PGM/PPM,
# which Pillow scales to 0..65535 from any maxval above 255).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")
_GREY_MODES = ("1", "L", "LA", "La")


# The EXIF Orientation tag; values 5..8 turn the image a quarter turn (the
# shown width and height are the stored ones swapped).
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)


def exif_orientation(im) -> int:
  """An open Pillow image's EXIF orientation (1..8; 1 when it has none)."""
  value = im.getexif().get(_ORIENTATION, 1)
  return value if value in range(1, 9) else 1


def shown_size(im) -> tuple[int, int]:
  """``(width, height)`` as viewers show the image, after its orientation."""
  width, height = im.size
  if exif_orientation(im) in _QUARTER_TURNS:
    return height, width
  return width, height


class _UnknownRange(ValueError):
  """An image whose samples have no known range (float, 32-bit integer)."""


def _decode_image(data: bytes | str, what: str) -> np.ndarray:
  """Decodes one image file (bytes or a path) to uint8 HWC (1 or 3 channels).

  Grey modes (``1``, ``L``, ``LA``) give one channel, every other 8-bit mode
  three, through Pillow's ``convert("L")`` / ``convert("RGB")`` (alpha is
  dropped; palette, CMYK and YCbCr images are converted to RGB). 16-bit grey
  images keep their top 8 bits, ``v >> 8``, so 0..65535 maps onto 0..255
  (65535 -> 255, 32768 -> 128); that is what Pillow itself does with 16-bit
  RGB and RGBA PNGs. Only the first frame of a multi-frame file is read.

  Images are turned as their EXIF orientation tag says
  (``PIL.ImageOps.exif_transpose``), so a phone photo stored sideways with
  orientation 6 decodes upright, as viewers show it. This is our choice:
  torchvision's default PIL loader and TFDS's decoders return the pixels as
  stored; a label describes what people see.

  Raises:
    ValueError: naming ``what``, for a file Pillow cannot decode, and for
      32-bit integer and floating-point images (modes ``I`` from TIFF and
      the like, ``F``): their value range is not known, so no conversion to
      0..255 would be right.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  try:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as opened:
      im, fmt = opened, opened.format
      if exif_orientation(opened) != 1:
        im = ImageOps.exif_transpose(opened)
      mode = im.mode
      if mode in _SIXTEEN_BIT_MODES or (
          mode == "I" and fmt in _SIXTEEN_BIT_I_FORMATS):
        samples = np.asarray(im).astype(np.int64)
        if samples.min(initial=0) < 0 or samples.max(initial=0) > 0xFFFF:
          raise ValueError(f"mode {mode} values outside 0..65535")
        return (samples >> 8).astype(np.uint8)[:, :, None]
      if mode.startswith(("I", "F")):
        kind = "floating-point" if mode.startswith("F") else "32-bit integer"
        raise _UnknownRange(
            f"image {what} is a {kind} image (Pillow mode {mode!r}, format "
            f"{fmt}): its value range is unknown, so it cannot be "
            "mapped to 0..255 uint8 without guessing. Convert it to an 8-bit "
            "(or 16-bit integer) image first.")
      if mode in _GREY_MODES:
        return np.asarray(im.convert("L"), np.uint8)[:, :, None]
      return np.asarray(im.convert("RGB"), np.uint8)
  except _UnknownRange:
    raise
  except Exception as e:  # Pillow raises several types for bad files.
    raise ValueError(f"cannot decode image {what}: {e}") from e


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """A decoded image with ``channels`` (1 or 3) channels.

  Grey to colour repeats the channel (what Pillow's ``convert("RGB")`` does);
  colour to grey is Pillow's ``convert("L")``, the ITU-R 601-2 luma
  ``L = R * 299/1000 + G * 587/1000 + B * 114/1000``.
  """
  if image.shape[2] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=2)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(image).convert("L"), np.uint8)[:, :, None]


def _cache_key(path: str) -> str:
  """Path + the archive's bytes, or path + each folder file's stat.

  An archive's key hashes its contents, so any change to it (even one that
  keeps its size and modification time) decodes it again. A folder's key
  hashes each folder's and file's relative path (an added empty class folder
  changes it too) and each file's size, modification and change times; for
  a symlinked file, those of its target and of the link itself (so pointing
  a link elsewhere changes it).
  """
  h = hashlib.sha256(f"v{_CACHE_VERSION}:{path}".encode())
  if os.path.isfile(path):
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  else:
    for split in _SPLITS:
      root = os.path.join(path, split)
      if not os.path.isdir(root):
        continue
      for dirpath, filenames in _walk(root):
        h.update(f"|{os.path.relpath(dirpath, path)}".encode())
        for filename in filenames:
          full = os.path.join(dirpath, filename)
          stats = [os.lstat(full)]
          if os.path.islink(full) and os.path.exists(full):
            stats.append(os.stat(full))
          h.update(f":{filename}".encode())
          for st in stats:
            h.update(f":{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:"
                     f"{st.st_ctime_ns}".encode())
  return h.hexdigest()[:32]


def _save_atomic(filename: str, arrays: dict[str, np.ndarray]) -> None:
  directory = os.path.dirname(filename)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-",
                             suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared.
    os.replace(tmp, filename)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _stack(images: Sequence[np.ndarray], names: Sequence[str],
           path: str) -> np.ndarray:
  shapes = {}
  for image, name in zip(images, names):
    shapes.setdefault(image.shape, name)
  if len(shapes) > 1:
    # Two examples, not every size: a set of mixed-size photos has as many
    # sizes as images, and the message must stay one readable line.
    (s1, n1), (s2, n2) = list(shapes.items())[:2]
    raise ValueError(
        f"images in {path} differ in shape ({len(shapes)} shapes, e.g. {s1} "
        f"{os.path.basename(n1)} and {s2} {os.path.basename(n2)}); "
        "lazy=False needs one size: leave lazy=None (or lazy=True) to read "
        "them lazily at crop_size.")
  return np.stack(images)


def _missing_folder(path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"image folder {path!r} does not exist; folder:PATH wants "
      "PATH/train/<class>/<image> and PATH/test/<class>/<image>, or a "
      ".tar.gz of that layout (for CIFAR-10 from TFDS instead, prepare it "
      "with 'tfds build cifar10 --file_format=array_record' and use "
      "'cifar10')")


def folder_classes(path: str, classes_by_split: dict[str, list[str]],
                   folders_by_split: dict[str, Any] | None = None
                   ) -> list[str]:
  """The class names (sorted ``train/`` folders) of an image folder.

  Every ``train/`` class folder is a class, so label ``i`` is always the
  ``i``-th folder name in sorted order. A class folder without images is
  refused rather than dropped (dropping it would renumber every class after
  it), as torchvision's ImageFolder refuses one.

  Args:
    path: the folder, for the messages.
    classes_by_split: each split's class name per image found.
    folders_by_split: each split's class folders, images or not (None: only
      the classes of the images found).

  Raises:
    ValueError: a split without images, a ``train/`` class folder without
      images, or ``test/`` classes (folders) not in ``train/``.
  """
  folders = {s: set((folders_by_split or {}).get(s, ())) for s in _SPLITS}
  empty = [s for s in _SPLITS if not classes_by_split.get(s)]
  if empty:
    raise ValueError(
        f"no images found under {' and '.join(s + '/' for s in empty)} in "
        f"{path!r}: expected PATH/{empty[0]}/<class>/<image> with a "
        "Pillow-readable extension (.png, .jpg, .jpeg, .bmp, .gif, .webp, "
        "...)")
  with_images = set(classes_by_split["train"])
  classes = sorted(with_images | folders["train"])
  bare = [c for c in classes if c not in with_images]
  if bare:
    names = ", ".join(f"train/{c}/" for c in bare)
    raise ValueError(
        f"image folder {path!r} has class folders without images: {names} "
        "(no files with a Pillow-readable extension). Every train/ folder "
        "is a class, labelled by its place in the sorted folder names, so "
        "an empty one is not dropped (that would renumber the classes "
        "after it): add its images, or remove the folder.")
  unknown = sorted((set(classes_by_split["test"]) | folders["test"])
                   - set(classes))
  if unknown:
    raise ValueError(
        f"test/ of {path!r} has classes not in train/: {unknown}")
  return classes


def check_decode_workers(decode_workers) -> None:
  """Raises ValueError unless ``decode_workers`` is an int >= 1."""
  if (not isinstance(decode_workers, int) or isinstance(decode_workers, bool)
      or decode_workers < 1):
    raise ValueError(
        f"decode_workers must be a positive int, got {decode_workers!r}")


def _exit_with_parent() -> None:
  """A decoding worker's initializer: the worker ends when its parent does.

  A ``concurrent.futures`` worker waiting for work holds both ends of the
  pool's queue, so it never sees the queue close: a parent that ends
  without shutting the pool down (killed, ``os._exit`` at a deadline)
  would leave it waiting forever, holding the parent's stdout.
  """
  import multiprocessing  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  from multiprocessing import connection  # pylint: disable=g-import-not-at-top
  sentinel = multiprocessing.parent_process().sentinel

  def watch():
    connection.wait([sentinel])
    os._exit(1)  # pylint: disable=protected-access
  threading.Thread(target=watch, daemon=True).start()


def _decode_images(items: Sequence[tuple[bytes | str, str]], workers: int
                   ) -> list[np.ndarray]:
  """:func:`_decode_image` of each ``(data, name)``, in order.

  With ``workers > 1`` the images are decoded by that many processes
  (``concurrent.futures`` with the "spawn" start method: forking a process
  whose JAX has started threads can deadlock), in about four chunks per
  worker; they end with the calling process. The same function decodes
  each image and the results come back in order, so they equal the
  one-process decode bit for bit.
  """
  if workers == 1 or len(items) < 2:
    return [_decode_image(data, name) for data, name in items]
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  workers = min(workers, len(items))
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"),
      initializer=_exit_with_parent) as pool:
    return list(pool.map(_decode_image, [data for data, _ in items],
                         [name for _, name in items],
                         chunksize=-(-len(items) // (4 * workers))))


def _decode_folder(path: str, workers: int = 1) -> dict[str, np.ndarray]:
  """Reads and decodes a folder or archive: arrays for the cache."""
  if not os.path.exists(path):
    raise _missing_folder(path)
  exts = _image_extensions()
  found: dict[str, list[tuple[str, str, Any]]] = {s: [] for s in _SPLITS}
  if _is_tar(path):
    folders: dict[str, Any] = {}
    for split, cls, name, data in _listing_tar(path, exts, folders):
      found[split].append((cls, name, data))
  elif os.path.isdir(path):  # folder() checked train/ and test/.
    for split, cls, filename in _listing_dir(path, exts):
      found[split].append((cls, filename, filename))
    folders = class_folders(path)
  else:
    raise ValueError(
        f"{path!r} is neither a folder nor a .tar/.tar.gz/.tgz archive")
  classes = folder_classes(
      path, {s: [cls for cls, _, _ in found[s]] for s in _SPLITS}, folders)
  index = {cls: i for i, cls in enumerate(classes)}
  arrays = {"class_names": np.array(classes)}
  channels = None
  entries = {s: sorted(found[s], key=lambda e: (e[0], e[1])) for s in _SPLITS}
  decoded = iter(_decode_images(
      [(data, name) for s in _SPLITS for _, name, data in entries[s]],
      workers))
  for split in _SPLITS:  # train first: it fixes the channel count.
    images = [next(decoded) for _ in entries[split]]
    if channels is None:  # Colour if any training image is colour.
      channels = max(image.shape[2] for image in images)
    images = [_to_channels(image, channels) for image in images]
    arrays[f"{split}_images"] = _stack(images, [e[1] for e in entries[split]],
                                       path)
    arrays[f"{split}_labels"] = np.array(
        [index[e[0]] for e in entries[split]], np.int32)
  if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
    raise ValueError(
        f"train and test images in {path!r} differ in shape: "
        f"{arrays['train_images'].shape[1:]} vs "
        f"{arrays['test_images'].shape[1:]}")
  mean, std = channel_stats(arrays["train_images"])
  arrays["mean"], arrays["std"] = mean, std
  return arrays


_CACHE_KEYS = frozenset(["class_names", "mean", "std"] + [
    f"{split}_{part}" for split in _SPLITS for part in ("images", "labels")])


def _cache_problem(arrays: dict[str, np.ndarray]) -> str | None:
  """What is wrong with a cache file's arrays, or None if they fit together."""
  if set(arrays) != _CACHE_KEYS:
    return (f"keys {sorted(arrays)} are not the expected "
            f"{sorted(_CACHE_KEYS)}")
  classes = arrays["class_names"]
  if classes.ndim != 1 or classes.dtype.kind != "U" or not len(classes):
    return "class_names is not a list of names"
  shape = None
  for split in _SPLITS:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
      return f"{split}_images is not uint8 [N, H, W, C]"
    if shape not in (None, images.shape[1:]):
      return "train and test images differ in shape"
    shape = images.shape[1:]
    if (labels.dtype != np.int32 or labels.shape != images.shape[:1]
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= len(classes)):
      return f"{split}_labels do not label {split}_images"
  for stat in ("mean", "std"):
    if arrays[stat].dtype != np.float32 or arrays[stat].shape != shape[-1:]:
      return f"{stat} is not float32 [C]"
  return None


def _read_cache(cache_file: str) -> dict[str, np.ndarray] | None:
  """A cache file's arrays; None, with a warning, if it is damaged.

  A truncated or overwritten file, or one whose arrays do not fit together
  (missing keys, wrong dtypes or shapes), would otherwise block every load:
  the caller decodes the folder again and replaces the file.
  """
  try:
    # Opened here, so it is closed even where np.load raises.
    with open(cache_file, "rb") as fh:
      loaded = np.load(fh, allow_pickle=False)
      if hasattr(loaded, "files"):
        with loaded:
          arrays = {k: loaded[k] for k in loaded.files}
        problem = _cache_problem(arrays)
      else:
        problem = "a single array, not an .npz archive"
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A damaged file raises many types: zipfile.BadZipFile, OSError,
    # EOFError, zlib.error, ValueError (pickled data) ...
    problem = f"{type(e).__name__}: {e}"
  if problem is None:
    return arrays
  warnings.warn(
      f"the decoded-image cache {cache_file} is damaged ({problem}); "
      "decoding the folder again and rewriting it.", RuntimeWarning,
      stacklevel=3)
  return None


def cache_paths(path: str, cache_dir: str | None = None
                ) -> tuple[str, str]:
  """Where ``path``'s decoded arrays and (an archive's) unpacked images go.

  ``(<cache_dir>/folder-<key>.npz, <cache_dir>/archive-<key>)``, one key
  (:func:`_cache_key`: an archive's is a hash of its bytes, computed once
  here).
  """
  key = _cache_key(path)
  cache_dir = cache_dir or default_cache_dir()
  return (os.path.join(cache_dir, f"folder-{key}.npz"),
          os.path.join(cache_dir, f"archive-{key}"))


def unpack_archive(path: str, final: str) -> str:
  """Archive ``path``'s images as a folder ``final`` in the cache, once.

  ``final`` is the second of :func:`cache_paths`: keyed like the
  decoded-image cache (the archive's path and bytes), so a changed archive
  is unpacked again. It holds what the cached form reads (``train/`` and
  ``test/``, each image at ``split/<class>/...``, class folders without
  images kept,
  any top folder dropped); a member that occurs twice is kept as
  ``tar -x`` keeps it, the later one. It is written under a temporary name
  and renamed once the whole archive has been read and checked: a damaged
  archive or an interrupted run leaves no folder (only, after a kill, a
  ``.tmp-archive-*`` one), and of two processes unpacking at once, the
  first rename wins and the other uses its folder.

  Raises:
    ValueError: naming ``path``, if the archive is truncated or damaged.
  """
  if os.path.isdir(final):
    return final
  directory = os.path.dirname(final)
  os.makedirs(directory, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=directory, prefix=".tmp-archive-")
  try:
    folders: dict[str, set[str]] = {}
    for split in _SPLITS:
      os.makedirs(os.path.join(tmp, split))
    for split, cls, name, data in _listing_tar(path, _image_extensions(),
                                               folders):
      parts = [p for p in name.replace("\\", "/").split("/")
               if p not in ("", ".")]
      # _split_parts found split/cls here and refused hidden parts ('..').
      k = next(i for i in range(len(parts) - 2)
               if parts[i] == split and parts[i + 1] == cls)
      target = os.path.join(tmp, *parts[k:])
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(target, "wb") as f:
        f.write(data)
    for split, names in folders.items():
      for cls in names:
        os.makedirs(os.path.join(tmp, split, cls), exist_ok=True)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache may be shared.
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isdir(final):  # not another process's unpacked copy
        raise
      shutil.rmtree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def cached_folder(path: str, *, cache_dir: str | None = None,
                  name: str | None = None, decode_workers: int = 1,
                  filename: str | None = None) -> Dataset:
  """An image folder or archive decoded once and cached (see ``folder``).

  ``filename``: the cache file, if known (:func:`cache_paths`).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise _missing_folder(path)
  filename = filename or cache_paths(path, cache_dir)[0]
  arrays = None
  if os.path.exists(filename):
    arrays = _read_cache(filename)
  if arrays is None:
    arrays = _decode_folder(path, decode_workers)
    _save_atomic(filename, arrays)
  class_names = tuple(str(c) for c in arrays["class_names"])
  return Dataset(
      name=name or f"folder:{path}", num_classes=len(class_names),
      image_shape=tuple(int(d) for d in arrays["train_images"].shape[1:]),
      train=ArraySource(arrays["train_images"], arrays["train_labels"]),
      test=ArraySource(arrays["test_images"], arrays["test_labels"]),
      mean=arrays["mean"].astype(np.float32),
      std=arrays["std"].astype(np.float32), class_names=class_names)
