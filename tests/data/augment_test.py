"""preprocess (device) and the host-side ImageNet crops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import data

MEAN = np.array([0.4, 0.5, 0.6], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)


def _images(n=32, size=8):
  return np.random.default_rng(0).integers(1, 256, (n, size, size, 3),
                                           dtype=np.uint8)


def _normalize(images):
  return (images.astype(np.float32) / 255 - MEAN) / STD


def test_eval_is_plain_normalization():
  images = _images()
  out = data.preprocess(images, None, mean=MEAN, std=STD, train=False)
  assert out.shape == images.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _normalize(images), rtol=1e-6, atol=1e-6)


def test_train_is_deterministic_for_a_key_and_jits():
  images = _images()
  fn = functools.partial(data.preprocess, mean=MEAN, std=STD, train=True)
  key = jax.random.key(1)
  a = fn(images, key)
  b = jax.jit(fn)(images, key)
  assert a.shape == images.shape and a.dtype == b.dtype == jnp.float32
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert not np.allclose(a, fn(images, jax.random.key(2)))


def test_train_crops_and_flips():
  images = _images()
  x = np.asarray(data.preprocess(images, jax.random.key(0), mean=np.zeros(3),
                                 std=np.ones(3), train=True))
  ref = images.astype(np.float32) / 255
  assert not np.allclose(x, ref)
  # Each output is a shift of the zero-padded image, flipped or not.
  p = 4
  padded = np.pad(ref, ((0, 0), (p, p), (p, p), (0, 0)))
  kinds = set()
  for i in range(len(images)):
    found = None
    for flip in (False, True):
      for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
          crop = padded[i, dy:dy + 8, dx:dx + 8]
          if np.allclose(x[i], crop[:, ::-1] if flip else crop):
            found = (flip, dy == p and dx == p)
    assert found is not None, f"example {i} is no crop/flip of its input"
    kinds.add(found)
  assert {(True, False), (False, False)} <= kinds  # Flips and shifts happen.


def test_flip_only_and_reflect_padding():
  images = _images()
  x = np.asarray(data.preprocess(images, jax.random.key(0), mean=np.zeros(3),
                                 std=np.ones(3), train=True, crop_padding=0))
  ref = images.astype(np.float32) / 255
  flipped = [np.allclose(x[i], ref[i, :, ::-1]) for i in range(32)]
  same = [np.allclose(x[i], ref[i]) for i in range(32)]
  assert all(f or s for f, s in zip(flipped, same)) and 0 < sum(flipped) < 32
  r = np.asarray(data.preprocess(images, jax.random.key(0), mean=np.zeros(3),
                                 std=np.ones(3), train=True,
                                 padding_mode="reflect"))
  assert (r > 0).all()  # No black border: the inputs are all >= 1.
  with pytest.raises(ValueError, match="padding_mode"):
    data.preprocess(images, jax.random.key(0), mean=MEAN, std=STD,
                    train=True, padding_mode="edge")


def test_random_resized_crop_is_deterministic_and_random():
  image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), np.uint8)
  a = data.random_resized_crop(image, np.random.default_rng(5), size=32)
  b = data.random_resized_crop(image, np.random.default_rng(5), size=32)
  c = data.random_resized_crop(image, np.random.default_rng(6), size=32)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  grey = data.random_resized_crop(image[:, :, :1], np.random.default_rng(0),
                                  size=16)
  assert grey.shape == (16, 16, 1)


def test_center_crop_takes_the_centre():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 20:60] = 200  # The central 40x40 square of a 40x80 image.
  out = data.center_crop(image, size=28, resize=32)
  assert out.shape == (28, 28, 3)
  assert (out == 200).all()  # 28/32 of the centre square lies inside it.
