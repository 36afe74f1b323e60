"""TFDS datasets through tfds.testing.mock_data (offline, no TensorFlow)."""

import sys

import numpy as np
import pytest

from gaf_optax import data

tfds = pytest.importorskip("tensorflow_datasets")


def test_cifar10_by_name_through_mock_data():
  tf_before = "tensorflow" in sys.modules
  with tfds.testing.mock_data(num_examples=12):
    ds = data.get("cifar10")
    assert (ds.name, ds.num_classes, ds.image_shape) == ("cifar10", 10,
                                                         (32, 32, 3))
    assert (ds.num_train, ds.num_test) == (12, 12)
    np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465])
    image, label = ds.train[5]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert isinstance(label, int) and 0 <= label < 10
    batch = next(data.batches(ds.train, 8, seed=0, epoch=0))
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    # Rows are the examples the permutation names.
    order = data.epoch_order(12, seed=0, epoch=0)
    np.testing.assert_array_equal(batch["image"][2], ds.train[order[2]][0])
    assert batch["label"][2] == ds.train[order[2]][1]
  # The read path does not import TensorFlow (installed or not).
  assert tf_before or "tensorflow" not in sys.modules


def test_variable_size_images_are_cropped_on_the_host():
  with tfds.testing.mock_data(num_examples=4):
    ds = data.get("imagenet2012")
    assert ds.image_shape == (224, 224, 3) and ds.num_classes == 1000
    first = next(data.batches(ds.train, 4, seed=1, epoch=0))
    again = next(data.batches(ds.train, 4, seed=1, epoch=0, num_workers=2))
    assert first["image"].shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(first["image"], again["image"])
    assert ds.test[0][0].shape == (224, 224, 3)


def test_any_tfds_image_classification_set():
  with tfds.testing.mock_data(num_examples=6):
    ds = data.get("tfds:mnist")
  assert ds.name == "tfds:mnist" and ds.image_shape == (28, 28, 1)
  assert ds.mean.shape == (1,) and 0 < ds.std[0] < 1


def test_not_prepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(data.TfdsNotPreparedError) as e:
    data.get("cifar10", data_dir=str(tmp_path))
  message = str(e.value)
  assert "not prepared" in message and str(tmp_path) in message
  assert "tfds build cifar10 --file_format=array_record" in message
  assert "download_and_prepare" in message


def test_unknown_tfds_name(tmp_path):
  with pytest.raises(ValueError, match="no dataset named 'no_such_set'"):
    data.get("tfds:no_such_set", data_dir=str(tmp_path))
