"""Two generated 28x28 grey image sets, for MNIST-shaped runs offline.

``digits28`` redraws scikit-learn's digits at 28x28 (each digit twice, with
a random rotation, scale, shift and pixel noise); ``shapes28`` draws ten
kinds of shapes from scratch. Both are made by NumPy from a fixed seed, so
every machine gets the same bytes, and need no download. They exist so that
a method can be tried on more than one small image set before a real one is
at hand (the ANAct robustness study uses both, the second as data that the
rule was not tuned on).
"""

from __future__ import annotations

import numpy as np

from gaf_optax.data._sources import ArraySource
from gaf_optax.data._sources import Dataset
from gaf_optax.data._sources import channel_stats
from gaf_optax.data._sources import digits

SIZE = 28
_DIGITS28_SEED = 28
_SHAPES28_SEED = 2828
SHAPE_CLASSES = ("disc", "ring", "square", "frame", "triangle", "plus",
                 "cross", "bars", "line", "dots")


def _affine_sample(image: np.ndarray, matrix: np.ndarray,
                   offset: np.ndarray) -> np.ndarray:
  """Bilinear samples of a [h, w] float image at ``matrix @ (r, c) + offset``.

  For every output pixel ``(r, c)`` of a 28x28 canvas; points outside the
  source read 0.
  """
  h, w = image.shape
  rr, cc = np.meshgrid(np.arange(SIZE, dtype=np.float64),
                       np.arange(SIZE, dtype=np.float64), indexing="ij")
  src = matrix @ np.stack([rr.ravel(), cc.ravel()]) + offset[:, None]
  r0, c0 = np.floor(src[0]), np.floor(src[1])
  fr, fc = src[0] - r0, src[1] - c0
  padded = np.pad(image, 1)

  def at(r, c):
    r = np.clip(r.astype(np.int64) + 1, 0, h + 1)
    c = np.clip(c.astype(np.int64) + 1, 0, w + 1)
    return padded[r, c]

  out = ((1 - fr) * (1 - fc) * at(r0, c0) + (1 - fr) * fc * at(r0, c0 + 1)
         + fr * (1 - fc) * at(r0 + 1, c0) + fr * fc * at(r0 + 1, c0 + 1))
  return out.reshape(SIZE, SIZE)


def _to_uint8(canvas: np.ndarray, rng: np.random.Generator,
              noise: float) -> np.ndarray:
  canvas = canvas + rng.normal(0.0, noise, canvas.shape)
  return np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)


def _redraw(images8: np.ndarray, copies: int,
            rng: np.random.Generator) -> np.ndarray:
  out = []
  for _ in range(copies):
    for image in images8:
      angle = np.deg2rad(rng.uniform(-15.0, 15.0))
      scale = rng.uniform(2.2, 2.8)  # 8 source pixels -> 18-22 canvas pixels
      cos, sin = np.cos(angle), np.sin(angle)
      # Canvas pixel -> source pixel: inverse rotation and scale about the
      # canvas centre (shifted), onto the source centre.
      matrix = np.array([[cos, sin], [-sin, cos]]) / scale
      centre = SIZE / 2 - 0.5 + rng.uniform(-2.5, 2.5, 2)
      offset = 3.5 - matrix @ centre
      canvas = _affine_sample(image.astype(np.float64) / 255.0, matrix, offset)
      out.append(_to_uint8(canvas, rng, noise=0.05))
  return np.stack(out)[..., None]


def digits28() -> Dataset:
  """scikit-learn's digits redrawn at 28x28: 2,696 train / 898 test images.

  Each image of :func:`digits`'s train and test splits is drawn twice onto
  a 28x28 canvas, bilinearly, rotated by up to 15 degrees, scaled 2.2-2.8x
  and shifted by up to 2.5 pixels, with Gaussian pixel noise (sd 0.05 of
  full scale). Train and test copies come from different source digits, as
  in :func:`digits`. Deterministic (seeded NumPy), no download; needs
  scikit-learn.

  Returns:
    the :class:`Dataset`, images ``(28, 28, 1)``, 10 classes.
  """
  base = digits()
  rng = np.random.default_rng(_DIGITS28_SEED)
  splits = {}
  for split in ("train", "test"):
    src = getattr(base, split)
    splits[split] = ArraySource(_redraw(src.images[..., 0], 2, rng),
                                np.tile(src.labels, 2))
  mean, std = channel_stats(splits["train"].images)
  return Dataset(name="digits28", num_classes=10, image_shape=(SIZE, SIZE, 1),
                 train=splits["train"], test=splits["test"], mean=mean,
                 std=std, class_names=base.class_names)


def _shape(kind: int, rng: np.random.Generator) -> np.ndarray:
  """One shape of class ``kind`` on a float canvas in [0, 1]."""
  rr, cc = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5,
                       indexing="ij")
  cy, cx = rng.uniform(10.0, 18.0, 2)
  size = rng.uniform(5.0, 9.0)
  width = rng.uniform(1.2, 2.5)
  # Within +-20 degrees of upright: a plus turned 45 degrees is a cross.
  angle = rng.uniform(-0.35, 0.35)
  cos, sin = np.cos(angle), np.sin(angle)
  # Coordinates in the shape's rotated frame.
  u = cos * (cc - cx) + sin * (rr - cy)
  v = -sin * (cc - cx) + cos * (rr - cy)
  dist = np.hypot(u, v)
  name = SHAPE_CLASSES[kind]
  if name == "disc":
    mask = dist <= size
  elif name == "ring":
    mask = np.abs(dist - size) <= width
  elif name == "square":
    mask = np.maximum(np.abs(u), np.abs(v)) <= size * 0.8
  elif name == "frame":
    mask = np.abs(np.maximum(np.abs(u), np.abs(v)) - size * 0.8) <= width
  elif name == "triangle":
    # Inside three half-planes of an equilateral triangle.
    mask = np.ones_like(u, bool)
    for k in range(3):
      a = angle + 2 * np.pi * k / 3
      mask &= np.cos(a) * (cc - cx) + np.sin(a) * (rr - cy) <= size * 0.5
  elif name == "plus":
    mask = ((np.abs(u) <= width) & (np.abs(v) <= size)) | (
        (np.abs(v) <= width) & (np.abs(u) <= size))
  elif name == "cross":
    s = np.sqrt(0.5)
    p, q = s * (u + v), s * (u - v)
    mask = ((np.abs(p) <= width) & (np.abs(q) <= size)) | (
        (np.abs(q) <= width) & (np.abs(p) <= size))
  elif name == "bars":
    gap = size * 0.5
    mask = (np.abs(np.abs(v) - gap) <= width * 0.8) & (np.abs(u) <= size)
  elif name == "line":
    mask = (np.abs(v) <= width) & (np.abs(u) <= size * 1.2)
  else:  # dots
    gap = size * 0.6
    mask = (np.hypot(u - gap, v) <= width * 1.6) | (
        np.hypot(u + gap, v) <= width * 1.6)
  return mask * rng.uniform(0.6, 1.0)


def shapes28(num_train: int = 2000, num_test: int = 2000) -> Dataset:
  """Ten kinds of generated shapes, 28x28 grey, class-balanced.

  Classes (:data:`SHAPE_CLASSES`): disc, ring, square, frame (square
  outline), triangle, plus, cross (x), bars (two parallel), line, dots
  (two). Each image draws one shape at a random centre (10-18 pixels),
  size, stroke width, rotation (within 20 degrees) and brightness, with Gaussian pixel noise
  (sd 0.08 of full scale). Deterministic (seeded NumPy), no download.

  Args:
    num_train: training images (a multiple of 10).
    num_test: test images (a multiple of 10).

  Returns:
    the :class:`Dataset`, images ``(28, 28, 1)``, 10 classes.

  Raises:
    ValueError: a size that is not a positive multiple of 10.
  """
  for name, n in (("num_train", num_train), ("num_test", num_test)):
    if not (isinstance(n, int) and n > 0 and n % 10 == 0):
      raise ValueError(f"{name} must be a positive multiple of 10; got {n!r}")
  splits = {}
  for i, (split, n) in enumerate((("train", num_train), ("test", num_test))):
    rng = np.random.default_rng([_SHAPES28_SEED, i])
    labels = np.tile(np.arange(10, dtype=np.int32), n // 10)
    images = np.stack([_to_uint8(_shape(k, rng), rng, noise=0.08)
                       for k in labels])[..., None]
    splits[split] = ArraySource(images, labels)
  mean, std = channel_stats(splits["train"].images)
  return Dataset(name="shapes28", num_classes=10, image_shape=(SIZE, SIZE, 1),
                 train=splits["train"], test=splits["test"], mean=mean,
                 std=std, class_names=SHAPE_CLASSES)
