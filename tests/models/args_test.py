"""The reference models check their arguments by value when built (issue 32:
a width of 0 trained silently with a constant loss; -3 or None failed deep
in Flax)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gaf_optax import models

_BAD = [
    # (registry name, kwargs, class, field)
    ("mlp", dict(features=(0,)), "MLP", "features"),
    ("mlp", dict(features=(64, -3)), "MLP", "features"),
    ("mlp", dict(features=None), "MLP", "features"),
    ("mlp", dict(features="(0,)"), "MLP", "features"),  # an unparsed string
    ("mlp", dict(features=(8.0,)), "MLP", "features"),
    ("mlp", dict(features=(True,)), "MLP", "features"),
    ("mlp", dict(num_classes=0), "MLP", "num_classes"),
    ("mlp", dict(dropout_rate=-0.1), "MLP", "dropout_rate"),
    ("mlp", dict(init_scale=float("inf")), "MLP", "init_scale"),
    ("mlp", dict(amplify_activations=1), "MLP", "amplify_activations"),
    ("mlp", dict(act="relu"), "MLP", "act"),
    ("lenet", dict(features=None), "LeNet", "features"),
    ("lenet", dict(features=(-3, 16)), "LeNet", "features"),
    ("sigmoid_lenet", dict(hidden=(120, 0)), "LeNet", "hidden"),
    ("resnet20", dict(widths=(16, 0, 64)), "ResNet", "widths"),
    ("resnet20", dict(widths=()), "ResNet", "widths"),
    ("resnet18", dict(stage_sizes=(2, 2, -1, 2)), "ResNet", "stage_sizes"),
    ("resnet18", dict(num_classes=-1), "ResNet", "num_classes"),
    ("resnet18", dict(block_cls=int), "ResNet", "block_cls"),
    ("resnet8", dict(stem="tiny"), "ResNet", "stem"),
    ("resnet8", dict(shortcut="C"), "ResNet", "shortcut"),
    ("imagenet_se_resnet18", dict(se_reduction=0), "ResNet", "se_reduction"),
    ("vgg16", dict(config=(64, 0, "M")), "VGG", "config"),
    ("vgg19", dict(config=()), "VGG", "config"),
    ("densenet121", dict(block_sizes=(6, 0)), "DenseNet", "block_sizes"),
    ("densenet121", dict(growth_rate=0), "DenseNet", "growth_rate"),
    ("densenet121", dict(reduction=0.0), "DenseNet", "reduction"),
    ("densenet121", dict(reduction=1.5), "DenseNet", "reduction"),
    ("mobilenet_v2", dict(config=((1, 16, 1),)), "MobileNetV2", "config"),
    ("mobilenet_v2", dict(config=((1, 0, 1, 1),)), "MobileNetV2", "config"),
    ("mobilenet_v2", dict(stem_width=0), "MobileNetV2", "stem_width"),
    ("mobilenet_v2", dict(head_width=None), "MobileNetV2", "head_width"),
]


@pytest.mark.parametrize("name, kwargs, cls, field", _BAD,
                         ids=[f"{n}-{f}-{i}" for i, (n, _, _, f)
                              in enumerate(_BAD)])
def test_bad_value_is_refused_naming_model_argument_and_accepted(
    name, kwargs, cls, field):
  with pytest.raises(ValueError) as info:
    models.get(name, **kwargs)
  message = str(info.value)
  assert message.startswith(f"Model {name!r}: {cls}.{field} must be "), message
  assert message.endswith(f"; got {kwargs[field]!r}."), message
  # Built directly too (models.MLP(...), models.ResNet20(...): the
  # registry's constructors): the same check, in __post_init__.
  constructor = models._MODELS[name]  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=rf"^{cls}\.{field} must be "):
    constructor(**kwargs)


def test_messages_say_what_is_accepted():
  cases = {
      ("mlp", "features", (0,)): "a tuple of positive ints (hidden widths",
      ("resnet20", "widths", (16, 0, 64)):
          "a non-empty tuple of positive ints (channels per stage)",
      ("resnet8", "stem", "x"): "one of 'cifar', 'cifar_preact', 'imagenet'",
      ("mlp", "dropout_rate", 1.0): "in [0, 1)",
      ("densenet121", "reduction", 0.0): "in (0, 1]",
      ("mlp", "init_scale", 0.0): "positive and finite",
  }
  for (name, field, value), accepted in cases.items():
    with pytest.raises(ValueError, match=re.escape(
        f"{field} must be {accepted}")):
      models.get(name, **{field: value})


def test_widths_and_stage_sizes_of_different_lengths_fail_when_built():
  with pytest.raises(ValueError, match=r"ResNet\.widths \(16, 32\) and "
                     r"stage_sizes \(3, 3, 3\) differ in length"):
    models.get("resnet20", widths=(16, 32))


def test_nnx_models_get_the_same_checks():
  with pytest.raises(ValueError,
                     match=r"^Model 'mlp': MLP\.features must be a tuple"):
    models.get_nnx("mlp", features=(0,), input_shape=(2, 2, 1),
                   rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"^Model 'lenet': LeNet\.features"):
    models.get_nnx("lenet", features=None, input_shape=(32, 32, 3),
                   rngs=nnx.Rngs(0))


def test_densenet_reduction_that_leaves_no_channel_is_refused():
  model = models.DenseNet(block_sizes=(1, 1), growth_rate=2, reduction=0.1)
  with pytest.raises(ValueError, match=r"DenseNet\.reduction=0\.1 leaves "
                     r"transition 1 no channel"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


def test_config_with_a_zero_width_fails_before_training():
  # Issue 32's silent item: `--config.model_kwargs.features='(0,)'` (parsed
  # to a tuple by ml_collections) trained with the loss stuck at ln 10.
  from experiments.configs import digits_mlp
  from gaf_optax.training import _build
  config = digits_mlp.get_config()
  config.model_kwargs.features = (0,)
  with pytest.raises(ValueError, match=r"MLP\.features must be a tuple of "
                     r"positive ints .*; got \(0,\)"):
    _build.build_model(config, num_classes=10)


@pytest.mark.parametrize("kwargs", [
    dict(features=()),                      # no hidden layer: a linear model
    dict(features=[8, 8]),                  # a list
    dict(features=(np.int64(8),)),          # NumPy ints
    dict(features=(8,), init_scale=2, dropout_rate=0),  # int numbers
])
def test_valid_edge_values_are_accepted(kwargs):
  model = models.get("mlp", num_classes=3, **kwargs)
  x = jnp.ones((2, 2, 2, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 3)
  widths = [int(np.shape(v["kernel"])[1]) for k, v in
            sorted(variables["params"].items()) if k.startswith("fc")]
  assert widths == [int(w) for w in kwargs["features"]]
