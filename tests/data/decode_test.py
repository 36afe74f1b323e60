"""Image folders lose or corrupt nothing silently: depths, archives, channels.

16-bit images are scaled (not clipped), float images are refused, a truncated
or damaged archive is an error naming it, both splits share the channel count
the training split decides, and the cache hides none of it.
"""

import gzip
import io
import os
import re
import tarfile

import numpy as np
import pytest

from gaf_optax import data

Image = pytest.importorskip("PIL.Image")

# 16-bit samples and their 8-bit values: the top byte, v >> 8.
SIXTEEN = np.array([[0, 255, 256, 32767], [32768, 40000, 65280, 65535]],
                   np.uint16)
EIGHT = np.array([[0, 0, 1, 127], [128, 156, 255, 255]], np.uint8)


def _encode(image, fmt="PNG"):
  if fmt == "PPM" and image.mode == "I;16":
    # A 16-bit PGM by hand (P5, maxval 65535, big-endian samples): older
    # Pillow releases (10.0) cannot write one.
    samples = np.asarray(image, np.uint16)
    h, w = samples.shape
    return f"P5\n{w} {h}\n65535\n".encode() + samples.astype(">u2").tobytes()
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


def _rgb(rng, size=4):
  return Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8))


def _grey(rng, size=4):
  return Image.fromarray(rng.integers(0, 256, (size, size), np.uint8))


def _write(root, files):
  """Writes ``{relative path: bytes}`` under ``root``."""
  for rel, raw in files.items():
    os.makedirs(os.path.dirname(root / rel), exist_ok=True)
    (root / rel).write_bytes(raw)


def _dataset_files(fmt="PNG", ext="png", per_class=3):
  """``{train|test/<class>/<k>.ext: bytes}``, colour images, 2 classes."""
  rng = np.random.default_rng(0)
  return {f"{split}/{cls}/{k}.{ext}": _encode(_rgb(rng), fmt)
          for split in ("train", "test") for cls in ("a", "b")
          for k in range(per_class)}


def _tar(files):
  """An uncompressed tar of ``files`` and the byte offset after each member."""
  buf = io.BytesIO()
  ends = []
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for name, raw in files.items():
      info = tarfile.TarInfo(name)
      info.size, info.mtime = len(raw), 0
      tar.addfile(info, io.BytesIO(raw))
      ends.append(tar.offset)
  return buf.getvalue(), ends


def _load(path, tmp_path):
  return data.folder(str(path), cache_dir=str(tmp_path / "cache"))


def _named(path):
  """A ``match`` pattern: the archive's path and that it is truncated."""
  return re.escape(repr(str(path))) + r" is truncated or damaged.*Re-download"


# ---------------------------------------------------------------- bit depth


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("TIFF", "tif"),
                                     ("PPM", "pgm")])
def test_sixteen_bit_grey_keeps_the_top_byte(tmp_path, fmt, ext):
  sixteen = Image.fromarray(SIXTEEN)
  assert sixteen.mode == "I;16"
  with Image.open(io.BytesIO(_encode(sixteen, fmt))) as im:
    assert im.mode in ("I;16", "I")  # PGM opens as "I", 0..65535.
  _write(tmp_path / "set", {f"{split}/a/0.{ext}": _encode(sixteen, fmt)
                            for split in ("train", "test")})
  ds = _load(tmp_path / "set", tmp_path)
  assert ds.image_shape == (2, 4, 1)
  np.testing.assert_array_equal(ds.train.images[0, :, :, 0], EIGHT)
  np.testing.assert_array_equal(ds.test.images[0, :, :, 0], EIGHT)
  assert ds.train.images[0, 1, 3, 0] == 255  # 65535
  assert ds.train.images[0, 1, 0, 0] == 128  # 32768


def test_float_tiff_is_refused_naming_the_file(tmp_path):
  rng = np.random.default_rng(0)
  floats = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32))
  assert floats.mode == "F"
  _write(tmp_path / "set", {"train/a/0.png": _encode(_grey(rng, 2)),
                            "train/a/depth.tif": _encode(floats, "TIFF"),
                            "test/a/0.png": _encode(_grey(rng, 2))})
  with pytest.raises(ValueError, match=r"train/a/depth\.tif is a "
                     r"floating-point image \(Pillow mode 'F'.*range is "
                     r"unknown"):
    _load(tmp_path / "set", tmp_path)
  assert not os.path.exists(tmp_path / "cache")  # Nothing cached.


def test_thirty_two_bit_integer_tiff_is_refused(tmp_path):
  wide = Image.fromarray(np.array([[0, 70000]], np.int32))
  assert wide.mode == "I"
  _write(tmp_path / "set", {"train/a/0.tif": _encode(wide, "TIFF"),
                            "test/a/0.tif": _encode(wide, "TIFF")})
  with pytest.raises(ValueError, match=r"train/a/0\.tif is a 32-bit integer "
                     r"image \(Pillow mode 'I'"):
    _load(tmp_path / "set", tmp_path)


# ---------------------------------------------------------------- archives


def test_intact_archives_load_every_image(tmp_path):
  files = _dataset_files()
  raw, _ = _tar(files)
  (tmp_path / "set.tar").write_bytes(raw)
  (tmp_path / "set.tar.gz").write_bytes(gzip.compress(raw))
  _write(tmp_path / "set", files)
  plain = _load(tmp_path / "set", tmp_path)
  for name in ("set.tar", "set.tar.gz"):
    ds = _load(tmp_path / name, tmp_path)
    assert (ds.num_train, ds.num_test) == (6, 6)
    np.testing.assert_array_equal(ds.train.images, plain.train.images)
    np.testing.assert_array_equal(ds.test.labels, plain.test.labels)


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("members", [0, 1, 5, 11])
def test_archive_cut_at_a_member_boundary_is_an_error(tmp_path, compressed,
                                                      members):
  raw, ends = _tar(_dataset_files())
  cut = raw[:ends[members - 1]] if members else b""
  path = tmp_path / ("cut.tar.gz" if compressed else "cut.tar")
  path.write_bytes(gzip.compress(cut) if compressed else cut)
  with pytest.raises(ValueError, match=_named(path)):
    _load(path, tmp_path)
  assert not os.path.exists(tmp_path / "cache")  # Nothing cached.


def test_tar_cut_inside_a_member_is_an_error(tmp_path):
  raw, ends = _tar(_dataset_files())
  for where in (ends[3] + 100, ends[3] + 700):  # In a header, in the data.
    path = tmp_path / f"cut{where}.tar"
    path.write_bytes(raw[:where])
    with pytest.raises(ValueError, match=_named(path)):
      _load(path, tmp_path)


@pytest.mark.parametrize("keep", ["half", "all_but_trailer_byte",
                                  "all_but_size"])
def test_compressed_bytes_cut_are_an_error(tmp_path, keep):
  packed = gzip.compress(_tar(_dataset_files())[0])
  stop = {"half": len(packed) // 2, "all_but_trailer_byte": len(packed) - 1,
          "all_but_size": len(packed) - 4}[keep]
  path = tmp_path / "cut.tar.gz"
  path.write_bytes(packed[:stop])
  with pytest.raises(ValueError, match=_named(path)):
    _load(path, tmp_path)


def test_corrupt_compressed_byte_is_an_error(tmp_path):
  packed = bytearray(gzip.compress(_tar(_dataset_files())[0]))
  packed[len(packed) // 2] ^= 0xFF
  path = tmp_path / "bad.tgz"
  path.write_bytes(bytes(packed))
  with pytest.raises(ValueError, match=_named(path)):
    _load(path, tmp_path)


# ---------------------------------------------------------------- channels


def test_grey_train_makes_a_colour_test_image_grey(tmp_path):
  rng = np.random.default_rng(3)
  colour = _rgb(rng)
  files = {f"train/{c}/{k}.png": _encode(_grey(rng)) for c in "ab"
           for k in range(2)}
  files.update({"test/a/0.png": _encode(_grey(rng)),
                "test/b/0.png": _encode(colour)})
  _write(tmp_path / "set", files)
  ds = _load(tmp_path / "set", tmp_path)
  assert ds.image_shape == (4, 4, 1)
  assert ds.train.images.shape[1:] == ds.test.images.shape[1:] == (4, 4, 1)
  # Pillow's "L" conversion: L = R * 299/1000 + G * 587/1000 + B * 114/1000.
  expected = np.asarray(colour.convert("L"))
  np.testing.assert_array_equal(ds.test.images[1, :, :, 0], expected)
  rgb = np.asarray(colour).astype(np.float64)
  luma = rgb @ np.array([0.299, 0.587, 0.114])
  assert np.abs(expected - luma).max() <= 1
  assert ds.test.labels.tolist() == [0, 1]


def test_colour_train_makes_grey_test_images_colour(tmp_path):
  rng = np.random.default_rng(4)
  grey = _grey(rng)
  _write(tmp_path / "set", {"train/a/0.png": _encode(_rgb(rng)),
                            "train/a/1.png": _encode(_grey(rng)),
                            "test/a/0.png": _encode(grey)})
  ds = _load(tmp_path / "set", tmp_path)
  assert ds.image_shape == (4, 4, 3) and ds.test.images.shape == (1, 4, 4, 3)
  np.testing.assert_array_equal(ds.test.images[0], np.asarray(grey.convert(
      "RGB")))


# ---------------------------------------------------------------- cache


def test_changed_archive_of_same_size_and_mtime_is_decoded_again(tmp_path):
  """BMPs in a plain tar: the new archive has the very same size."""
  first = _dataset_files("BMP", "bmp", per_class=1)
  second = dict(first)
  second["train/a/0.bmp"] = _encode(Image.new("RGB", (4, 4), (9, 8, 7)),
                                    "BMP")
  path = tmp_path / "set.tar"
  path.write_bytes(_tar(first)[0])
  stat = os.stat(path)
  before = _load(path, tmp_path)
  assert before.train.images[0, 0, 0].tolist() != [9, 8, 7]
  path.write_bytes(_tar(second)[0])
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.stat(path).st_size == stat.st_size
  after = _load(path, tmp_path)
  assert (after.train.images[0] == [9, 8, 7]).all()
  assert len(os.listdir(tmp_path / "cache")) == 2


def test_cache_does_not_hide_an_archive_damaged_in_place(tmp_path):
  """Same size, same mtime, a cached decode: still an error naming it."""
  packed = gzip.compress(_tar(_dataset_files())[0])
  path = tmp_path / "set.tar.gz"
  path.write_bytes(packed)
  stat = os.stat(path)
  assert _load(path, tmp_path).num_train == 6  # Decoded and cached.
  half = len(packed) // 2
  path.write_bytes(packed[:half] + bytes(len(packed) - half))
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  with pytest.raises(ValueError, match=_named(path)):
    _load(path, tmp_path)
  with pytest.raises(ValueError, match=_named(path)):  # And again: no cache.
    _load(path, tmp_path)
  assert len(os.listdir(tmp_path / "cache")) == 1
