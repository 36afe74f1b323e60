"""Dataset options: in memory, class-balanced subsets and downsampling."""

import numpy as np
import pytest

from gaf_optax import data


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def test_subset_is_class_balanced_seeded_and_keeps_the_statistics(digits):
  small = data.subset(digits, train_size=200, test_size=100, seed=1)
  assert (small.num_train, small.num_test) == (200, 100)
  assert np.bincount(small.train.labels).tolist() == [20] * 10
  assert np.bincount(small.test.labels).tolist() == [10] * 10
  np.testing.assert_array_equal(small.mean, digits.mean)
  np.testing.assert_array_equal(small.std, digits.std)
  # Every kept example is one of the split's, unchanged.
  idx = data.balanced_subset(digits.train.labels, 200, 10, seed=1)
  np.testing.assert_array_equal(small.train.images, digits.train.images[idx])
  again = data.subset(digits, train_size=200, seed=1)
  np.testing.assert_array_equal(again.train.labels, small.train.labels)
  other = data.subset(digits, train_size=200, seed=2)
  assert not np.array_equal(other.train.images, small.train.images)
  assert again.test is digits.test  # test_size None: the whole split
  assert data.subset(digits) is digits


def test_get_takes_the_subset_options(digits):
  ds = data.get("digits", train_size=100, test_size=50, image_size=16)
  ref = data.subset(digits, train_size=100, test_size=50, image_size=16)
  assert ds.image_shape == (16, 16, 1) == ds.train.images.shape[1:]
  np.testing.assert_array_equal(ds.train.images, ref.train.images)
  assert ds.name == "digits[train_size=100,test_size=50,image_size=16]"


def test_downsampling_keeps_a_constant_image_constant():
  src = data.ArraySource(np.full((20, 8, 8, 3), 77, np.uint8),
                         np.arange(20) % 2)
  ds = data.Dataset("const", 2, (8, 8, 3), src, src,
                    np.zeros(3, np.float32), np.ones(3, np.float32))
  small = data.subset(ds, image_size=4)
  assert small.train.images.shape == (20, 4, 4, 3)
  assert np.all(small.train.images == 77)


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_size=105), "size must be a positive multiple of the 10 "
     "classes; got 105"),
    (dict(train_size=20_000), "needs 2000 examples of class 0"),
    (dict(image_size=0), "image_size must be a positive int or None"),
])
def test_subset_errors_name_the_problem(digits, kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.subset(digits, **kwargs)


def test_in_memory_reads_a_lazy_set_whole_with_its_fixed_crops(tmp_path):
  from tests.data.host_test import _imagenet_like  # pylint: disable=g-import-not-at-top
  lazy = data.folder(_imagenet_like(tmp_path), crop_size=8)
  held = data.in_memory(lazy)
  assert isinstance(held.train, data.ArraySource)
  assert held.train.images.shape == (12, 8, 8, 3)
  for i in (0, 7):  # src[i]'s crop, keyed by the index alone
    np.testing.assert_array_equal(held.train.images[i], lazy.train[i][0])
    assert held.train.labels[i] == lazy.train[i][1]
  np.testing.assert_array_equal(held.test.images[3], lazy.test[3][0])
  assert (held.name, held.mean.tolist()) == (lazy.name, lazy.mean.tolist())
