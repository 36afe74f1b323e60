"""Flax reference models for CIFAR and ImageNet, with gradient hooks.

Every model is a ``flax.linen`` module on NHWC images that returns logits::

  model = gaf_optax.models.get("resnet18", num_classes=10)
  variables = model.init(key, x)
  logits, updates = model.apply(variables, x, train=True, amp_factors=None,
                                mutable=["batch_stats"])
  logits = model.apply(variables, x, train=False)  # evaluation

``train`` defaults to True, as in Flax's examples (examples/imagenet): so
``model.init(key, x)`` and a training step ``model.apply(variables, x,
mutable=["batch_stats"])`` work unchanged in a Flax training script.
Initializing in training mode stores the same initial statistics as
``train=False`` (BatchNorm and ANAct update nothing while initializing).
Evaluation passes ``train=False``: for a model with BatchNorm or ANAct the
default without ``mutable`` raises (it would update the statistics) rather
than silently evaluate in the wrong mode.

Registry names (``names()`` lists them; ``get(name, **kwargs)`` passes the
keyword arguments to the constructor, e.g. ``num_classes``, ``act``,
``dtype``, or smaller ``widths`` for tests):

- CIFAR, 32x32 input, 10 classes by default: ``resnet18``, ``resnet34``,
  ``resnet50``, ``resnet101``, ``preact_resnet18``, ``vgg16``, ``vgg19``,
  ``densenet121``, ``mobilenet_v2``, ``lenet``, ``sigmoid_lenet`` (kuangliu's
  pytorch-cifar, used by the official GAF code), ``resnet8``, ``resnet20``,
  ``resnet56`` (He et al.'s CIFAR ResNets with option-A shortcuts), ``mlp`` (a plain MLP
  on the flattened input, any input size).
- ImageNet, 224x224 input, 1000 classes by default (torchvision):
  ``imagenet_resnet18``, ``imagenet_resnet34``, ``imagenet_resnet50`` (v1.5),
  ``imagenet_se_resnet18`` (squeeze-excitation, reduction 16).

Parameter counts equal the PyTorch references (BN scale and bias count,
running statistics do not); see ``num_params``.

Hooks shared by all models:

- ``act``: an activation function (``nn.relu``, ``gaf_optax.nn.gaaf_relu``)
  or a stateful activation module class (``gaf_optax.nn.NSwish``), whose
  state lives in ``batch_stats`` next to BatchNorm's.
- ``dtype`` / ``param_dtype``: e.g. bfloat16 compute with float32 parameters.
- BatchNorm uses PyTorch's defaults (momentum 0.9, epsilon 1e-5), batch
  statistics when ``train=True`` and running statistics otherwise.
- ``axis_name`` / ``axis_index_groups``: as ``flax.linen.BatchNorm``'s.
  Under ``jax.pmap`` or ``shard_map`` over that axis every BatchNorm and
  every stateful activation with an ``axis_name`` field (ANAct) takes the
  global batch's statistics, so replicas stay identical and equal to one
  device on the whole batch, e.g. ``get("resnet20", axis_name="batch")``
  for Flax's pmap examples. None (default): each device's own batch. Under
  ``jax.jit`` with a sharded batch it is not needed (XLA reduces over the
  whole array).
- ``amp_factors``: gradient-amplification points (Basodi et al. 2020; see
  ``gaf_optax.nn.amplify``). Each model has ``num_amplification_points``
  points; pass ``amp_factors`` as ``float32[num_amplification_points]`` (a
  traced argument: changing it never recompiles) or ``None`` (no points).
  Point ``i`` multiplies the gradient flowing back through it by
  ``amp_factors[i]``. BN models put a point after each BatchNorm of the main
  or residual branch, never on a shortcut or projection BN nor after a
  residual addition; LeNet and the MLP (no BN) after each conv / hidden Dense,
  before the activation. ``amplify_activations=True`` adds a point after each
  such activation. The model classes document their exact placement; the
  points are numbered in forward order (input side first).
- Per-point statistics: ``jax.grad`` of the loss with respect to
  ``amp_factors`` gives, for each point, the squared norm of the gradient
  signal arriving at it (before it is amplified); ``gaf_optax.nn.
  signal_norms`` turns that into the norms the amplification controller
  takes. One backward pass gives both::

    def loss_fn(params, factors):
      logits, updates = model.apply({"params": params, **state}, x,
                                    train=True, amp_factors=factors,
                                    mutable=["batch_stats"])
      return loss(logits, y), updates
    (loss, updates), (grads, sq_norms) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, factors)

Example:
  >>> import jax, jax.numpy as jnp
  >>> from gaf_optax import models
  >>> models.get("resnet20").num_amplification_points  # no tracing needed
  19
  >>> model = models.get("mlp", features=(8, 8), num_classes=3)
  >>> x = jnp.ones((4, 2, 2, 3))
  >>> variables = model.init(jax.random.key(0), x)
  >>> def loss(params, factors):
  ...   logits = model.apply({"params": params}, x, train=True,
  ...                        amp_factors=factors)
  ...   return jnp.sum(logits ** 2)
  >>> factors = jnp.full((model.num_amplification_points,), 2.0)
  >>> grads, sq_norms = jax.grad(loss, argnums=(0, 1))(variables["params"],
  ...                                                   factors)
  >>> sq_norms.shape  # one squared signal norm per point
  (2,)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
from flax import nnx

from gaf_optax.models._cifar import MLP
from gaf_optax.models._cifar import DenseNet
from gaf_optax.models._cifar import DenseNet121
from gaf_optax.models._cifar import LeNet
from gaf_optax.models._cifar import MobileNetV2
from gaf_optax.models._cifar import PreActResNet18
from gaf_optax.models._cifar import ResNet18
from gaf_optax.models._cifar import ResNet8
from gaf_optax.models._cifar import ResNet20
from gaf_optax.models._cifar import ResNet34
from gaf_optax.models._cifar import ResNet50
from gaf_optax.models._cifar import ResNet56
from gaf_optax.models._cifar import ResNet101
from gaf_optax.models._cifar import SigmoidLeNet
from gaf_optax.models._cifar import VGG
from gaf_optax.models._cifar import VGG16
from gaf_optax.models._cifar import VGG19
from gaf_optax.models._common import make_activation
from gaf_optax.models._common import num_params
from gaf_optax.models._imagenet import ImageNetResNet18
from gaf_optax.models._imagenet import ImageNetResNet34
from gaf_optax.models._imagenet import ImageNetResNet50
from gaf_optax.models._imagenet import ImageNetSEResNet18
from gaf_optax.models._nnx import NNXModel
from gaf_optax.models._resnet import BasicBlock
from gaf_optax.models._resnet import Bottleneck
from gaf_optax.models._resnet import PreActBlock
from gaf_optax.models._resnet import ResNet
from gaf_optax.models._resnet import SqueezeExcite

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "DenseNet121",
    "ImageNetResNet18",
    "ImageNetResNet34",
    "ImageNetResNet50",
    "ImageNetSEResNet18",
    "LeNet",
    "MLP",
    "MobileNetV2",
    "NNXModel",
    "PreActBlock",
    "PreActResNet18",
    "ResNet",
    "ResNet101",
    "ResNet18",
    "ResNet8",
    "ResNet20",
    "ResNet34",
    "ResNet50",
    "ResNet56",
    "SigmoidLeNet",
    "SqueezeExcite",
    "VGG",
    "VGG16",
    "VGG19",
    "accepted_kwargs",
    "get",
    "get_nnx",
    "make_activation",
    "names",
    "num_params",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    # CIFAR (32x32).
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet8": ResNet8,
    "resnet20": ResNet20,
    "resnet56": ResNet56,
    "preact_resnet18": PreActResNet18,
    "vgg16": VGG16,
    "vgg19": VGG19,
    "densenet121": DenseNet121,
    "mobilenet_v2": MobileNetV2,
    "lenet": LeNet,
    "sigmoid_lenet": SigmoidLeNet,
    "mlp": MLP,
    # ImageNet (224x224).
    "imagenet_resnet18": ImageNetResNet18,
    "imagenet_resnet34": ImageNetResNet34,
    "imagenet_resnet50": ImageNetResNet50,
    "imagenet_se_resnet18": ImageNetSEResNet18,
}


def names() -> tuple[str, ...]:
  """The registry's model names, sorted."""
  return tuple(sorted(_MODELS))


def get(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as ``name``.

  Args:
    name: a registry name (see the module docstring or :func:`names`).
    **kwargs: passed to the model's constructor, overriding its defaults
      (``num_classes``, ``act``, ``amplify_activations``, ``dtype``,
      ``param_dtype``, ``axis_name``, ``axis_index_groups``, and
      architecture fields such as ``widths``).

  Returns:
    The (unbound) Flax module.

  Raises:
    ValueError: for an unknown name (the message lists the known names), an
      argument the model does not take, or a value it does not accept (a
      width of 0, ``features=None``): the message names the model, the
      argument and what is accepted. The models check their arguments when
      built (also when built directly, e.g. ``models.MLP(...)``), so the
      NNX models of :func:`get_nnx` get the same checks.
  """
  try:
    constructor = _MODELS[name]
  except KeyError:
    raise ValueError(f"Unknown model {name!r}; known models: "
                     f"{', '.join(names())}.") from None
  accepted = accepted_kwargs(name)
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(
        f"Unknown argument(s) {', '.join(map(repr, unknown))} for model "
        f"{name!r}; it accepts: {', '.join(sorted(accepted))}.")
  try:
    return constructor(**kwargs)
  except ValueError as e:  # the model's own check (see _common.check_fields)
    raise ValueError(f"Model {name!r}: {e}") from None


def get_nnx(name: str, *, input_shape: Sequence[int], rngs: nnx.Rngs,
            amplification: bool = False, **kwargs: Any) -> NNXModel:
  """The model registered as ``name``, as an NNX module (:class:`NNXModel`).

  Args:
    name: a registry name (:func:`gaf_optax.models.names`).
    input_shape: one example's shape, e.g. ``(32, 32, 3)``.
    rngs: ``nnx.Rngs`` (``nnx.Rngs(0)``, or ``nnx.Rngs(params=0,
      dropout=1)``).
    amplification: hold amplification factors (see :class:`NNXModel`).
    **kwargs: the Linen model's fields, as for :func:`gaf_optax.models.get`.
  """
  return NNXModel(get(name, **kwargs), input_shape, rngs=rngs,
                  amplification=amplification)


def accepted_kwargs(name: str) -> set[str]:
  """The keyword arguments :func:`get` accepts for model ``name``."""
  constructor = _MODELS[name]
  while isinstance(constructor, functools.partial):
    constructor = constructor.func
  return {f.name for f in dataclasses.fields(constructor)
          if f.init and f.name not in ("parent", "name")}
