"""Lazy image folders (ImageFolder layout, mixed sizes) and Grain workers."""

import os
import tarfile

import numpy as np
import pytest

from gaf_optax import data
from gaf_optax.data import _host
from gaf_optax.data import _sources

PIL = pytest.importorskip("PIL")
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

CLASSES = ("n01440764", "n01443537", "n01484850")  # sorted, as WordNet ids


def _imagenet_like(root, per_class=(4, 2), sizes=((40, 30), (25, 50),
                                                  (64, 48), (33, 33))):
  """train/<wnid>/*.JPEG and test/<wnid>/*.JPEG of several sizes."""
  rng = np.random.default_rng(0)
  k = 0
  for split, count in zip(("train", "test"), per_class):
    for wnid in CLASSES:
      os.makedirs(os.path.join(root, split, wnid))
      for j in range(count):
        w, h = sizes[k % len(sizes)]
        k += 1
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mode = "L" if k % 5 == 0 else "RGB"  # some grey images, as ImageNet
        image = Image.fromarray(pixels).convert(mode)
        image.save(os.path.join(root, split, wnid, f"{wnid}_{j}.JPEG"))
  return str(root)


def _decoded(path):
  return _sources._to_channels(_sources._decode_image(path, path), 3)


def test_mixed_sizes_read_lazily_with_the_reference_crops(tmp_path):
  root = _imagenet_like(tmp_path)
  ds = data.folder(root, crop_size=16)
  assert isinstance(ds.train, data.RecordSource)
  assert ds.image_shape == (16, 16, 3) and ds.class_names == CLASSES
  assert (ds.num_train, ds.num_test, ds.num_classes) == (12, 6, 3)
  files, labels = ds.test.records.files, ds.test.records.labels
  assert labels == (0, 0, 1, 1, 2, 2)
  assert all(f.endswith(".JPEG") and CLASSES[y] in f
             for f, y in zip(files, labels))
  # Test: shorter side to round(16 * 256 / 224) = 18, then the centre 16.
  for i in range(ds.num_test):
    image, label = ds.test[i]
    np.testing.assert_array_equal(
        image, data.center_crop(_decoded(files[i]), size=16, resize=18))
    assert label == labels[i]
  # Train: random-resized crop keyed by (seed, epoch, index), whatever the
  # batch; grey files come out as RGB.
  batch = next(data.batches(ds.train, 4, seed=3, epoch=1))
  order = data.epoch_order(12, seed=3, epoch=1)
  for row, index in enumerate(order[:4]):
    ref = data.random_resized_crop(
        _decoded(ds.train.records.files[index]),
        np.random.default_rng([3, 1, int(index)]), size=16)
    np.testing.assert_array_equal(batch["image"][row], ref)
    assert batch["label"][row] == ds.train.records.labels[index]
  # Statistics: centre crops of the (here: all) training images.
  crops = np.stack([data.center_crop(_decoded(f), size=16, resize=18)
                    for f in ds.train.records.files])
  mean, std = _sources.channel_stats(crops)
  np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)
  np.testing.assert_allclose(ds.std, std, rtol=1e-6)


def test_when_a_folder_is_cached_and_when_lazy(tmp_path):
  rng = np.random.default_rng(1)
  for split in ("train", "test"):
    for cls in ("a", "b"):
      os.makedirs(tmp_path / "same" / split / cls)
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
          tmp_path / "same" / split / cls / "0.png")
  same = str(tmp_path / "same")
  cache = str(tmp_path / "cache")
  small = data.folder(same, cache_dir=cache)
  assert isinstance(small.train, data.ArraySource)  # one size, small: cached
  assert small.image_shape == (8, 8, 3)
  big = data.folder(same, cache_dir=cache, max_cache_bytes=4 * 8 * 8 * 3 - 1)
  assert isinstance(big.train, data.RecordSource)  # too large to hold
  assert big.image_shape == (224, 224, 3)
  forced = data.folder(same, cache_dir=cache, lazy=True, crop_size=8)
  assert isinstance(forced.train, data.RecordSource)
  archive = str(tmp_path / "same.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(same, arcname="same")
  assert data.folder(archive, cache_dir=cache).image_shape == (8, 8, 3)
  # lazy=True unpacks it; lazy=None then decides as for that folder: cached.
  forced = data.folder(archive, cache_dir=cache, lazy=True, crop_size=8)
  assert isinstance(forced.train, data.RecordSource)
  assert isinstance(data.folder(archive, cache_dir=cache).train,
                    data.ArraySource)


def _tar(folder, archive):
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="imagenet_like")
  return str(archive)


def _assert_same(a, b):
  assert (a.image_shape, a.class_names, a.num_train, a.num_test) == (
      b.image_shape, b.class_names, b.num_train, b.num_test)
  np.testing.assert_array_equal(a.mean, b.mean)
  np.testing.assert_array_equal(a.std, b.std)
  for split in ("train", "test"):
    kw = dict(seed=3, epoch=1, num_epochs=2)
    got = list(data.batches(getattr(a, split), 4, **kw))
    ref = list(data.batches(getattr(b, split), 4, **kw))
    assert len(got) == len(ref) > 0
    for x, y in zip(got, ref):
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])


def test_an_archive_of_mixed_sizes_loads_as_its_folder(tmp_path,
                                                       monkeypatch):
  root = _imagenet_like(tmp_path / "folder")
  archive = _tar(root, tmp_path / "set.tar.gz")
  cache = str(tmp_path / "cache")
  ref = data.folder(root, crop_size=16)
  ds = data.get(f"folder:{archive}", cache_dir=cache)  # the default: lazy
  assert isinstance(ds.train, data.RecordSource)
  assert ds.name == f"folder:{archive}"
  ds16 = data.folder(archive, cache_dir=cache, crop_size=16)
  _assert_same(ds16, ref)
  assert ds.image_shape == (224, 224, 3)
  # Unpacked once, atomically: one folder and no temporary left; a second
  # load reads that folder, not the archive's members.
  (unpacked,) = os.listdir(cache)
  assert unpacked.startswith("archive-")
  assert all(f.startswith(os.path.join(cache, unpacked))
             for f in ds16.train.records.files)

  def no_read(*args, **kwargs):
    raise AssertionError("the archive was read again")

  monkeypatch.setattr(_sources, "_listing_tar", no_read)
  _assert_same(data.folder(archive, cache_dir=cache, crop_size=16), ref)
  # A changed archive has another key: unpacked again.
  monkeypatch.undo()
  os.remove(os.path.join(root, "train", CLASSES[0],
                         f"{CLASSES[0]}_0.JPEG"))
  _tar(root, archive)
  again = data.folder(archive, cache_dir=cache, crop_size=16)
  assert again.num_train == 11 and len(os.listdir(cache)) == 2


def test_a_mixed_size_archive_with_lazy_false_is_one_short_line(tmp_path):
  root = _imagenet_like(tmp_path / "folder")
  archive = _tar(root, tmp_path / "set.tar.gz")
  with pytest.raises(ValueError) as e:
    data.folder(archive, cache_dir=str(tmp_path / "cache"), lazy=False)
  message = str(e.value)
  assert "\n" not in message and len(message) < 400, message
  assert "4 shapes" in message and "lazy=None" in message


def test_a_damaged_mixed_size_archive_is_an_error_and_leaves_no_folder(
    tmp_path):
  root = _imagenet_like(tmp_path / "folder")
  archive = _tar(root, tmp_path / "set.tar.gz")
  with open(archive, "rb") as f:
    raw = f.read()
  with open(archive, "wb") as f:
    f.write(raw[:len(raw) - 100])  # cut: gzip's checksum and end are gone
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match="truncated or damaged"):
    data.folder(archive, cache_dir=str(cache), lazy=True)
  assert os.listdir(cache) == []


@pytest.mark.parametrize("kwargs,match", [
    ({"lazy": "yes"}, "lazy must be None, True or False"),
    ({"crop_size": 0}, "crop_size must be a positive int"),
    ({"max_cache_bytes": -1}, "max_cache_bytes must be an int >= 0"),
])
def test_bad_folder_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.folder(str(tmp_path), **kwargs)


def test_a_lazy_folder_needs_both_splits(tmp_path):
  root = _imagenet_like(tmp_path)
  for name in os.listdir(os.path.join(root, "test")):
    for f in os.listdir(os.path.join(root, "test", name)):
      os.remove(os.path.join(root, "test", name, f))
  with pytest.raises(ValueError, match="no images found under test/"):
    data.folder(root, lazy=True)


def test_grain_workers_give_the_in_process_stream(tmp_path):
  """Worker processes, epochs in one stream, a resume point, two hosts."""
  ds = data.folder(_imagenet_like(tmp_path), crop_size=16)
  kw = dict(seed=5, epoch=1, start_batch=1, num_epochs=2, process_index=1,
            process_count=2)
  ref = list(data.batches(ds.train, 4, **kw))
  got = list(data.batches(ds.train, 4, num_workers=2, **kw))
  assert len(ref) == len(got) == 2 * 3 - 1
  for x, y in zip(ref, got):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # The stream crosses into the next epoch's order.
  whole = list(data.batches(ds.train, 4, seed=5, epoch=2, process_index=1,
                            process_count=2))
  np.testing.assert_array_equal(ref[2]["image"], whole[0]["image"])
  del got  # Grain's shared-memory batches are freed before exit.


def test_bad_batches_arguments_fail_at_the_call():
  src = data.ArraySource(np.zeros((4, 1, 1, 1), np.uint8), np.arange(4))
  with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
    data.batches(src, 2, seed=0, epoch=0, num_workers=-1)
  with pytest.raises(ValueError, match="num_epochs must be an int >= 1"):
    data.batches(src, 2, seed=0, epoch=0, num_epochs=0)


def test_crops_are_picklable_for_workers():
  import pickle  # pylint: disable=g-import-not-at-top
  train_fn, eval_fn = _host.crops(16)
  image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
  for fn in (train_fn, eval_fn):
    again = pickle.loads(pickle.dumps(fn))
    np.testing.assert_array_equal(
        again(image, np.random.default_rng(0)),
        fn(image, np.random.default_rng(0)))
