"""ResNets for CIFAR and ImageNet: one network, three blocks, two stems.

The CIFAR and ImageNet variants differ only in the stem and the widths:

- ``stem="cifar"``: 3x3 conv, BN, activation, no max-pool (kuangliu's
  pytorch-cifar, the models of the official GAF code; He et al.'s CIFAR
  ResNet-20/56 too);
- ``stem="cifar_preact"``: the 3x3 conv alone (kuangliu's pre-activation
  ResNet, which has no BN after the stem and none before the head);
- ``stem="imagenet"``: 7x7/2 conv, BN, activation, 3x3/2 max-pool
  (torchvision).

Blocks follow torchvision: :class:`BasicBlock`, :class:`Bottleneck` (v1.5,
the stride on the 3x3 conv, as torchvision and kuangliu) and
:class:`PreActBlock` (kuangliu's ``PreActBlock``). Shortcuts are option B
(1x1 conv + BN projection where the shape changes) or option A (He et al.
2016, Sec. 4.2: subsample by the stride and zero-pad the channels, no
parameters), used by ResNet-20/56.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gaf_optax.models._common import Activation
from gaf_optax.models._common import amplification_points
from gaf_optax.models._common import OPTIONAL_POSITIVE_INT
from gaf_optax.models._common import batch_norm
from gaf_optax.models._common import check_fields
from gaf_optax.models._common import check_sync
from gaf_optax.models._common import one_of
from gaf_optax.models._common import positive_ints
from gaf_optax.models._common import conv
from gaf_optax.models._common import dense
from gaf_optax.models._common import make_activation
from gaf_optax.nn import AmplificationPoints

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBlock",
    "ResNet",
    "SqueezeExcite",
]

Dtype = Any
_SHORTCUTS = ("A", "B")
_STEMS = ("cifar", "cifar_preact", "imagenet")


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): channel gates from the mean.

  ``x * sigmoid(W2 relu(W1 mean_hw(x)))`` with Dense layers of width
  ``C // reduction`` and ``C``, with biases, as in the paper and timm (some
  PyTorch SE-ResNets drop the biases). The gate's ReLU and sigmoid are fixed,
  not the model's ``act``.
  """

  reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = dense(max(channels // self.reduction, 1), dtype=self.dtype,
              param_dtype=self.param_dtype, name="reduce")(s)
    s = dense(channels, dtype=self.dtype, param_dtype=self.param_dtype,
              name="expand")(nn.relu(s))
    return x * nn.sigmoid(s)


class _Block(nn.Module):
  """Fields shared by the residual blocks (see :class:`ResNet`)."""

  features: int
  strides: int = 1
  shortcut: str = "B"
  se_reduction: int | None = None
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  # Output channels = features * expansion; amplification points per block:
  # one per BN of the residual branch, plus one per activation of the branch
  # with amplify_activations.
  expansion: ClassVar[int] = 1
  bn_points: ClassVar[int] = 0
  act_points: ClassVar[int] = 0

  def _conv(self, features, kernel_size, strides=1, **kwargs):
    return conv(features, kernel_size, strides, dtype=self.dtype,
                param_dtype=self.param_dtype, **kwargs)

  def _norm(self, train, name):
    return batch_norm(train, dtype=self.dtype, param_dtype=self.param_dtype,
                      axis_name=self.axis_name,
                      axis_index_groups=self.axis_index_groups, name=name)

  def _act(self, train):
    return make_activation(self.act, train, axis_name=self.axis_name,
                           axis_index_groups=self.axis_index_groups)

  def _squeeze_excite(self, y):
    if self.se_reduction is None:
      return y
    return SqueezeExcite(self.se_reduction, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="se")(y)

  def _changes_shape(self, x):
    return self.strides != 1 or x.shape[-1] != self.features * self.expansion

  def _shortcut(self, x, train, *, norm=True):
    """Identity, or option A / B where the shape changes."""
    out = self.features * self.expansion
    if not self._changes_shape(x):
      return x
    if self.shortcut == "A":
      if out < x.shape[-1]:
        raise ValueError("option-A shortcuts cannot reduce channels "
                         f"({x.shape[-1]} -> {out}).")
      x = x[:, ::self.strides, ::self.strides, :]
      lo = (out - x.shape[-1]) // 2
      return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (lo, out - x.shape[-1] - lo)))
    x = self._conv(out, 1, self.strides, name="shortcut_conv")(x)
    if norm:
      x = self._norm(train, "shortcut_bn")(x)
    return x


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34, ResNet-20/56).

  Amplification points: after ``bn1`` and ``bn2`` (before the addition), and
  with ``amplify_activations`` after the activation between them. The
  activation after the addition is on the trunk, shared with the shortcut, so
  it gets no point.
  """

  expansion: ClassVar[int] = 1
  bn_points: ClassVar[int] = 2
  act_points: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, amp: AmplificationPoints, *,
               train: bool) -> jax.Array:
    act = self._act(train)
    y = self._conv(self.features, 3, self.strides, name="conv1")(x)
    y = act(amp(self._norm(train, "bn1")(y)))
    if self.amplify_activations:
      y = amp(y)
    y = self._conv(self.features, 3, name="conv2")(y)
    y = amp(self._norm(train, "bn2")(y))
    y = self._squeeze_excite(y)
    return act(y + self._shortcut(x, train))


class Bottleneck(_Block):
  """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand by 4.

  Amplification points: after ``bn1``, ``bn2``, ``bn3``, and with
  ``amplify_activations`` after the two activations of the branch.
  """

  expansion: ClassVar[int] = 4
  bn_points: ClassVar[int] = 3
  act_points: ClassVar[int] = 2

  @nn.compact
  def __call__(self, x: jax.Array, amp: AmplificationPoints, *,
               train: bool) -> jax.Array:
    act = self._act(train)
    y = self._conv(self.features, 1, name="conv1")(x)
    y = act(amp(self._norm(train, "bn1")(y)))
    if self.amplify_activations:
      y = amp(y)
    y = self._conv(self.features, 3, self.strides, name="conv2")(y)
    y = act(amp(self._norm(train, "bn2")(y)))
    if self.amplify_activations:
      y = amp(y)
    y = self._conv(self.features * 4, 1, name="conv3")(y)
    y = amp(self._norm(train, "bn3")(y))
    y = self._squeeze_excite(y)
    return act(y + self._shortcut(x, train))


class PreActBlock(_Block):
  """Pre-activation basic block (He et al. 2016b; kuangliu's PreActBlock).

  ``h = act(bn1(x))``; the shortcut is ``x``, or a 1x1 conv of ``h`` (no BN)
  where the shape changes; the branch is ``conv2(act(bn2(conv1(h))))``.

  Amplification points: after ``act(bn1(x))`` on the branch's copy only (the
  projection shortcut shares that activation and must stay unamplified; the
  parameter gradients are the same as for a point right after ``bn1``, only
  the reported signal norm is taken after the activation's derivative), and
  after ``bn2``; with ``amplify_activations`` also after the activation that
  follows ``bn2``.
  """

  expansion: ClassVar[int] = 1
  bn_points: ClassVar[int] = 2
  act_points: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, amp: AmplificationPoints, *,
               train: bool) -> jax.Array:
    act = self._act(train)
    h = act(self._norm(train, "bn1")(x))
    if self._changes_shape(x) and self.shortcut == "B":
      shortcut = self._shortcut(h, train, norm=False)
    else:
      shortcut = self._shortcut(x, train)
    y = self._conv(self.features, 3, self.strides, name="conv1")(amp(h))
    y = act(amp(self._norm(train, "bn2")(y)))
    if self.amplify_activations:
      y = amp(y)
    y = self._conv(self.features, 3, name="conv2")(y)
    return self._squeeze_excite(y) + shortcut


class ResNet(nn.Module):
  """A residual network (NHWC input, logits output).

  Attributes:
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    block_cls: :class:`BasicBlock`, :class:`Bottleneck` or
      :class:`PreActBlock`.
    num_classes: outputs of the final Dense layer.
    widths: the blocks' ``features`` per stage (stage ``i > 0`` starts with
      stride 2); the stem has ``widths[0]`` channels.
    stem: ``"cifar"``, ``"cifar_preact"`` or ``"imagenet"`` (module doc).
    shortcut: ``"B"`` (1x1 conv + BN projection) or ``"A"`` (zero padding).
    se_reduction: squeeze-excitation reduction in every block, or None.
    act: activation function or stateful activation module class (e.g.
      ``gaf_optax.nn.NSwish``); see ``make_activation``.
    amplify_activations: also place amplification points after the
      activations of the residual branches and the stem.
    dtype: computation dtype (e.g. ``jnp.bfloat16``).
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which every BatchNorm and stateful activation (ANAct) takes its batch
      statistics, as ``flax.linen.BatchNorm``'s ``axis_name``; None (the
      default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      normalize over separately (``flax.linen.BatchNorm``'s), or None.

  Called as ``model.apply(variables, x, train=..., amp_factors=...)``.
  ``train`` defaults to True, following Flax's examples (examples/imagenet's
  ResNet): ``model.init(key, x)`` works without it (initializing updates
  and syncs no statistics), and a training step is ``model.apply(variables,
  x, mutable=["batch_stats"])``. Evaluate with ``train=False``; the default
  without ``mutable`` raises rather than silently evaluate.

  Amplification points, in forward order: after the stem's BN (and its
  activation), then per block as documented on the block classes. None on
  shortcuts or after additions.
  """

  stage_sizes: Sequence[int]
  block_cls: type[_Block]
  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "cifar"
  shortcut: str = "B"
  se_reduction: int | None = None
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {
        "stage_sizes": positive_ints("blocks per stage", nonempty=True),
        "block_cls": (lambda c: isinstance(c, type) and issubclass(c, _Block),
                      "BasicBlock, Bottleneck, PreActBlock or another "
                      "block class of gaf_optax.models"),
        "widths": positive_ints("channels per stage", nonempty=True),
        "stem": one_of(*_STEMS),
        "shortcut": one_of(*_SHORTCUTS),
        "se_reduction": OPTIONAL_POSITIVE_INT,
    })
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f"ResNet.widths {tuple(self.widths)} and stage_sizes "
                       f"{tuple(self.stage_sizes)} differ in length; give "
                       "one width per stage.")
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    stem = 0 if self.stem == "cifar_preact" else 1
    per_block = self.block_cls.bn_points
    if self.amplify_activations:
      stem *= 2
      per_block += self.block_cls.act_points
    return stem + per_block * sum(self.stage_sizes)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)  # the other fields are checked in __post_init__
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.stem == "imagenet":
      x = conv(self.widths[0], 7, 2, name="stem_conv", **kw)(x)
    else:
      x = conv(self.widths[0], 3, name="stem_conv", **kw)(x)
    if self.stem != "cifar_preact":
      x = act(amp(batch_norm(train, name="stem_bn", **sync, **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes,
                                                self.widths)):
      for j in range(num_blocks):
        x = self.block_cls(
            features=width, strides=2 if i > 0 and j == 0 else 1,
            shortcut=self.shortcut, se_reduction=self.se_reduction,
            act=self.act, amplify_activations=self.amplify_activations,
            name=f"stage{i + 1}_block{j + 1}", **sync, **kw)(
                x, amp, train=train)
    amp.check_used_all()
    x = jnp.mean(x, axis=(1, 2))
    return dense(self.num_classes, name="head", **kw)(x)
