"""Image folders: symlinks, empty class folders, EXIF, damaged caches, sizes."""

import glob
import io
import os
import tarfile
import warnings

import numpy as np
import pytest

from gaf_optax import data
from gaf_optax.data import _sources
from gaf_optax.data import _subset

Image = pytest.importorskip("PIL.Image")


def _write_pngs(folder, rng, count=2, size=(4, 4)):
  """``count`` random RGB PNGs in ``folder``; their pixels, by file name."""
  os.makedirs(folder, exist_ok=True)
  out = {}
  for k in range(count):
    pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f"{k}.png"))
    out[f"{k}.png"] = pixels
  return out


def _load(root, tmp_path, lazy):
  return data.folder(str(root), cache_dir=str(tmp_path / "cache"), lazy=lazy,
                     crop_size=4)


def _train_images(ds):
  """Every training image and label, decoded as stored (no host crop)."""
  if isinstance(ds.train, data.ArraySource):
    return ds.train.images, ds.train.labels
  records = ds.train.records
  return (np.stack([records[i]["image"] for i in range(len(records))]),
          np.array(records.labels))


# --------------------------------------------------------------------------
# symlinks


@pytest.mark.parametrize("lazy", [False, True])
def test_symlinked_class_folder_is_a_class(tmp_path, lazy):
  # train/a is a link to a folder elsewhere, train/b a real folder; test/
  # has both (on the old code: "test/ has classes not in train/: ['a']").
  rng = np.random.default_rng(0)
  outside = _write_pngs(tmp_path / "elsewhere" / "a_images", rng)
  root = tmp_path / "set"
  os.makedirs(root / "train")
  os.symlink(tmp_path / "elsewhere" / "a_images", root / "train" / "a")
  real_b = _write_pngs(root / "train" / "b", rng)
  _write_pngs(root / "test" / "a", rng, count=1)
  _write_pngs(root / "test" / "b", rng, count=1)
  ds = _load(root, tmp_path, lazy)
  assert ds.class_names == ("a", "b") and ds.num_classes == 2
  assert (ds.num_train, ds.num_test) == (4, 2)
  images, labels = _train_images(ds)
  want = np.stack([outside["0.png"], outside["1.png"], real_b["0.png"],
                   real_b["1.png"]])
  np.testing.assert_array_equal(images, want)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])


def test_symlinked_class_folder_with_no_test_twin_is_kept(tmp_path):
  # The case: classes=('b',) from a folder with a -> ... and b.
  rng = np.random.default_rng(1)
  _write_pngs(tmp_path / "elsewhere", rng)
  root = tmp_path / "set"
  os.makedirs(root / "train")
  os.symlink(tmp_path / "elsewhere", root / "train" / "a")
  _write_pngs(root / "train" / "b", rng)
  _write_pngs(root / "test" / "b", rng, count=1)
  ds = _load(root, tmp_path, False)
  assert ds.class_names == ("a", "b")
  np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1])
  np.testing.assert_array_equal(ds.test.labels, [1])


@pytest.mark.parametrize("lazy", [False, True])
def test_symlinked_image_file_is_read(tmp_path, lazy):
  rng = np.random.default_rng(2)
  root = tmp_path / "set"
  real = _write_pngs(root / "train" / "a", rng, count=1)
  _write_pngs(root / "train" / "b", rng, count=1)
  _write_pngs(root / "test" / "a", rng, count=1)
  extra = _write_pngs(tmp_path / "elsewhere", rng, count=1)
  os.symlink(tmp_path / "elsewhere" / "0.png", root / "train" / "a" / "1.png")
  ds = _load(root, tmp_path, lazy)
  images, labels = _train_images(ds)
  assert ds.num_train == 3
  np.testing.assert_array_equal(images[:2],
                                np.stack([real["0.png"], extra["0.png"]]))
  np.testing.assert_array_equal(labels, [0, 0, 1])


@pytest.mark.parametrize("lazy", [False, True])
def test_link_loop_is_an_error_naming_the_link(tmp_path, lazy):
  rng = np.random.default_rng(3)
  root = tmp_path / "set"
  _write_pngs(root / "train" / "a", rng)
  _write_pngs(root / "test" / "a", rng)
  os.symlink(root / "train", root / "train" / "a" / "again")
  with pytest.raises(ValueError, match=r"folder link .*a/again.* link loop"):
    _load(root, tmp_path, lazy)


# --------------------------------------------------------------------------
# empty class folders


@pytest.mark.parametrize("lazy", [False, True])
def test_empty_class_folder_is_refused_not_dropped(tmp_path, lazy):
  # Dropping train/b would make c label 1 although it is the third folder.
  rng = np.random.default_rng(4)
  root = tmp_path / "set"
  for c in ("a", "c"):
    _write_pngs(root / "train" / c, rng)
    _write_pngs(root / "test" / c, rng, count=1)
  os.makedirs(root / "train" / "b")
  (root / "train" / "b" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=r"class folders without images: "
                     r"train/b/ .*renumber"):
    _load(root, tmp_path, lazy)


def test_empty_class_folder_in_an_archive_is_refused(tmp_path):
  rng = np.random.default_rng(5)
  src = tmp_path / "src"
  for c in ("a", "c"):
    _write_pngs(src / "train" / c, rng)
    _write_pngs(src / "test" / c, rng, count=1)
  os.makedirs(src / "train" / "b")
  archive = tmp_path / "set.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(src / "train", "train")
    tar.add(src / "test", "test")
  with pytest.raises(ValueError, match=r"without images: train/b/"):
    data.folder(str(archive), cache_dir=str(tmp_path / "cache"))


def test_empty_class_folder_added_after_caching_is_seen(tmp_path):
  rng = np.random.default_rng(6)
  root = tmp_path / "set"
  for c in ("a", "c"):
    _write_pngs(root / "train" / c, rng)
    _write_pngs(root / "test" / c, rng, count=1)
  assert _load(root, tmp_path, False).class_names == ("a", "c")
  os.makedirs(root / "train" / "b")
  with pytest.raises(ValueError, match=r"train/b/"):
    _load(root, tmp_path, False)


def test_empty_test_class_folder_keeps_the_train_labels(tmp_path):
  rng = np.random.default_rng(7)
  root = tmp_path / "set"
  for c in ("a", "b", "c"):
    _write_pngs(root / "train" / c, rng, count=1)
  _write_pngs(root / "test" / "c", rng, count=1)
  os.makedirs(root / "test" / "a")  # no test images of a: allowed
  ds = _load(root, tmp_path, False)
  assert ds.class_names == ("a", "b", "c")
  np.testing.assert_array_equal(ds.test.labels, [2])
  os.makedirs(root / "test" / "z")  # a test class train/ does not have
  with pytest.raises(ValueError, match=r"test/ .* classes not in train/: "
                     r"\['z'\]"):
    _load(root, tmp_path, False)


# --------------------------------------------------------------------------
# EXIF orientation

# What each EXIF orientation asks a viewer to do to the stored pixels.
_SHOWN = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # a quarter turn clockwise
    8: lambda a: np.rot90(a, 1),
}


def _jpeg(pixels, orientation):
  im = Image.fromarray(pixels)
  exif = im.getexif()
  if orientation is not None:
    exif[0x0112] = orientation
  out = io.BytesIO()
  im.save(out, "JPEG", quality=95, exif=exif)
  return out.getvalue()


def _stored(jpeg):
  with Image.open(io.BytesIO(jpeg)) as im:
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("orientation", sorted(_SHOWN))
def test_exif_orientation_is_applied(orientation):
  rng = np.random.default_rng(orientation)
  jpeg = _jpeg(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8), orientation)
  got = _sources._decode_image(jpeg, "x.jpg")
  np.testing.assert_array_equal(got, _SHOWN[orientation](_stored(jpeg)))


@pytest.mark.parametrize("lazy", [None, False, True])
def test_folder_reads_sideways_photos_upright(tmp_path, lazy):
  # Each class holds a 16x8 photo stored sideways (orientation 6) and an
  # 8x16 one stored upright: both are shown 8 wide and 16 high, so the
  # folder has one image size and (lazy=None) is cached, not lazy.
  rng = np.random.default_rng(8)
  root = tmp_path / "set"
  shown = {}
  for split in ("train", "test"):
    for c in ("a", "b"):
      os.makedirs(root / split / c)
      side = _jpeg(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8), 6)
      upright = _jpeg(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8), None)
      for name, jpeg in (("0.jpg", side), ("1.jpg", upright)):
        (root / split / c / name).write_bytes(jpeg)
      shown[split, c] = [np.rot90(_stored(side), -1), _stored(upright)]
  ds = data.folder(str(root), cache_dir=str(tmp_path / "cache"), lazy=lazy,
                   crop_size=4)
  assert isinstance(ds.train, data.ArraySource) == (not lazy)
  images, labels = _train_images(ds)
  np.testing.assert_array_equal(
      images, np.stack(shown["train", "a"] + shown["train", "b"]))
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])
  if not lazy:
    assert ds.image_shape == (16, 8, 3)


# --------------------------------------------------------------------------
# a damaged decoded-image cache


def _truncate(path):
  with open(path, "rb") as f:
    good = f.read()
  with open(path, "wb") as f:
    f.write(good[:len(good) // 2])


def _wrong_keys(path):
  with open(path, "wb") as f:
    np.savez(f, images=np.zeros((2, 4, 4, 3), np.uint8))


def _bare_array(path):
  with open(path, "wb") as f:
    np.save(f, np.zeros(3))


def _label_out_of_range(path):
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["train_labels"] = arrays["train_labels"] + 5
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _empty_file(path):
  with open(path, "wb"):
    pass


@pytest.mark.parametrize("damage", [_truncate, _wrong_keys, _bare_array,
                                    _label_out_of_range, _empty_file])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
  rng = np.random.default_rng(9)
  root = tmp_path / "set"
  for c in ("a", "b"):
    _write_pngs(root / "train" / c, rng)
    _write_pngs(root / "test" / c, rng, count=1)
  ref = _load(root, tmp_path, False)
  cache_file, = glob.glob(str(tmp_path / "cache" / "*.npz"))
  damage(cache_file)
  with pytest.warns(RuntimeWarning, match=(
      r"decoded-image cache .*" + os.path.basename(cache_file) +
      r" is damaged")):
    ds = _load(root, tmp_path, False)
  for split in ("train", "test"):
    np.testing.assert_array_equal(getattr(ds, split).images,
                                  getattr(ref, split).images)
    np.testing.assert_array_equal(getattr(ds, split).labels,
                                  getattr(ref, split).labels)
  assert ds.class_names == ref.class_names
  # Rewritten: the next load reads it without a warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    again = _load(root, tmp_path, False)
  np.testing.assert_array_equal(again.train.images, ref.train.images)


# --------------------------------------------------------------------------
# sizes checked by value


def test_huge_image_size_is_refused_naming_bytes_and_range():
  # It used to abort the process inside XLA (buffer_.IsConcrete, SIGABRT).
  with pytest.raises(ValueError, match=(
      r"image_size=100000 is too large for 'digits': resizing its 1348 \+ "
      r"449 images to 100000x100000x1 needs about 125,810,000,000,000 "
      r"bytes.*image_size must be in 1\.\.\d+ here")):
    data.get("digits", image_size=100000)


def test_image_size_bound_is_exact(monkeypatch):
  # digits: (1348 + 449) uint8 pixels + 8 work bytes x 1348 per output pixel.
  per_pixel = 1348 + 449 + 8 * 1348
  monkeypatch.setattr(_subset, "host_memory_bytes", lambda: per_pixel * 144)
  assert data.get("digits", image_size=12).image_shape == (12, 12, 1)
  with pytest.raises(ValueError, match=r"needs about 2,126,189 bytes.*"
                     r"host's 1,811,664 bytes.*must be in 1\.\.12 here"):
    data.get("digits", image_size=13)
  # A subset is sized by its own counts: 100 + 50 images.
  small = 100 + 50 + 8 * 100
  monkeypatch.setattr(_subset, "host_memory_bytes", lambda: small * 400)
  assert data.get("digits", train_size=100, test_size=50,
                  image_size=20).image_shape == (20, 20, 1)
  with pytest.raises(ValueError, match=r"100 \+ 50 images.*1\.\.20 here"):
    data.get("digits", train_size=100, test_size=50, image_size=21)


@pytest.mark.parametrize("bad", [True, 0, -3, 2.0, "16"])
def test_image_size_must_be_a_positive_int(bad):
  with pytest.raises(ValueError, match=r"image_size must be a positive int"):
    data.get("digits", image_size=bad)


def test_huge_lazy_crop_size_is_refused(tmp_path):
  rng = np.random.default_rng(10)
  root = tmp_path / "set"
  for c in ("a", "b"):
    _write_pngs(root / "train" / c, rng)
    _write_pngs(root / "test" / c, rng, count=1)
  with pytest.raises(ValueError, match=(
      r"crop_size=100000 is too large: the statistics of 4 100000x100000x3 "
      r"crops .* need about 240,000,000,000 bytes.*crop_size must be in "
      r"1\.\.\d+ here")):
    data.folder(str(root), lazy=True, crop_size=100000)
