"""TFDS image-classification datasets, read without TensorFlow.

Reading goes through ``tfds.data_source`` (random access to ArrayRecord
files, decoded with NumPy/Pillow): ``tensorflow-datasets`` and ``array_record``
are needed, TensorFlow is not. TFDS is imported only when a TFDS dataset is
asked for, so the core install stays free of it.

Preparing a dataset (downloading it and writing ArrayRecord files) is a
separate, one-time step on a machine with network access::

  pip install tensorflow-datasets tensorflow   # TF only where you prepare
  tfds build cifar10 --file_format=array_record --data_dir=DATA_DIR

or in Python ``tfds.builder("cifar10", data_dir=DATA_DIR).download_and_prepare(
file_format="array_record")`` (what ``get(..., download=True)`` does).
ImageNet cannot be downloaded by TFDS: place ``ILSVRC2012_img_train.tar`` and
``ILSVRC2012_img_val.tar`` in ``DATA_DIR/downloads/manual/`` first. A dataset
prepared in TFDS's default TFRecord format must be prepared again with
``--file_format=array_record`` to be read here.
"""

from __future__ import annotations

import os

import numpy as np

from gaf_optax.data import _host
from gaf_optax.data import _sources

# Per-channel statistics of the training sets, in [0, 1] units.
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Evaluation split of datasets without a "test" split.
_EVAL_SPLIT = {"imagenet2012": "validation"}


class TfdsNotPreparedError(RuntimeError):
  """A TFDS dataset is not prepared in ``data_dir`` and was not downloaded."""


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "TFDS datasets need tensorflow-datasets and array_record (not "
        "TensorFlow): pip install tensorflow-datasets array_record, or "
        "pip install 'gaf-optax[training]'.") from e
  return tfds


class TfdsSource(_host.RecordSource):
  """Random access to one TFDS split as ``(uint8 HWC image, int label)``.

  Args:
    data_source: what ``tfds.data_source`` returns for the split.
    transform: optional ``fn(image, rng) -> image`` applied per example on the
      host (the ImageNet crops); ``rng`` is a NumPy generator seeded from
      ``(seed, epoch, index)`` by :func:`gaf_optax.data.batches`, or from the
      index alone for ``src[i]``.
    image_key: feature holding the image.
    label_key: feature holding the label.
  """


def _not_prepared(name: str, data_dir: str | None, builder,
                  cause: BaseException | None, tried_download: bool) -> str:
  del builder
  where = (data_dir or os.environ.get("TFDS_DATA_DIR")
           or "~/tensorflow_datasets")
  manual = (
      f"\n  {name} cannot be downloaded automatically: first put its archives "
      f"(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) in "
      f"{where}/downloads/manual/." if name.startswith("imagenet") else "")
  reason = (f" Downloading failed: {type(cause).__name__}: {cause}"
            if tried_download and cause is not None else "")
  return (
      f"TFDS dataset {name!r} is not prepared (in ArrayRecord format) in "
      f"data_dir={where!r}.{reason}\n"
      "Prepare it once on a machine with network access (TensorFlow may be "
      "needed for this step only; reading needs no TensorFlow):\n"
      f"  pip install tensorflow-datasets tensorflow\n"
      f"  tfds build {name} --file_format=array_record --data_dir={where}\n"
      "or in Python: tfds.builder(name, data_dir=...).download_and_prepare("
      "file_format='array_record'), which gaf_optax.data.get(..., "
      f"download=True) runs for you.{manual}")


def load(name: str, *, data_dir: str | None = None, download: bool = False,
         dataset_name: str | None = None) -> _sources.Dataset:
  """Loads a prepared TFDS image-classification dataset by its TFDS name.

  Splits: ``train``, and ``test`` (or ``validation`` when the dataset has no
  ``test`` split, as imagenet2012). Images of a fixed shape are returned as
  stored; images of varying size (ImageNet) are cropped on the host to
  224x224: :func:`~gaf_optax.data.random_resized_crop` for ``train``,
  resize-256 + :func:`~gaf_optax.data.center_crop` for the evaluation split.

  Args:
    name: TFDS name, optionally with config/version (``"cifar10:3.0.2"``).
    data_dir: TFDS data directory; default TFDS's (``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    download: if the dataset is not prepared, try
      ``download_and_prepare(file_format="array_record")`` first.
    dataset_name: the name the :class:`Dataset` reports; default ``name``.

  Returns:
    the :class:`Dataset`.

  Raises:
    TfdsNotPreparedError: not prepared (and not downloaded); the message says
      how to prepare it.
    ValueError: not a TFDS name, or the dataset has no image/label features.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"TFDS has no dataset named {name!r} (see "
        "tfds.list_builders()).") from e
  features = builder.info.features
  image_key = "image"
  label_key = "label"
  if image_key not in features or label_key not in features:
    raise ValueError(
        f"TFDS dataset {name!r} has features {list(features)}; an image "
        "classification set needs 'image' and 'label'.")
  label_feature = features[label_key]
  num_classes = getattr(label_feature, "num_classes", None)
  if not num_classes:
    raise ValueError(f"the 'label' feature of {name!r} is not a ClassLabel")

  cause = None
  if download:
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # Network, missing manual files, missing deps.
      cause = e
  split_names = list(builder.info.splits)
  if split_names:  # Known once prepared.
    eval_split = "validation" if ("test" not in split_names
                                  and "validation" in split_names) else "test"
  else:
    eval_split = _EVAL_SPLIT.get(builder.name, "test")
  try:
    sources = builder.as_data_source(split=["train", eval_split])
  except Exception as e:  # TFDS raises AssertionError/NotImplementedError...
    if cause is None:
      cause = e
    raise TfdsNotPreparedError(
        _not_prepared(name, data_dir, builder, cause, download)) from cause

  stored = tuple(features[image_key].shape)
  fixed = all(d is not None for d in stored)
  if fixed:
    image_shape = tuple(int(d) for d in stored)
    train_fn = eval_fn = None
  else:
    channels = stored[-1] or 3
    image_shape = (_host.CROP_SIZE, _host.CROP_SIZE, int(channels))
    train_fn, eval_fn = _host.crops(_host.CROP_SIZE)
  train = TfdsSource(sources[0], transform=train_fn)
  test = TfdsSource(sources[1], transform=eval_fn)

  base = builder.name
  if base in KNOWN_STATS and image_shape[-1] == 3:
    mean, std = (np.array(s, np.float32) for s in KNOWN_STATS[base])
  else:
    mean, std = _host.sample_stats(train)
  names = tuple(getattr(label_feature, "names", ()) or ())
  return _sources.Dataset(
      name=dataset_name or name, num_classes=int(num_classes),
      image_shape=image_shape, train=train, test=test, mean=mean, std=std,
      class_names=names)
