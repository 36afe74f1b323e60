"""The generated 28x28 sets: shapes, balance, determinism, no leakage."""

import hashlib

import numpy as np
import pytest

from gaf_optax import data


def _digest(ds):
  h = hashlib.sha256()
  for src in (ds.train, ds.test):
    h.update(src.images.tobytes())
    h.update(src.labels.tobytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def sets():
  return {"digits28": data.get("digits28"), "shapes28": data.get("shapes28")}


def test_shapes_sizes_balance_and_statistics(sets):
  d, s = sets["digits28"], sets["shapes28"]
  assert (d.num_train, d.num_test) == (2 * 1348, 2 * 449)
  assert (s.num_train, s.num_test) == (2000, 2000)
  digits = data.get("digits")
  for ds in (d, s):
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    for src in (ds.train, ds.test):
      assert src.images.shape[1:] == (28, 28, 1)
      assert src.images.dtype == np.uint8 and src.labels.dtype == np.int32
      # Strokes reach near full scale; the background is near 0.
      assert src.images.max() >= 200 and np.median(src.images) < 40
    x = ds.train.images.astype(np.float64) / 255
    np.testing.assert_allclose(ds.mean, [x.mean()], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [x.std()], rtol=1e-4)
  # digits28 keeps digits' labels, in the same order, twice.
  np.testing.assert_array_equal(d.train.labels,
                                np.tile(digits.train.labels, 2))
  np.testing.assert_array_equal(d.test.labels, np.tile(digits.test.labels, 2))
  np.testing.assert_array_equal(np.bincount(s.train.labels), [200] * 10)
  np.testing.assert_array_equal(np.bincount(s.test.labels), [200] * 10)
  assert s.class_names[:3] == ("disc", "ring", "square")


def test_the_two_copies_of_a_digit_differ_and_splits_do_not_overlap(sets):
  d, s = sets["digits28"], sets["shapes28"]
  n = d.num_train // 2
  first, second = d.train.images[:n], d.train.images[n:]
  assert np.mean(np.abs(first.astype(int) - second.astype(int))) > 10
  for ds in (d, s):
    train = {im.tobytes() for im in ds.train.images}
    assert not any(im.tobytes() in train for im in ds.test.images)


def test_generated_bytes_are_deterministic(sets):
  assert _digest(data.digits28()) == _digest(sets["digits28"])
  assert _digest(data.shapes28()) == _digest(sets["shapes28"])
  small = data.shapes28(num_train=20, num_test=10)
  np.testing.assert_array_equal(small.train.images,
                                sets["shapes28"].train.images[:20])
  assert "digits28" in data.known_datasets()
  assert "shapes28" in data.known_datasets()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_train=15), "num_train must be a positive multiple of 10"),
    (dict(num_test=0), "num_test must be a positive multiple of 10"),
    (dict(num_train=20.0), "num_train must be a positive multiple of 10"),
])
def test_bad_sizes(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.shapes28(**kwargs)
