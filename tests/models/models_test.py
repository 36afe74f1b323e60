"""Reference models: parameter counts, BN modes, activation and amp hooks.

Full-size models are only traced (``jax.eval_shape``); anything that runs
uses tiny widths and depths.
"""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gaf_optax import models
from gaf_optax import nn as gnn

# Parameter counts of the PyTorch references (BN scale + bias, no running
# statistics), default num_classes (10 for CIFAR, 1000 for ImageNet):
# - kuangliu/pytorch-cifar models (the official GAF code's): ResNet-18/34/
#   50/101, PreActResNet-18, VGG-16/19, DenseNet-121, MobileNetV2, LeNet;
#   widely quoted counts, re-derived by formula from the PyTorch layer lists;
# - akamaster/pytorch_resnet_cifar10 (option A): ResNet-20 269,722 (its
#   README: 0.27M), ResNet-56 853,018 (0.85M);
# - torchvision: resnet18 11,689,512, resnet34 21,797,672, resnet50
#   25,557,032 (its model docs);
# - SE-ResNet-18: torchvision resnet18 + 2 biased Dense layers per block,
#   C -> C/16 -> C: 11,689,512 + 89,080 (formula);
# - MLP (ours): 3072*512+512 + 3*(512*512+512) + 512*10+10.
PARAM_COUNTS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
    "resnet8": 75_290,
    "resnet20": 269_722,
    "resnet56": 853_018,
    "preact_resnet18": 11_171_146,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
    "densenet121": 6_956_298,
    "mobilenet_v2": 2_296_922,
    "lenet": 62_006,
    "sigmoid_lenet": 62_006,
    "mlp": 2_366_474,
    "imagenet_resnet18": 11_689_512,
    "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
    "imagenet_se_resnet18": 11_778_592,
}

# Amplification points with amplify_activations=False, counted by hand from
# the placement rules: stem BN + 2 or 3 per block (ResNets), one per BN
# (VGG), 2 per dense layer + 4 transition/final BNs (DenseNet), stem + 3 per
# block + final (MobileNetV2), one per conv / hidden Dense (LeNet, MLP).
POINTS = {
    "resnet18": 1 + 2 * 8, "resnet34": 1 + 2 * 16, "resnet50": 1 + 3 * 16,
    "resnet101": 1 + 3 * 33, "resnet8": 1 + 2 * 3,
    "resnet20": 1 + 2 * 9, "resnet56": 1 + 2 * 27,
    "preact_resnet18": 2 * 8, "vgg16": 13, "vgg19": 16,
    "densenet121": 2 * 58 + 4, "mobilenet_v2": 2 + 3 * 17, "lenet": 4,
    "sigmoid_lenet": 4, "mlp": 4, "imagenet_resnet18": 1 + 2 * 8,
    "imagenet_resnet34": 1 + 2 * 16, "imagenet_resnet50": 1 + 3 * 16,
    "imagenet_se_resnet18": 1 + 2 * 8,
}

# Same depth as the registry models would be slow to run; these tiny
# configurations keep every kind of layer and block.
TINY = {
    "resnet18": dict(widths=(4, 8, 8, 8), stage_sizes=(1, 1, 1, 1)),
    "resnet50": dict(widths=(2, 4, 4, 4), stage_sizes=(1, 2, 1, 1)),
    "resnet20": dict(widths=(4, 8, 16), stage_sizes=(1, 2, 1)),
    "preact_resnet18": dict(widths=(4, 8, 8, 8), stage_sizes=(1, 2, 1, 1)),
    "vgg16": dict(config=(4, "M", 8, 8, "M", 8, "M", 8, "M", 8, "M")),
    "densenet121": dict(block_sizes=(2, 1, 1), growth_rate=4),
    "mobilenet_v2": dict(config=((1, 4, 1, 1), (2, 6, 2, 1), (2, 8, 2, 2)),
                         stem_width=4, head_width=8),
    "lenet": dict(features=(2, 3), hidden=(5, 4)),
    "mlp": dict(features=(6, 5, 4)),
    "imagenet_se_resnet18": dict(widths=(16, 16, 32, 32),
                                 stage_sizes=(1, 1, 1, 1)),
}


def _input_shape(name, batch=2):
  size = 224 if name.startswith("imagenet") else 32
  return (batch, size, size, 3)


def _count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _init(model, x):
  # The "rbg" PRNG compiles several times faster than threefry on CPU.
  return jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), x)


def _apply(model, variables, x, *, train, factors=None):
  """Jitted apply: (logits, updated batch_stats collection)."""
  return jax.jit(functools.partial(model.apply, train=train,
                                   mutable=["batch_stats"]))(
                                       variables, x, amp_factors=factors)


def test_registry_lists_every_counted_model():
  assert set(models.names()) == set(PARAM_COUNTS) == set(POINTS)
  assert list(models.names()) == sorted(models.names())


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_output_shape_and_amplification_points(name):
  model = models.get(name)
  n = model.num_amplification_points
  x = jax.ShapeDtypeStruct(_input_shape(name), jnp.float32)

  def init_and_apply(x):
    variables = model.init(jax.random.key(0), x, train=False)
    # Exactly n points: with more, the model raises at point n + 1; with
    # fewer, check_used_all raises.
    logits = model.apply(variables, x, train=False,
                         amp_factors=jnp.ones(n))
    return variables, logits

  variables, logits = jax.eval_shape(init_and_apply, x)
  assert _count(variables["params"]) == PARAM_COUNTS[name]
  classes = 1000 if name.startswith("imagenet") else 10
  assert logits.shape == (2, classes)
  assert n == POINTS[name]


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_models_amplify_activations_point_count(name):
  model = models.get(name, amplify_activations=True, **TINY[name])
  plain = models.get(name, **TINY[name])
  n = model.num_amplification_points
  assert n > plain.num_amplification_points
  x = jnp.ones(_input_shape(name, batch=1))
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(
      v, x, train=True, amp_factors=jnp.ones(n), mutable=["batch_stats"]),
                       variables)
  assert out[0].shape == (1, model.num_classes)


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_number_of_factors_raises_with_expected_length(delta):
  model = models.get("resnet20", **TINY["resnet20"])
  n = model.num_amplification_points
  assert n == 1 + 2 * 4
  x = jnp.ones((1, 8, 8, 3))
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=False))
  with pytest.raises(ValueError, match=rf"shape \({n},\)"):
    jax.eval_shape(lambda v: model.apply(v, x, train=False,
                                         amp_factors=jnp.ones(n + delta)),
                   variables)


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError, match="Unknown model 'resnet9'") as info:
    models.get("resnet9")
  for name in models.names():
    assert name in str(info.value)


def test_get_passes_keyword_arguments():
  model = models.get("resnet18", num_classes=100, act=nn.swish)
  assert model.num_classes == 100 and model.act is nn.swish
  assert models.get("sigmoid_lenet").act is nn.sigmoid


def test_batchnorm_batch_stats_in_train_running_stats_in_eval():
  # One conv + BN + ReLU, a 1x1 map, the head: checkable by hand.
  model = models.VGG(config=(3, "M"), num_classes=2)
  x = 5.0 + 3.0 * jax.random.normal(jax.random.key(1), (8, 2, 2, 2))
  variables = _init(model, x)
  params = variables["params"]
  conv_out = nn.Conv(3, (3, 3), padding=1).apply(
      {"params": params["conv0"]}, x)

  def head(h):
    h = jnp.max(nn.relu(h), axis=(1, 2))  # 2x2 max-pool to 1x1
    return h @ params["head"]["kernel"] + params["head"]["bias"]

  mean, var = conv_out.mean(axis=(0, 1, 2)), conv_out.var(axis=(0, 1, 2))
  logits, updates = _apply(model, variables, x, train=True)
  np.testing.assert_allclose(
      logits, head((conv_out - mean) / jnp.sqrt(var + 1e-5)), rtol=1e-4,
      atol=1e-5)
  stats = updates["batch_stats"]["bn0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)

  logits_eval, same = _apply(model, variables, x, train=False)
  np.testing.assert_allclose(logits_eval, head(conv_out / jnp.sqrt(1 + 1e-5)),
                             rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits, logits_eval, atol=1e-2)
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"],
               variables["batch_stats"])


def _grad_fn(model, variables, x):
  """factors -> (parameter gradients of a fixed nonlinear loss, logits)."""
  def loss(params, factors):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            amp_factors=factors, mutable=["batch_stats"])
    weights = jnp.arange(logits.size, dtype=logits.dtype).reshape(
        logits.shape)
    return jnp.sum(jnp.sin(logits) * weights), logits
  grad = jax.jit(jax.grad(loss, has_aux=True))
  return lambda factors=None: grad(variables["params"], factors)


def _tiny_resnet(**kwargs):
  model = models.get("resnet20", **{"widths": (4, 8), "stage_sizes": (1, 1),
                                    **kwargs})
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  return model, _init(model, x), x


def test_gaaf_relu_same_logits_different_gradients():
  model, variables, x = _tiny_resnet()
  grads, logits = _grad_fn(model, variables, x)()
  grads_gaaf, logits_gaaf = _grad_fn(model.clone(act=gnn.gaaf_relu),
                                     variables, x)()
  np.testing.assert_array_equal(logits_gaaf, logits)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads,
                      grads_gaaf)
  assert max(jax.tree.leaves(diff)) > 1e-3


def test_amplification_in_a_tiny_mlp_matches_closed_form():
  model = models.MLP(features=(5, 4), num_classes=3, act=jnp.tanh)
  x = jax.random.normal(jax.random.key(1), (6, 7))
  variables = _init(model, x)
  grad_fn = _grad_fn(model, variables, x)
  grads, logits = grad_fn(jnp.ones(2))
  grads2, logits2 = grad_fn(jnp.full((2,), 2.0))
  np.testing.assert_array_equal(logits2, logits)
  for layer, scale in (("fc1", 4.0), ("fc2", 2.0), ("head", 1.0)):
    for leaf in ("kernel", "bias"):
      np.testing.assert_allclose(grads2[layer][leaf],
                                 scale * grads[layer][leaf], rtol=1e-6)

  # d loss / d factors = squared norms of the signals arriving at the
  # points, each already amplified by the points above it.
  p = variables["params"]
  weights = jnp.arange(18.0).reshape(6, 3)
  z1 = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  z2 = jnp.tanh(z1) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  out = jnp.tanh(z2) @ p["head"]["kernel"] + p["head"]["bias"]
  g_out = weights * jnp.cos(out)
  g_z2 = (g_out @ p["head"]["kernel"].T) * (1 - jnp.tanh(z2) ** 2)
  a1, a2 = 3.0, 0.5
  g_z1 = ((a2 * g_z2) @ p["fc2"]["kernel"].T) * (1 - jnp.tanh(z1) ** 2)

  def loss_of_factors(factors):
    logits = model.apply(variables, x, train=True, amp_factors=factors)
    return jnp.sum(jnp.sin(logits) * weights)

  factor_grads = jax.jit(jax.grad(loss_of_factors))(jnp.array([a1, a2]))
  np.testing.assert_allclose(
      factor_grads, [jnp.sum(g_z1**2), jnp.sum(g_z2**2)], rtol=1e-5)
  np.testing.assert_allclose(gnn.signal_norms(factor_grads),
                             [jnp.linalg.norm(g_z1), jnp.linalg.norm(g_z2)],
                             rtol=1e-5)


@pytest.mark.parametrize("block, expected", [
    # Last block (no points above it): a point after each BN of the branch.
    ("resnet18", {"conv1": 4.0, "bn1": 4.0, "conv2": 2.0, "bn2": 2.0}),
    # Pre-activation: points after act(bn1) (branch copy) and after bn2.
    ("preact_resnet18", {"conv1": 2.0, "bn2": 2.0, "conv2": 1.0}),
])
def test_amplification_skips_the_shortcut(block, expected):
  model = models.get(block, widths=(4, 8), stage_sizes=(1, 1))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  variables = _init(model, x)
  n = model.num_amplification_points
  grad_fn = _grad_fn(model, variables, x)
  grads, logits = grad_fn(jnp.ones(n))
  grads2, logits2 = grad_fn(jnp.full((n,), 2.0))
  np.testing.assert_array_equal(logits2, logits)
  last, last2 = grads["stage2_block1"], grads2["stage2_block1"]
  shortcut = ["shortcut_conv"] + (["shortcut_bn"] if "shortcut_bn" in last
                                  else [])
  for layer, scale in {**expected, **dict.fromkeys(shortcut, 1.0),
                       "head": 1.0}.items():
    tree, tree2 = ((grads["head"], grads2["head"]) if layer == "head"
                   else (last[layer], last2[layer]))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                   atol=1e-7),
                 tree2, jax.tree.map(lambda g, s=scale: s * g, tree))


def test_stateful_activation_nswish_in_a_resnet():
  model, variables, x = _tiny_resnet(act=gnn.NSwish)
  stats = variables["batch_stats"]
  lambdas = {k: v for k, v in stats["stage1_block1"].items()
             if k.startswith("NSwish")}
  assert sorted(lambdas) == ["NSwish_0", "NSwish_1"]
  assert "NSwish_0" in stats  # the stem's
  lam0 = gnn.gaussian_lambda(nn.swish)
  np.testing.assert_allclose(lambdas["NSwish_0"]["lambda"], lam0, rtol=1e-6)

  _, updates = _apply(model, variables, x, train=True)
  new = updates["batch_stats"]["stage1_block1"]
  assert not np.allclose(new["NSwish_0"]["lambda"], lam0, rtol=1e-6)
  assert not np.allclose(new["bn1"]["mean"], 0.0)
  _, same = _apply(model, variables, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], stats)


def test_bfloat16_compute_with_float32_params():
  model, variables, x = _tiny_resnet(dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {
      jnp.dtype(jnp.float32)}
  logits, _ = _apply(model, variables, x, train=True,
                     factors=jnp.ones(model.num_amplification_points))
  assert logits.dtype == jnp.bfloat16
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_mlp_dropout_masks_and_rescales_hidden_units_in_training_only():
  rate = 0.5
  x = jax.random.normal(jax.random.key(0), (4, 6))
  plain = models.MLP(features=(64,), num_classes=2, act=nn.relu)
  dropped = models.MLP(features=(64,), num_classes=2, act=nn.relu,
                       dropout_rate=rate)
  variables = plain.init(jax.random.key(1), x, train=False)
  # Dropout adds no parameters, and evaluation is deterministic and equal.
  assert jax.tree.structure(variables) == jax.tree.structure(
      dropped.init(jax.random.key(1), x, train=False))
  np.testing.assert_array_equal(
      dropped.apply(variables, x, train=False),
      plain.apply(variables, x, train=False))
  # Training: the head sees h * keep / (1 - rate), keep ~ Bernoulli(1 - rate).
  key = jax.random.key(2)
  out = dropped.apply(variables, x, train=True, rngs={"dropout": key})
  p = variables["params"]
  h = nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  # Each hidden unit enters the head as 0 or as h / (1 - rate).
  _, inter = dropped.apply(variables, x, train=True, rngs={"dropout": key},
                           capture_intermediates=True,
                           mutable=["intermediates"])
  seen = inter["intermediates"]["Dropout_0"]["__call__"][0]
  scaled = h / (1 - rate)
  is_zero = np.isclose(seen, 0.0)
  np.testing.assert_allclose(np.where(is_zero, scaled, seen), scaled,
                             rtol=1e-6)
  assert 0.3 < is_zero[h > 0].mean() < 0.7
  np.testing.assert_allclose(
      out, seen @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5,
      atol=1e-6)
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    dropped.apply(variables, x, train=True)
  with pytest.raises(ValueError, match="dropout_rate must be in"):
    models.MLP(features=(4,), dropout_rate=1.0).init(
        jax.random.key(0), x, train=False)


def test_mlp_init_scale_multiplies_every_kernels_variance():
  x = jnp.ones((2, 4, 4, 1))
  key = jax.random.key(3)
  base = models.MLP(features=(8, 8), num_classes=3).init(key, x, train=False)
  scaled = models.MLP(features=(8, 8), num_classes=3, init_scale=0.25).init(
      key, x, train=False)
  for name in ("fc1", "fc2", "head"):
    np.testing.assert_allclose(scaled["params"][name]["kernel"],
                               0.5 * base["params"][name]["kernel"],
                               rtol=1e-6)
    np.testing.assert_array_equal(scaled["params"][name]["bias"],
                                  base["params"][name]["bias"])
  with pytest.raises(ValueError, match="init_scale must be positive"):
    models.MLP(features=(8,), init_scale=0.0).init(key, x, train=False)
