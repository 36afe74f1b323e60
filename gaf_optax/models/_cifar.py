"""CIFAR models (32x32 NHWC input), after the PyTorch references.

ResNet-18/34/50/101, PreActResNet-18, VGG-16/19 (with BN), DenseNet-121,
MobileNetV2 and LeNet follow kuangliu's pytorch-cifar, the models of the
official GAF code; the sigmoid LeNet is the GAF code's ``SigmoidLeNet``
(LeNet with sigmoid activations, its vanishing-gradient model). ResNet-20/56
are He et al.'s CIFAR ResNets (16/32/64 channels, 3n+3n+3n blocks) with
option-A (zero-padding) shortcuts, as in akamaster's pytorch_resnet_cifar10.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gaf_optax.models._common import Activation
from gaf_optax.models._common import amplification_points
from gaf_optax.models._common import POSITIVE_INT
from gaf_optax.models._common import batch_norm
from gaf_optax.models._common import check_fields
from gaf_optax.models._common import check_sync
from gaf_optax.models._common import number_in
from gaf_optax.models._common import positive_ints
from gaf_optax.models._common import conv
from gaf_optax.models._common import dense
from gaf_optax.models._common import make_activation
from gaf_optax.models._resnet import BasicBlock
from gaf_optax.models._resnet import Bottleneck
from gaf_optax.models._resnet import PreActBlock
from gaf_optax.models._resnet import ResNet
from gaf_optax.nn import AmplificationPoints

__all__ = [
    "DenseNet",
    "DenseNet121",
    "LeNet",
    "MLP",
    "MobileNetV2",
    "PreActResNet18",
    "ResNet101",
    "ResNet18",
    "ResNet8",
    "ResNet20",
    "ResNet34",
    "ResNet50",
    "ResNet56",
    "SigmoidLeNet",
    "VGG",
    "VGG16",
    "VGG19",
]

Dtype = Any


def _vgg_config_ok(config: Any) -> bool:
  return (isinstance(config, Sequence) and not isinstance(config, str)
          and len(config) > 0
          and all(c == "M" or POSITIVE_INT[0](c) for c in config))


def _mobilenet_config_ok(config: Any) -> bool:
  return (isinstance(config, Sequence) and not isinstance(config, str)
          and len(config) > 0
          and all(positive_ints("")[0](stage) and len(stage) == 4
                  for stage in config))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block_cls=Bottleneck)
PreActResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                                   block_cls=PreActBlock, stem="cifar_preact")
# He et al.'s CIFAR ResNet with one basic block per stage (n = 1): the
# CPU-scale studies' network.
ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1),
                            block_cls=BasicBlock, widths=(16, 32, 64),
                            shortcut="A")
ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3),
                             block_cls=BasicBlock, widths=(16, 32, 64),
                             shortcut="A")
ResNet56 = functools.partial(ResNet, stage_sizes=(9, 9, 9),
                             block_cls=BasicBlock, widths=(16, 32, 64),
                             shortcut="A")


class VGG(nn.Module):
  """VGG with BatchNorm, CIFAR style (kuangliu): one Dense head on the features.

  Each conv is 3x3 with bias (as PyTorch's default, which the reference
  parameter counts include), then BN and the activation; ``"M"`` is a 2x2
  max-pool. After five pools a 32x32 input is 1x1x512, flattened into the
  single Dense layer.

  Attributes:
    config: conv widths and ``"M"`` (max-pool) in order.
    num_classes: outputs of the head.
    act: activation function or stateful activation module class.
    amplify_activations: also amplify after each activation.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which every BatchNorm and stateful activation (ANAct) takes its batch
      statistics, as ``flax.linen.BatchNorm``'s ``axis_name``; None (the
      default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      normalize over separately (``flax.linen.BatchNorm``'s), or None.

  ``train`` defaults to True, following Flax's examples (see
  :class:`gaf_optax.models.ResNet`); evaluate with ``train=False``.

  Amplification points: after each BN (and each activation), in order.
  """

  config: Sequence[int | str]
  num_classes: int = 10
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {"config": (
        _vgg_config_ok, 'a non-empty tuple of positive ints (conv widths) '
        'and "M" (max-pools)')})
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    convs = sum(1 for c in self.config if c != "M")
    return convs * (2 if self.amplify_activations else 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, c in enumerate(self.config):
      if c == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = conv(c, 3, use_bias=True, name=f"conv{i}", **kw)(x)
      x = act(amp(batch_norm(train, name=f"bn{i}", **sync, **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
    amp.check_used_all()
    x = x.reshape(x.shape[0], -1)
    return dense(self.num_classes, name="head", **kw)(x)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M")
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
          512, "M", 512, 512, 512, 512, "M")
VGG16 = functools.partial(VGG, config=_VGG16)
VGG19 = functools.partial(VGG, config=_VGG19)


class _DenseLayer(nn.Module):
  """kuangliu's DenseNet ``Bottleneck``: BN-act-1x1, BN-act-3x3, concat."""

  growth_rate: int
  act: Activation
  amplify_activations: bool
  dtype: Dtype
  param_dtype: Dtype
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, amp: AmplificationPoints, *,
               train: bool) -> jax.Array:
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = x
    for i, (width, k) in enumerate(((4 * self.growth_rate, 1),
                                    (self.growth_rate, 3))):
      y = act(amp(batch_norm(train, name=f"bn{i + 1}", **sync, **kw)(y)))
      if self.amplify_activations:
        y = amp(y)
      y = conv(width, k, name=f"conv{i + 1}", **kw)(y)
    return jnp.concatenate([y, x], axis=-1)


class DenseNet(nn.Module):
  """DenseNet-BC for CIFAR (kuangliu): pre-activation dense layers.

  A 3x3 stem conv to ``2 * growth_rate`` channels (no BN), dense blocks of
  BN-act-1x1 conv (``4 * growth_rate``)-BN-act-3x3 conv (``growth_rate``)
  layers whose outputs are concatenated in front of their inputs, transitions
  BN-act-1x1 conv (``floor(channels * reduction)``)-2x2 average pool, and a
  final BN-act, global average pool and Dense head.

  Attributes:
    block_sizes: dense layers per block (DenseNet-121: 6, 12, 24, 16).
    growth_rate: channels each dense layer adds.
    reduction: channel compression of the transitions.
    num_classes: outputs of the head.
    act: activation function or stateful activation module class.
    amplify_activations: also amplify after each activation.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which every BatchNorm and stateful activation (ANAct) takes its batch
      statistics, as ``flax.linen.BatchNorm``'s ``axis_name``; None (the
      default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      normalize over separately (``flax.linen.BatchNorm``'s), or None.

  ``train`` defaults to True, following Flax's examples (see
  :class:`gaf_optax.models.ResNet`); evaluate with ``train=False``.

  Amplification points, in order: after both BNs of each dense layer (on the
  new features only: a layer's input also passes to the concatenation
  unamplified), after each transition's BN and after the final BN; with
  ``amplify_activations`` also after each of their activations.
  """

  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  reduction: float = 0.5
  num_classes: int = 10
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {
        "block_sizes": positive_ints("dense layers per block",
                                     nonempty=True),
        "growth_rate": POSITIVE_INT,
        "reduction": number_in(0, 1, low_open=True, high_open=False),
    })
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    bns = 2 * sum(self.block_sizes) + len(self.block_sizes)
    return bns * (2 if self.amplify_activations else 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(2 * self.growth_rate, 3, name="stem_conv", **kw)(x)
    for i, size in enumerate(self.block_sizes):
      for j in range(size):
        x = _DenseLayer(self.growth_rate, self.act, self.amplify_activations,
                        name=f"block{i + 1}_layer{j + 1}", **sync, **kw)(
                            x, amp, train=train)
      x = act(amp(batch_norm(train, name=f"bn{i + 1}", **sync, **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
      if i + 1 < len(self.block_sizes):  # transition
        width = int(x.shape[-1] * self.reduction)
        if width < 1:
          raise ValueError(
              f"DenseNet.reduction={self.reduction!r} leaves transition "
              f"{i + 1} no channel (floor({x.shape[-1]} * reduction) = 0); "
              "raise it.")
        x = conv(width, 1, name=f"transition{i + 1}_conv", **kw)(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    amp.check_used_all()
    x = jnp.mean(x, axis=(1, 2))
    return dense(self.num_classes, name="head", **kw)(x)


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16),
                                growth_rate=32)


class _InvertedResidual(nn.Module):
  """MobileNetV2 block (kuangliu): 1x1 expand, 3x3 depthwise, 1x1 project."""

  features: int
  expansion: int
  strides: int
  act: Activation
  amplify_activations: bool
  dtype: Dtype
  param_dtype: Dtype
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, amp: AmplificationPoints, *,
               train: bool) -> jax.Array:
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = self.expansion * x.shape[-1]
    y = conv(hidden, 1, name="conv1", **kw)(x)
    y = act(amp(batch_norm(train, name="bn1", **sync, **kw)(y)))
    if self.amplify_activations:
      y = amp(y)
    y = conv(hidden, 3, self.strides, groups=hidden, name="conv2", **kw)(y)
    y = act(amp(batch_norm(train, name="bn2", **sync, **kw)(y)))
    if self.amplify_activations:
      y = amp(y)
    y = conv(self.features, 1, name="conv3", **kw)(y)
    y = amp(batch_norm(train, name="bn3", **sync, **kw)(y))
    if self.strides != 1:
      return y
    if x.shape[-1] != self.features:
      x = conv(self.features, 1, name="shortcut_conv", **kw)(x)
      x = batch_norm(train, name="shortcut_bn", **sync, **kw)(x)
    return y + x


class MobileNetV2(nn.Module):
  """MobileNetV2 for CIFAR (kuangliu): stride 1 stem and second stage.

  Differences from the ImageNet MobileNetV2, all kuangliu's: the stem conv and
  the second stage have stride 1, the activation is ReLU (not ReLU6) by
  default, every block has the 1x1 expansion conv (also at expansion 1), and
  a stride-1 block that changes the width has a 1x1 conv + BN shortcut.

  Attributes:
    config: ``(expansion, width, blocks, stride)`` per stage.
    num_classes: outputs of the head.
    stem_width: channels of the stem conv.
    head_width: channels of the final 1x1 conv.
    act: activation function or stateful activation module class.
    amplify_activations: also amplify after each activation.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which every BatchNorm and stateful activation (ANAct) takes its batch
      statistics, as ``flax.linen.BatchNorm``'s ``axis_name``; None (the
      default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      normalize over separately (``flax.linen.BatchNorm``'s), or None.

  ``train`` defaults to True, following Flax's examples (see
  :class:`gaf_optax.models.ResNet`); evaluate with ``train=False``.

  Amplification points, in order: after the stem BN, after ``bn1``, ``bn2``,
  ``bn3`` of each block (not the shortcut BN), after the final BN; with
  ``amplify_activations`` also after each activation (not after additions).
  """

  config: Sequence[tuple[int, int, int, int]] = (
      (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
  num_classes: int = 10
  stem_width: int = 32
  head_width: int = 1280
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {
        "config": (_mobilenet_config_ok,
                   "a non-empty tuple of (expansion, width, blocks, stride) "
                   "tuples of positive ints"),
        "stem_width": POSITIVE_INT,
        "head_width": POSITIVE_INT,
    })
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    blocks = sum(stage[2] for stage in self.config)
    points = 2 + 3 * blocks
    if self.amplify_activations:
      points += 2 + 2 * blocks
    return points

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = conv(self.stem_width, 3, name="stem_conv", **kw)(x)
    x = act(amp(batch_norm(train, name="stem_bn", **sync, **kw)(x)))
    if self.amplify_activations:
      x = amp(x)
    for i, (expansion, width, blocks, strides) in enumerate(self.config):
      for j in range(blocks):
        x = _InvertedResidual(width, expansion, strides if j == 0 else 1,
                              self.act, self.amplify_activations,
                              name=f"stage{i + 1}_block{j + 1}", **sync,
                              **kw)(
                                  x, amp, train=train)
    x = conv(self.head_width, 1, name="head_conv", **kw)(x)
    x = act(amp(batch_norm(train, name="head_bn", **sync, **kw)(x)))
    if self.amplify_activations:
      x = amp(x)
    amp.check_used_all()
    x = jnp.mean(x, axis=(1, 2))
    return dense(self.num_classes, name="head", **kw)(x)


class LeNet(nn.Module):
  """LeNet-5 as in kuangliu / the GAF code: two 5x5 convs, three Dense.

  ``conv(6, 5x5) - act - maxpool 2 - conv(16, 5x5) - act - maxpool 2 -
  Dense 120 - act - Dense 84 - act - Dense num_classes``, valid padding,
  biases everywhere, no BatchNorm.

  Attributes:
    features: channels of the convs.
    hidden: widths of the hidden Dense layers.
    num_classes: outputs of the head.
    act: activation function or stateful activation module class.
    amplify_activations: also amplify after each activation.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which a stateful activation (ANAct) takes its batch statistics; None
      (the default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      take statistics over separately, or None.

  ``train`` defaults to True, following Flax's examples (see
  :class:`gaf_optax.models.ResNet`); evaluate with ``train=False``.

  Amplification points (no BN here): after each conv and hidden Dense, before
  its activation; with ``amplify_activations`` also after the activation.
  """

  features: Sequence[int] = (6, 16)
  hidden: Sequence[int] = (120, 84)
  num_classes: int = 10
  act: Activation = nn.relu
  amplify_activations: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {
        "features": positive_ints("channels, one 5x5 conv each"),
        "hidden": positive_ints("widths, one hidden Dense layer each"),
    })
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    layers = len(self.features) + len(self.hidden)
    return layers * (2 if self.amplify_activations else 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, c in enumerate(self.features):
      x = act(amp(conv(c, 5, padding="VALID", use_bias=True,
                       name=f"conv{i + 1}", **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = act(amp(dense(width, name=f"fc{i + 1}", **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
    amp.check_used_all()
    return dense(self.num_classes, name="head", **kw)(x)


SigmoidLeNet = functools.partial(LeNet, act=nn.sigmoid)


class MLP(nn.Module):
  """A plain deep MLP on flattened inputs, for small studies.

  ``Dense - act`` (``- Dropout`` with ``dropout_rate``) for each hidden
  width, then a Dense head.

  Attributes:
    features: hidden widths, one Dense layer each.
    num_classes: outputs of the head.
    act: activation function or stateful activation module class.
    amplify_activations: also amplify after each activation.
    dropout_rate: dropout after each hidden activation, in training only
      (inverted dropout: kept units are scaled by ``1 / (1 - rate)``); a rate
      above 0 needs a ``"dropout"`` PRNG key in ``apply(..., rngs=...)``.
    init_scale: multiplier of every kernel's initial variance (LeCun normal
      times ``init_scale``; 1 is Flax's default), for saturating or
      vanishing-gradient studies.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    axis_name: the mapped batch axis (``jax.pmap`` / ``shard_map``) over
      which a stateful activation (ANAct) takes its batch statistics; None
      (the default): each device's own batch.
    axis_index_groups: groups of device indices along ``axis_name`` to
      take statistics over separately, or None.

  ``train`` defaults to True, following Flax's examples (see
  :class:`gaf_optax.models.ResNet`); evaluate with ``train=False``.

  Amplification points (no BN): after each hidden Dense, before its
  activation; with ``amplify_activations`` also after the activation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from gaf_optax.models import MLP
    >>> model = MLP(features=(8, 8), num_classes=3, act=jnp.tanh)
    >>> x = jnp.ones((2, 4, 4, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=True, amp_factors=jnp.ones(2)).shape
    (2, 3)
  """

  features: Sequence[int] = (512, 512, 512, 512)
  num_classes: int = 10
  act: Activation = nn.relu
  amplify_activations: bool = False
  dropout_rate: float = 0.0
  init_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | tuple[str, ...] | None = None
  axis_index_groups: Any = None

  def __post_init__(self):
    check_fields(self, {
        "features": positive_ints("hidden widths, one Dense layer each"),
        "dropout_rate": number_in(0, 1, low_open=False, high_open=True),
        "init_scale": (lambda v: number_in(0, math.inf, low_open=True,
                                           high_open=True)[0](v),
                       "positive and finite"),
    })
    super().__post_init__()

  @property
  def num_amplification_points(self) -> int:
    """Length of the ``amp_factors`` array this model takes."""
    return len(self.features) * (2 if self.amplify_activations else 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = True,
               amp_factors: jax.Array | None = None) -> jax.Array:
    check_sync(self)
    amp = amplification_points(amp_factors,
                               self.num_amplification_points)
    sync = dict(axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups)
    act = make_activation(self.act, train, **sync)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype,
              init_scale=self.init_scale)
    # dropout_rate and init_scale are checked in __post_init__.
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = act(amp(dense(width, name=f"fc{i + 1}", **kw)(x)))
      if self.amplify_activations:
        x = amp(x)
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    amp.check_used_all()
    return dense(self.num_classes, name="head", **kw)(x)
