"""The full-scale configs: the papers' setups, and dry runs of every variant.

Each config file takes a config string (``gaf_cifar.py:resnet18,cifar10,
0.1,20``). Tests, from cheap to expensive:

- every variant (all models x datasets x GAF pairs / baselines /
  amplification selections / activations) holds the paper's key numbers,
  and its optimizer builds and takes an update on a tiny parameter tree;
- every model of every file, at its real input size (224x224 for ImageNet,
  64x64 for Tiny ImageNet) and with its headline variant, is traced through
  the real train step (``Trainer._train_step_fn`` under ``jax.eval_shape``:
  forward, backward, amplification points, optimizer update) without
  compiling; the biggest models (tracing their step takes 3-8 s on this CPU)
  get the init shapes and their optimizer on the real parameter tree;
- one config per file runs two real, compiled steps on tiny generated image
  folders (batch 8 over the 8 simulated devices, one epoch), with the model
  shrunk to one block per stage of small width: a full-size step compiles
  in 15-40 s on this CPU;
- every command in experiments/README.md's table loads and holds its setup.
"""

import math
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import _common
from experiments.configs import amplification_cifar
from experiments.configs import anact_resnet50
from experiments.configs import gaf_cifar
from experiments.configs import gaf_imagenet
from gaf_optax import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
FILES = {
    "gaf_cifar": gaf_cifar,
    "gaf_imagenet": gaf_imagenet,
    "amplification_cifar": amplification_cifar,
    "anact_resnet50": anact_resnet50,
}
GAF_VARIANTS = ("0.1,20", "0.2,10", "sgd", "sgd_matched", "clip_norm",
                "clip_value")


def _args(name):
  """Every config string a file accepts."""
  if name == "gaf_cifar":
    return [f"{m},{d},{v}" for m in gaf_cifar.MODELS
            for d in gaf_cifar.DATASETS for v in GAF_VARIANTS]
  if name == "gaf_imagenet":
    return [f"{m},{v}" for m in gaf_imagenet.MODELS for v in GAF_VARIANTS]
  if name == "amplification_cifar":
    return [f"{m},{d},{v}" for m in amplification_cifar.MODELS
            for d in amplification_cifar.DATASETS
            for v in amplification_cifar.VARIANTS]
  return [f"{a},{d}" for a in anact_resnet50.ACTS
          for d in anact_resnet50.DATASETS]


ALL = [(name, arg) for name in FILES for arg in _args(name)]


# ---------------------------------------------------------------- setups
def _check_gaf_variant(c, variant, base_lr):
  """GAF's (alpha, beta) pair or baseline, against the paper's numbers."""
  if variant in ("0.1,20", "0.2,10"):
    alpha, beta = (float(x) for x in variant.split(","))
    assert c.optimizer == "sgd_gaf"
    assert (c.gaf.alpha, c.gaf.beta) == (alpha, beta)
    assert c.gaf.fn == "arctan" and c.gaf.position == "momentum"
    assert c.learning_rate == base_lr
  elif variant == "sgd":
    assert (c.optimizer, c.learning_rate) == ("sgd", base_lr)
  elif variant == "sgd_matched":  # lr * alpha * beta of both paper pairs
    assert c.optimizer == "sgd"
    assert c.learning_rate == pytest.approx(base_lr * 0.1 * 20)
  elif variant == "clip_norm":
    assert (c.optimizer, c.learning_rate) == ("clip_norm", base_lr)
    assert c.clip == pytest.approx(0.1 * math.pi / 2)
  else:
    assert (c.optimizer, c.learning_rate) == ("clip_value", base_lr)
    assert c.clip == pytest.approx(0.01 * math.pi / 2)


def _check_setup(name, arg, c):
  fields = arg.split(",")
  assert c.batch_size % 8 == 0 and c.eval_batch_size % 8 == 0
  assert c.momentum == 0.9 and not c.nesterov and c.augment and c.flip
  if name == "gaf_cifar":
    model, dataset, variant = fields[0], fields[1], ",".join(fields[2:])
    assert (c.model, c.dataset) == (model, dataset)
    assert (c.num_epochs, c.batch_size, c.weight_decay) == (200, 256, 5e-4)
    assert (c.schedule, c.warmup_epochs) == ("cosine", 1.0)
    assert c.decay_bn_and_bias and c.crop_padding == 4
    assert not c.half_precision and not c.amplification.enabled
    _check_gaf_variant(c, variant, 0.1)
  elif name == "gaf_imagenet":
    model, variant = fields[0], ",".join(fields[1:])
    assert (c.model, c.dataset) == ("imagenet_" + model, "imagenet2012")
    assert (c.num_epochs, c.batch_size, c.weight_decay) == (150, 1024, 4e-5)
    assert (c.schedule, c.warmup_epochs) == ("cosine", 5.0)
    assert not c.decay_bn_and_bias and c.crop_padding == 0
    assert not c.amplification.enabled
    _check_gaf_variant(c, variant, 0.2)
  elif name == "amplification_cifar":
    model, dataset, variant = fields
    assert (c.model, c.dataset, c.optimizer) == (model, dataset, "sgd")
    assert c.amplification.mode == "points"  # after BN layers
    assert (c.amplification.start_epoch, c.amplification.end_epoch) == (1, 50)
    assert c.amplification.factor == 2.0
    assert (c.schedule, tuple(c.decay_epochs)) == ("step", (50, 100))
    assert (c.num_epochs, c.batch_size, c.weight_decay) == (150, 128, 5e-4)
    amp = c.amplification
    if variant in ("sgd", "sgd_matched"):
      assert not amp.enabled
      assert c.learning_rate == (0.1 if variant == "sgd" else 0.1 * 2.0)
    else:
      assert amp.enabled and c.learning_rate == 0.1
      selection, _, threshold = variant.partition("_")
      assert amp.selection == selection  # random: 2020; cv/delta: 2023
      assert amp.threshold == (threshold or "mean")
  else:
    act, dataset = fields
    assert (c.model, c.act) == ("resnet50", act)
    assert c.dataset == ("cifar100" if dataset == "cifar100" else
                         "folder:data/tiny-imagenet-200-folder")
    assert (c.num_epochs, c.batch_size, c.learning_rate) == (200, 256, 0.1)
    assert c.optimizer == "sgd" and not c.amplification.enabled


_TINY_PARAMS = {"conv": {"kernel": jnp.ones((3, 3, 3, 4))},
                "bn": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))}}


@pytest.mark.parametrize("name,arg", ALL, ids=[f"{n}:{a}" for n, a in ALL])
def test_every_variant_holds_the_paper_setup_and_builds(name, arg):
  c = FILES[name].get_config(arg)
  _check_setup(name, arg, c)
  tx, uses_points = training.build_optimizer(
      c, steps_per_epoch=10, params=_TINY_PARAMS, num_points=3)
  assert uses_points == (c.amplification.enabled
                         and c.amplification.mode == "points")
  state = tx.init(_TINY_PARAMS)
  extra = {"layer_stats": jnp.arange(1.0, 4.0)} if uses_points else {}
  updates, _ = tx.update(_TINY_PARAMS, state, _TINY_PARAMS, **extra)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))
  training.build_schedule(c, 10)


@pytest.mark.parametrize("name", FILES)
def test_default_argument_and_errors(name):
  module = FILES[name]
  assert module.get_config().to_dict() == module.get_config(
      module.DEFAULT).to_dict()
  with pytest.raises(ValueError, match="Use "):
    module.get_config("nonsense_model," + module.DEFAULT.split(",", 1)[1])


def test_sgd_matched_is_the_gaf_slope_times_the_rate():
  for alpha, beta in _common.GAF_PAPER_PAIRS:
    assert alpha * beta == 2.0
  assert gaf_cifar.get_config("vgg16,cifar10,sgd_matched").learning_rate == 0.2


# ---------------------------------------------------------------- dry runs
def _write_folder(root, size, per_class=10):
  rng = np.random.default_rng(size)
  for split in ("train", "test"):
    for cls in ("a", "b"):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(per_class):
        image = rng.integers(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(image).save(os.path.join(root, split, cls, f"{i}.png"))
  return "folder:" + root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """Tiny 2-class image folders by side length (20 images per split)."""
  root = tmp_path_factory.mktemp("images")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("GAF_OPTAX_CACHE", str(root / "cache"))
    yield {size: _write_folder(str(root / f"s{size}"), size)
           for size in (32, 64, 224)}


def _image_size(name, arg):
  if name == "gaf_imagenet":
    return 224
  if name == "anact_resnet50" and arg.endswith("tiny_imagenet"):
    return 64
  return 32


def _shrunk(name, arg, folders, **overrides):
  c = FILES[name].get_config(arg)
  c.dataset = folders[_image_size(name, arg)]
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_devices = 1  # sharding is tested in tests/training
  c.num_epochs = 1
  c.progress = c.tensorboard = c.log_to_stdout = False
  c.update(overrides)
  return c


class _ShapeTrainer(training.Trainer):
  """A Trainer whose state holds shapes only: it traces, never compiles."""

  def init_state(self, seed):
    return jax.eval_shape(lambda: training.init_state(
        self.model, self.tx, seed, self.dataset.image_shape))


# Tracing a full train step of these takes 3-8 s each on CPU; they get the
# init shapes and their optimizer on the real parameter tree instead.
BIG = {"resnet50", "resnet101", "densenet121", "mobilenet_v2",
       "imagenet_resnet50"}


def _traced():
  """Every model of every file with its headline variant."""
  picks = []
  for name, arg in ALL:
    fields = arg.split(",")
    if name == "gaf_cifar":
      keep = fields[1] == "cifar10" and fields[2:] == ["0.1", "20"]
    elif name == "gaf_imagenet":
      keep = fields[1:] == ["0.1", "20"]
    elif name == "amplification_cifar":
      keep = fields[1] == "cifar10" and (
          fields[2] == "cv" or fields[::2] == ["vgg19", "random"])
    else:
      keep = fields[0] in ("nswish", "nrelu")
    if keep:
      picks.append((name, arg))
  return picks


TRACED = _traced()
SHAPES_ONLY = [(n, a) for n, a in TRACED if FILES[n].get_config(a).model in BIG
               and a != "nswish,tiny_imagenet"]
TRACED = [p for p in TRACED if p not in SHAPES_ONLY]


@pytest.mark.parametrize("name,arg", TRACED,
                         ids=[f"{n}:{a}" for n, a in TRACED])
def test_full_size_train_step_traces(name, arg, folders):
  trainer = _ShapeTrainer.from_config(_shrunk(name, arg, folders))
  size = _image_size(name, arg)
  batch = {"image": jax.ShapeDtypeStruct((8, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
  state, metrics = jax.eval_shape(trainer.step_fn, trainer.state, batch)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), state.params) == (
      jax.tree.map(lambda s: (s.shape, s.dtype), trainer.state.params))
  assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32
  c = trainer.config
  if c.amplification.enabled:
    assert trainer.amplification_points
    assert trainer.model.num_amplification_points > 0
  if c.act.startswith("n"):  # ANAct keeps its running factor in batch_stats
    leaves = jax.tree_util.tree_leaves_with_path(state.model_state)
    assert any("NSwish" in str(p) or "NReLU" in str(p) or "lambda" in str(p)
               for p, _ in leaves), [str(p) for p, _ in leaves][:5]
  if c.half_precision:
    assert trainer.model.dtype == jnp.bfloat16


@pytest.mark.parametrize("name,arg", SHAPES_ONLY,
                         ids=[f"{n}:{a}" for n, a in SHAPES_ONLY])
def test_big_models_init_shapes_and_optimizer(name, arg, folders):
  c = _shrunk(name, arg, folders)
  size = _image_size(name, arg)
  model = training.build_model(c, 2)
  variables = jax.eval_shape(lambda key: model.init(
      key, jnp.zeros((1, size, size, 3)), train=False), jax.random.key(0))
  params = variables["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) > 2_000_000
  tx, _ = training.build_optimizer(
      c, steps_per_epoch=2, params=params,
      num_points=model.num_amplification_points)
  opt_state = jax.eval_shape(tx.init, params)
  updates, _ = jax.eval_shape(lambda g, s, p: tx.update(g, s, p), params,
                              opt_state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  if c.act.startswith("n"):
    assert "batch_stats" in variables


# Full-size models are traced above; one block per stage of small width
# keeps the CPU compile short (a full-size step takes 15-20 s for ResNet-18
# and ~40 s for ResNet-50 here).
_SMALL_RESNET = {"model_kwargs": {"stage_sizes": (1, 1, 1, 1),
                                  "widths": (16, 32, 64, 128)}}
REAL = [
    ("gaf_cifar", "resnet18,cifar10,0.1,20", _SMALL_RESNET),
    ("gaf_imagenet", "resnet18,0.2,10", _SMALL_RESNET),
    ("amplification_cifar", "resnet18,cifar10,cv", _SMALL_RESNET),
    ("anact_resnet50", "nswish,tiny_imagenet", _SMALL_RESNET),
]


@pytest.fixture
def fast_compile():
  """XLA without most optimizations: halves the CPU compile of a dry run."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.mark.parametrize("name,arg,overrides", REAL,
                         ids=[f"{n}:{a}" for n, a, _ in REAL])
def test_real_steps_one_config_per_file(name, arg, overrides, folders,
                                         fast_compile):
  del fast_compile
  c = _shrunk(name, arg, folders, **overrides)
  trainer = training.Trainer.from_config(c)
  before = jax.device_get(trainer.state.params)
  # Two steps: with warm-up the first step's learning rate is 0.
  losses = [float(trainer.train_step(batch)["loss"])
            for batch in trainer.train_batches(0)]
  assert len(losses) == 2 and int(trainer.state.step) == 2
  assert all(np.isfinite(l) and 0.0 < l < 10.0 for l in losses), losses
  after = jax.device_get(trainer.state.params)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(after))
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(after), jax.tree.leaves(before)))
  assert trainer.amplification_points == c.amplification.enabled


# ---------------------------------------------------------------- README
_COMMAND = re.compile(
    r"--config=experiments/configs/([a-z0-9_]+)\.py:([^\s`]+)")


def test_readme_commands_load_and_cover_every_file():
  text = open(os.path.join(REPO, "experiments", "README.md")).read()
  section = text.split("## Full-scale configs (accelerators)", 1)[1]
  section = section.split("\n## ", 1)[0]
  found = _COMMAND.findall(section)
  assert {name for name, _ in found} == set(FILES)
  for name, arg in found:
    _check_setup(name, arg, FILES[name].get_config(arg))
