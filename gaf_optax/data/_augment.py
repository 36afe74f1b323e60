"""Augmentation and normalisation.

Two kinds live here:

* :func:`preprocess` runs on the device inside the training step (a pure
  ``jax.numpy`` function, jittable): uint8 NHWC in, normalised float32 NHWC
  out, with the CIFAR-style random crop from a padded image and a random
  horizontal flip when ``train=True``. Randomness comes only from ``key``, one
  key per example split from it, so a batch and a key give the same result on
  every host and device.
* :func:`random_resized_crop` and :func:`center_crop` run on the host, one
  image at a time (NumPy + Pillow), because ImageNet images differ in size
  and must be brought to one fixed shape before they can be batched. The
  ``imagenet2012`` source applies them per example; the flip is left to
  :func:`preprocess` (use ``crop_padding=0`` there).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _crop_and_flip(image, key, *, crop_padding, flip, padding_mode):
  """Random crop of a padded image and a random horizontal flip: one example."""
  h, w, _ = image.shape
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    p = crop_padding
    padded = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode=padding_mode)
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
    image = jax.lax.dynamic_slice(
        padded, (offsets[0], offsets[1], jnp.zeros((), offsets.dtype)),
        (h, w, image.shape[2]))
  if flip:
    image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
  return image


@functools.partial(
    jax.jit,
    static_argnames=("train", "crop_padding", "flip", "padding_mode"))
def preprocess(
    images: jax.typing.ArrayLike,
    key: jax.Array | None,
    *,
    mean: jax.typing.ArrayLike,
    std: jax.typing.ArrayLike,
    train: bool,
    crop_padding: int = 4,
    flip: bool = True,
    padding_mode: str = "constant",
) -> jax.Array:
  """Scales a uint8 batch to [0, 1], augments it (train) and normalises it.

  Training augmentation is the CIFAR recipe: pad each image by
  ``crop_padding`` pixels on every side (with zeros, i.e. black, or by
  reflection), take a random crop of the original size, and flip it left to
  right with probability 1/2. Each example gets its own key, split from
  ``key``. Normalisation comes last: ``(x / 255 - mean) / std``. The function
  is jitted (the keyword options after ``std`` are static) and may be called
  inside another jitted function, such as a training step.

  Args:
    images: uint8 (or float in [0, 255]) array of shape ``[N, H, W, C]``.
    key: a PRNG key; only used when ``train`` is true (may be ``None`` then).
    mean: per-channel mean in [0, 1] image units, shape ``[C]``.
    std: per-channel standard deviation in [0, 1] image units, shape ``[C]``.
    train: augment (``True``) or only normalise (``False``). Static.
    crop_padding: pixels of padding for the random crop; 0 turns the crop off
      (ImageNet, whose crop is done on the host). Static.
    flip: whether to flip at random. Static.
    padding_mode: ``"constant"`` (zeros) or ``"reflect"``. Static.

  Returns:
    float32 array of shape ``[N, H, W, C]``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from gaf_optax.data import preprocess
    >>> images = np.zeros((2, 8, 8, 1), np.uint8)
    >>> out = preprocess(images, jax.random.key(0), mean=np.array([0.5]),
    ...                  std=np.array([0.5]), train=True)
    >>> out.shape, out.dtype
    ((2, 8, 8, 1), dtype('float32'))
  """
  if padding_mode not in ("constant", "reflect"):
    raise ValueError(
        f"padding_mode must be 'constant' or 'reflect', got {padding_mode!r}")
  if crop_padding < 0:
    raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  if x.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {x.shape}")
  if train and (crop_padding > 0 or flip):
    if key is None:
      raise ValueError("preprocess(train=True) needs a PRNG key")
    keys = jax.random.split(key, x.shape[0])
    x = jax.vmap(
        lambda image, k: _crop_and_flip(
            image, k, crop_padding=crop_padding, flip=flip,
            padding_mode=padding_mode))(x, keys)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def _to_pil(image: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[2] == 1:
    return Image.fromarray(image[:, :, 0]), True  # 2-D uint8: mode "L".
  return Image.fromarray(image), False


def _from_pil(pil_image, gray: bool) -> np.ndarray:
  out = np.asarray(pil_image, np.uint8)
  return out[:, :, None] if gray else out


def _resize_box(image: np.ndarray, box, size: int) -> np.ndarray:
  """Crops ``box`` = (top, left, height, width) and resizes it to size^2."""
  top, left, height, width = box
  pil, gray = _to_pil(image)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = pil.resize((size, size), Image.Resampling.BICUBIC,
                   box=(left, top, left + width, top + height))
  return _from_pil(out, gray)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
  """ImageNet ("Inception") training crop, on the host: NumPy + Pillow.

  Picks a box covering a fraction of the image area uniform in ``scale`` with
  an aspect ratio log-uniform in ``ratio`` (up to ``attempts`` tries; then a
  central box with the ratio clipped to ``ratio``), and resizes it to
  ``size x size`` with bicubic interpolation. No flip: that is done on the
  device by :func:`preprocess`.

  Args:
    image: uint8 array ``[H, W, C]`` (C = 1 or 3).
    rng: NumPy generator; the crop depends only on its state.
    size: output height and width.
    scale: range of the box's area as a fraction of the image area.
    ratio: range of the box's width / height.
    attempts: random boxes tried before the central fallback.

  Returns:
    uint8 array ``[size, size, C]``.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.data import random_resized_crop
    >>> image = np.zeros((300, 400, 3), np.uint8)
    >>> random_resized_crop(image, np.random.default_rng(0), size=64).shape
    (64, 64, 3)
  """
  h, w = image.shape[:2]
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return _resize_box(image, (top, left, ch, cw), size)
  # Fallback: the largest central box with the ratio clipped to the range.
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return _resize_box(image, ((h - ch) // 2, (w - cw) // 2, ch, cw), size)


def center_crop(image: np.ndarray, *, size: int = 224,
                resize: int = 256) -> np.ndarray:
  """ImageNet evaluation crop, on the host: shorter side to ``resize``, centre.

  Equivalent to resizing the shorter side to ``resize`` and cutting the
  central ``size x size`` square (the standard 256 / 224 recipe), done in one
  bicubic resize of the matching central box of the original image.

  Args:
    image: uint8 array ``[H, W, C]`` (C = 1 or 3).
    size: output height and width.
    resize: length the shorter side is scaled to before the crop.

  Returns:
    uint8 array ``[size, size, C]``.

  Example:
    >>> import numpy as np
    >>> from gaf_optax.data import center_crop
    >>> center_crop(np.zeros((300, 400, 3), np.uint8), size=32, resize=40).shape
    (32, 32, 3)
  """
  if size > resize:
    raise ValueError(f"size ({size}) must be <= resize ({resize})")
  h, w = image.shape[:2]
  # The central size x size square after scaling by resize / min(h, w),
  # mapped back to the original image.
  crop = min(h, w) * size / resize
  ch = cw = max(1, int(round(crop)))
  return _resize_box(image, ((h - ch) // 2, (w - cw) // 2, ch, cw), size)
