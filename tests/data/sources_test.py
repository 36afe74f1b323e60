"""Sources: the embedded digits, image folders (and archives), the registry."""

import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from gaf_optax import data
from gaf_optax.data import _sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CIFAR_TAR = os.path.join(os.path.dirname(__file__), "..", "..", "..",
                         "shared", "data", "cifar10-jpeg.tar.gz")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                 "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------- digits

def test_digits_shapes_labels_and_split():
  pytest.importorskip("sklearn")
  ds = data.get("digits")
  assert (ds.name, ds.num_classes, ds.image_shape) == ("digits", 10, (8, 8, 1))
  assert (ds.num_train, ds.num_test) == (1348, 449)
  assert ds.train.images.shape == (1348, 8, 8, 1)
  assert ds.train.images.dtype == np.uint8 and ds.train.labels.dtype == np.int32
  assert ds.train.images.max() == 255 and ds.train.images.min() == 0
  assert set(np.unique(ds.train.labels)) == set(range(10))
  image, label = ds.test[3]
  assert image.shape == (8, 8, 1) and isinstance(label, int)
  # Train and test are disjoint and together the whole bundled set.
  from sklearn.datasets import load_digits
  bunch = load_digits()
  raw = np.round(bunch.images * 255 / 16).astype(np.uint8)[..., None]

  def rows(images, labels):
    return sorted(i.tobytes() + bytes([l]) for i, l in zip(images, labels))
  assert rows(np.concatenate([ds.train.images, ds.test.images]),
              np.concatenate([ds.train.labels, ds.test.labels])) == rows(
                  raw, bunch.target)
  # Statistics are those of the training images.
  np.testing.assert_allclose(ds.mean, [ds.train.images.mean() / 255],
                             rtol=1e-5)
  np.testing.assert_allclose(ds.std, [ds.train.images.std() / 255],
                             rtol=1e-4)
  assert ds.mean.dtype == np.float32 and ds.std.shape == (1,)


def test_digits_split_is_fixed():
  pytest.importorskip("sklearn")
  a, b = data.get("digits"), data.digits()
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  order = np.random.default_rng(0).permutation(1797)
  from sklearn.datasets import load_digits
  np.testing.assert_array_equal(a.test.labels,
                                load_digits().target[order[-449:]])


# ---------------------------------------------------------------- folders

def _png(rng, size, grey=False):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  shape = (size, size) if grey else (size, size, 3)
  return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _make_folder(root, classes=("zebra", "ant", "cat"), per_class=2):
  """Writes PNG (lossless) images, plus a non-image file to ignore."""
  rng = np.random.default_rng(0)
  pixels = {}
  for split in ("train", "test"):
    for cls in classes:
      os.makedirs(root / split / cls)
      for k in range(per_class):
        image = _png(rng, 6)
        image.save(root / split / cls / f"{k}.png")
        pixels[(split, cls, k)] = np.asarray(image)
  (root / "train" / classes[0] / "notes.txt").write_text("not an image")
  return pixels


def test_folder_reads_sorted_classes_and_exact_pixels(tmp_path):
  pytest.importorskip("PIL")
  pixels = _make_folder(tmp_path / "set")
  ds = data.get(f"folder:{tmp_path / 'set'}", cache_dir=str(tmp_path / "c"))
  assert ds.class_names == ("ant", "cat", "zebra")
  assert (ds.num_classes, ds.image_shape) == (3, (6, 6, 3))
  assert (ds.num_train, ds.num_test) == (6, 6)
  np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1, 2, 2])
  image, label = ds.test[4]
  assert label == 2
  np.testing.assert_array_equal(image, pixels[("test", "zebra", 0)])
  np.testing.assert_allclose(
      ds.mean, ds.train.images.reshape(-1, 3).mean(0) / 255, rtol=1e-5)


def test_folder_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
  pytest.importorskip("PIL")
  _make_folder(tmp_path / "set")
  monkeypatch.setenv("GAF_OPTAX_CACHE", str(tmp_path / "cache"))
  first = data.get(f"folder:{tmp_path / 'set'}")
  cached = os.listdir(tmp_path / "cache")
  assert len(cached) == 1 and cached[0].endswith(".npz")

  def no_decode(*args):
    raise AssertionError("decoded again despite the cache")
  monkeypatch.setattr(_sources, "_decode_image", no_decode)
  second = data.get(f"folder:{tmp_path / 'set'}")
  np.testing.assert_array_equal(first.train.images, second.train.images)
  np.testing.assert_array_equal(first.test.labels, second.test.labels)
  np.testing.assert_array_equal(first.std, second.std)

  # A changed file changes the key: decoded again (and the fake refuses).
  new = tmp_path / "set" / "test" / "cat" / "0.png"
  _png(np.random.default_rng(9), 6).save(new)
  os.utime(new, ns=(time.time_ns(), time.time_ns() + 10**9))
  with pytest.raises(AssertionError, match="decoded again"):
    data.get(f"folder:{tmp_path / 'set'}")


def test_folder_archive_read_in_place(tmp_path):
  pytest.importorskip("PIL")
  pixels = _make_folder(tmp_path / "set", classes=("b", "a"))
  archive = tmp_path / "set.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "set", arcname="top")  # Under one top folder.
  ds = data.get(f"folder:{archive}", cache_dir=str(tmp_path / "cache"))
  plain = data.get(f"folder:{tmp_path / 'set'}",
                   cache_dir=str(tmp_path / "cache"))
  assert ds.class_names == ("a", "b")
  np.testing.assert_array_equal(ds.train.images, plain.train.images)
  np.testing.assert_array_equal(ds.test.labels, plain.test.labels)
  np.testing.assert_array_equal(ds.train[0][0], pixels[("train", "a", 0)])
  assert sorted(os.listdir(tmp_path)) == ["cache", "set", "set.tar.gz"]


def _same_datasets(a, b):
  np.testing.assert_array_equal(a.train.images, b.train.images)
  np.testing.assert_array_equal(a.train.labels, b.train.labels)
  np.testing.assert_array_equal(a.test.images, b.test.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  np.testing.assert_array_equal(a.mean, b.mean)
  np.testing.assert_array_equal(a.std, b.std)
  assert a.class_names == b.class_names


def test_folder_decode_workers_give_the_one_process_arrays(tmp_path):
  pytest.importorskip("PIL")
  pixels = _make_folder(tmp_path / "set", per_class=4)
  rng = np.random.default_rng(1)  # A lossy JPEG and a grey image too.
  _png(rng, 6).save(tmp_path / "set" / "train" / "ant" / "j.jpg", quality=80)
  _png(rng, 6, grey=True).save(tmp_path / "set" / "test" / "cat" / "g.png")
  archive = tmp_path / "set.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "set", arcname="top")
  serial = data.get(f"folder:{archive}", cache_dir=str(tmp_path / "c1"))
  # Two processes (archive members travel to them as bytes).
  two = data.get(f"folder:{archive}", cache_dir=str(tmp_path / "c2"),
                 decode_workers=2)
  _same_datasets(two, serial)
  np.testing.assert_array_equal(two.train[5][0], pixels[("train", "cat", 0)])
  assert (two.num_train, two.num_test) == (13, 13)
  # The cache does not depend on the workers.
  assert os.listdir(tmp_path / "c1") == os.listdir(tmp_path / "c2")
  # A folder's files are read by the workers; a bad one is named.
  files = data.get(f"folder:{tmp_path / 'set'}", decode_workers=2,
                   cache_dir=str(tmp_path / "c3"))
  _same_datasets(files, serial)
  bad = tmp_path / "set" / "test" / "ant" / "bad.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(ValueError,
                     match="cannot decode image " + re.escape(str(bad))):
    data.get(f"folder:{tmp_path / 'set'}", decode_workers=2,
             cache_dir=str(tmp_path / "c3"))
  for wrong in (0, -1, 1.5, True, None):
    with pytest.raises(ValueError, match="decode_workers must be a positive "
                       f"int, got {wrong!r}"):
      data.get(f"folder:{archive}", decode_workers=wrong)


def _running(pid):
  """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_decode_workers_end_when_their_parent_dies(tmp_path):
  # A parent cut mid-decode (killed, or os._exit at a deadline) must not
  # leave its workers waiting for work forever.
  pytest.importorskip("PIL")
  _make_folder(tmp_path / "set")
  pids = tmp_path / "pids"
  code = f"""
import multiprocessing, os, threading, time
from gaf_optax import data

def die_once_the_workers_run():
  while len(multiprocessing.active_children()) < 2:
    time.sleep(0.01)
  with open({str(pids)!r}, "w") as f:
    f.write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
  os._exit(3)

threading.Thread(target=die_once_the_workers_run, daemon=True).start()
data.get({f"folder:{tmp_path / 'set'}"!r}, cache_dir={str(tmp_path / "c")!r},
         decode_workers=2)
"""
  log = tmp_path / "log"  # a file: a pipe would wait for the workers too
  with open(log, "wb") as out:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          timeout=60, stdout=out, stderr=out)
  assert proc.returncode == 3, log.read_text()[-2000:]
  workers = [int(p) for p in pids.read_text().split()]
  assert len(workers) == 2
  deadline = time.monotonic() + 20
  while any(map(_running, workers)) and time.monotonic() < deadline:
    time.sleep(0.1)
  left = [p for p in workers if _running(p)]
  for pid in left:
    os.kill(pid, signal.SIGKILL)
  assert not left, "decoding workers outlived their parent"


def test_folder_grey_images_have_one_channel(tmp_path):
  pytest.importorskip("PIL")
  rng = np.random.default_rng(1)
  for split in ("train", "test"):
    for cls in ("x", "y"):
      os.makedirs(tmp_path / split / cls)
      _png(rng, 5, grey=True).save(tmp_path / split / cls / "0.jpg", quality=95)
  ds = data.folder(str(tmp_path), cache_dir=str(tmp_path / ".cache"))
  assert ds.image_shape == (5, 5, 1) and ds.mean.shape == (1,)


def test_folder_without_test_split_is_a_clear_error(tmp_path):
  pytest.importorskip("PIL")
  os.makedirs(tmp_path / "train" / "a")
  _png(np.random.default_rng(0), 4).save(tmp_path / "train" / "a" / "0.png")
  with pytest.raises(ValueError, match=r"no test/ sub-folder.*PATH/test/"):
    data.get(f"folder:{tmp_path}", cache_dir=str(tmp_path / "c"))


def test_folder_without_images_is_a_clear_error(tmp_path):
  pytest.importorskip("PIL")
  for split in ("train", "test"):
    os.makedirs(tmp_path / split / "a")
    (tmp_path / split / "a" / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match=r"no images found under train/ and "
                     r"test/"):
    data.get(f"folder:{tmp_path}", cache_dir=str(tmp_path / "c"))


def test_folder_missing_path_and_mixed_sizes(tmp_path):
  pytest.importorskip("PIL")
  with pytest.raises(FileNotFoundError, match="does not exist; folder:PATH "
                     "wants PATH/train/<class>/<image>"):
    data.get(f"folder:{tmp_path / 'nope'}")
  rng = np.random.default_rng(0)
  for split, size in (("train", 4), ("test", 4)):
    os.makedirs(tmp_path / split / "a")
    _png(rng, size).save(tmp_path / split / "a" / "0.png")
  _png(rng, 7).save(tmp_path / "train" / "a" / "1.png")
  with pytest.raises(ValueError, match="differ in shape"):
    data.folder(str(tmp_path), lazy=False, cache_dir=str(tmp_path / "c"))
  # Without lazy=False, mixed sizes are read lazily and cropped.
  ds = data.get(f"folder:{tmp_path}", cache_dir=str(tmp_path / "c"))
  assert ds.image_shape == (224, 224, 3) and ds.num_train == 2


@pytest.mark.skipif(not os.path.exists(CIFAR_TAR),
                    reason="shared/data/cifar10-jpeg.tar.gz not present")
def test_cifar10_archive_members_decode():
  """The first members of the shared CIFAR-10 archive (streamed, not all)."""
  pytest.importorskip("PIL")
  members = []
  for member in _sources._listing_tar(CIFAR_TAR, _sources._image_extensions()):
    members.append(member)
    if len(members) == 20:
      break
  for split, cls, name, raw in members:
    assert split in ("train", "test") and cls in CIFAR_CLASSES
    image = _sources._decode_image(raw, name)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image.std() > 0


# ---------------------------------------------------------------- registry

def test_unknown_name_lists_known_ones():
  with pytest.raises(ValueError) as e:
    data.get("cifar11")
  for name in ("digits", "cifar10", "cifar100", "imagenet2012", "tfds:",
               "folder:"):
    assert name in str(e.value)
  assert set(data.known_datasets()) >= {"digits", "cifar10", "imagenet2012"}


def test_array_source_checks_lengths():
  with pytest.raises(ValueError, match="3 images but 2 labels"):
    data.ArraySource(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2))
