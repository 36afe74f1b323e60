"""Datasets held in memory: the embedded digits set and image folders.

A dataset is a :class:`Dataset`: two random-access sources (``train``,
``test``) with ``len(src)`` and ``src[i] -> (uint8 HWC image, int label)``,
plus the facts a training program needs (classes, image shape, per-channel
mean and standard deviation). Sources here hold whole arrays in memory and
also answer ``src.get_batch(indices)`` in one NumPy gather.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# Bump when the cached arrays' layout or the decoding changes.
_CACHE_VERSION = 1
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
  from PIL import Image  # pylint: disable=g-import-not-at-top
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


def _listing_tar(path: str, exts) -> Iterator[tuple[str, str, str, Any]]:
  """Streams ``(split, class, member name, bytes)`` from an archive."""
  with tarfile.open(path, "r|*") as archive:
    for member in archive:
      if not member.isfile():
        continue
      where = _split_parts(member.name)
      if where is None or os.path.splitext(member.name)[1].lower() not in exts:
        continue
      yield where[0], where[1], member.name, archive.extractfile(member).read()


def _listing_dir(path: str, exts) -> list[tuple[str, str, str]]:
  """``(split, class, file path)`` of every image under path/{train,test}."""
  out = []
  for split in _SPLITS:
    root = os.path.join(path, split)
    if not os.path.isdir(root):
      continue
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      rel = os.path.relpath(dirpath, path)
      for filename in filenames:
        if os.path.splitext(filename)[1].lower() not in exts:
          continue
        where = _split_parts(os.path.join(rel, filename))
        if where is not None:
          out.append((where[0], where[1], os.path.join(dirpath, filename)))
  return out


def _decode_image(data: bytes | str, what: str) -> np.ndarray:
  """Decodes one image file (bytes or a path) to uint8 HWC (1 or 3 channels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as im:
      gray = im.mode in ("1", "L", "I", "I;16", "F", "LA")
      array = np.asarray(im.convert("L" if gray else "RGB"), np.uint8)
  except Exception as e:  # Pillow raises several types for bad files.
    raise ValueError(f"cannot decode image {what}: {e}") from e
  return array[:, :, None] if gray else array


def _cache_key(path: str) -> str:
  """Path + size + mtime of the archive, or of every file in the folder."""
  h = hashlib.sha256(f"v{_CACHE_VERSION}:{path}".encode())
  if os.path.isfile(path):
    st = os.stat(path)
    h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
  else:
    for split in _SPLITS:
      for dirpath, dirnames, filenames in sorted(
          os.walk(os.path.join(path, split))):
        dirnames.sort()
        for filename in sorted(filenames):
          st = os.stat(os.path.join(dirpath, filename))
          rel = os.path.relpath(os.path.join(dirpath, filename), path)
          h.update(f":{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
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
    described = ", ".join(f"{s} (e.g. {n})" for s, n in shapes.items())
    raise ValueError(
        f"images in {path} differ in shape: {described}. An image folder must "
        "hold images of one size; resize them first.")
  return np.stack(images)


def _missing_folder(path: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"image folder {path!r} does not exist; folder:PATH wants "
      "PATH/train/<class>/<image> and PATH/test/<class>/<image>, or a "
      ".tar.gz of that layout (for CIFAR-10 from TFDS instead, prepare it "
      "with 'tfds build cifar10 --file_format=array_record' and use "
      "'cifar10')")


def _decode_folder(path: str) -> dict[str, np.ndarray]:
  """Reads and decodes a folder or archive: arrays for the cache."""
  if not os.path.exists(path):
    raise _missing_folder(path)
  exts = _image_extensions()
  found: dict[str, list[tuple[str, str, Any]]] = {s: [] for s in _SPLITS}
  if _is_tar(path):
    for split, cls, name, data in _listing_tar(path, exts):
      found[split].append((cls, name, data))
  elif os.path.isdir(path):
    missing = " or ".join(
        s + "/" for s in _SPLITS if not os.path.isdir(os.path.join(path, s)))
    if missing:
      raise ValueError(
          f"image folder {path!r} has no {missing} sub-folder: expected "
          "PATH/train/<class>/<image> and PATH/test/<class>/<image>")
    for split, cls, filename in _listing_dir(path, exts):
      found[split].append((cls, filename, filename))
  else:
    raise ValueError(
        f"{path!r} is neither a folder nor a .tar/.tar.gz/.tgz archive")
  empty = [s for s in _SPLITS if not found[s]]
  if empty:
    raise ValueError(
        f"no images found under {' and '.join(s + '/' for s in empty)} in "
        f"{path!r}: expected PATH/{empty[0]}/<class>/<image> with a "
        "Pillow-readable extension (.png, .jpg, .jpeg, .bmp, .gif, .webp, "
        "...)")
  classes = sorted({cls for cls, _, _ in found["train"]})
  unknown = sorted({cls for cls, _, _ in found["test"]} - set(classes))
  if unknown:
    raise ValueError(
        f"test/ of {path!r} has classes not in train/: {unknown}")
  index = {cls: i for i, cls in enumerate(classes)}
  arrays = {"class_names": np.array(classes)}
  for split in _SPLITS:
    entries = sorted(found[split], key=lambda e: (e[0], e[1]))
    images = [_decode_image(data, name) for _, name, data in entries]
    channels = max(image.shape[2] for image in images)
    if channels == 3:  # Mixed grey and colour: make all colour.
      images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im
                for im in images]
    arrays[f"{split}_images"] = _stack(images, [e[1] for e in entries], path)
    arrays[f"{split}_labels"] = np.array([index[e[0]] for e in entries],
                                         np.int32)
  if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
    raise ValueError(
        f"train and test images in {path!r} differ in shape: "
        f"{arrays['train_images'].shape[1:]} vs "
        f"{arrays['test_images'].shape[1:]}")
  mean, std = channel_stats(arrays["train_images"])
  arrays["mean"], arrays["std"] = mean, std
  return arrays


def folder(path: str, *, cache_dir: str | None = None,
           name: str | None = None) -> Dataset:
  """An image-folder dataset, decoded once and cached.

  Layout: ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>``
  (deeper sub-folders inside a class are read too), images in any format
  Pillow reads, all of one size. Labels number the ``train/`` class names in
  sorted order. ``PATH`` may also be a ``.tar``/``.tar.gz``/``.tgz`` archive of
  that layout (optionally under one top folder); its members are streamed in
  place, never extracted.

  The decoded arrays are cached as ``<cache_dir>/folder-<key>.npz``, where the
  key hashes the absolute path with the size and modification time of the
  archive (or of every file in the folder); the file is written to a temporary
  name and renamed, so an interrupted run never leaves a broken cache.

  Args:
    path: the folder or archive.
    cache_dir: where to cache; default :func:`default_cache_dir`.
    name: the dataset's name; default ``"folder:" + path``.

  Returns:
    the :class:`Dataset` (images ``(H, W, 3)``, or ``(H, W, 1)`` when every
    image is grey).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise _missing_folder(path)
  cache_dir = cache_dir or default_cache_dir()
  cache_file = os.path.join(cache_dir, f"folder-{_cache_key(path)}.npz")
  arrays = None
  if os.path.exists(cache_file):
    try:
      with np.load(cache_file, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError):  # Unreadable cache: decode again.
      arrays = None
  if arrays is None:
    arrays = _decode_folder(path)
    _save_atomic(cache_file, arrays)
  class_names = tuple(str(c) for c in arrays["class_names"])
  return Dataset(
      name=name or f"folder:{path}", num_classes=len(class_names),
      image_shape=tuple(int(d) for d in arrays["train_images"].shape[1:]),
      train=ArraySource(arrays["train_images"], arrays["train_labels"]),
      test=ArraySource(arrays["test_images"], arrays["test_labels"]),
      mean=arrays["mean"].astype(np.float32),
      std=arrays["std"].astype(np.float32), class_names=class_names)
