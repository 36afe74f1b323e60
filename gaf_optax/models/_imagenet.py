"""ImageNet models (224x224 NHWC input), after torchvision.

ResNet-18/34/50 are torchvision's (ResNet-50 is v1.5: the stride sits on the
3x3 conv of the bottleneck). SE-ResNet-18 is ResNet-18 with a
squeeze-excitation gate (reduction 16, Dense layers with biases) on each
block's residual branch, after its last BN and before the addition (Hu et al.
2018); the official GAF ImageNet code's own SE-ResNet-18 definition is not
published with it, so this is the paper's design.
"""

from __future__ import annotations

import functools

from gaf_optax.models._resnet import BasicBlock
from gaf_optax.models._resnet import Bottleneck
from gaf_optax.models._resnet import ResNet

__all__ = [
    "ImageNetResNet18",
    "ImageNetResNet34",
    "ImageNetResNet50",
    "ImageNetSEResNet18",
]

ImageNetResNet18 = functools.partial(
    ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="imagenet",
    num_classes=1000)
ImageNetResNet34 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock, stem="imagenet",
    num_classes=1000)
ImageNetResNet50 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, stem="imagenet",
    num_classes=1000)
ImageNetSEResNet18 = functools.partial(
    ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem="imagenet",
    se_reduction=16, num_classes=1000)
