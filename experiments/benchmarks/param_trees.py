"""Parameter-tree shapes of standard networks, for optimizer benchmarks.

Shapes follow the PyTorch reference implementations (conv kernels in Flax's
HWIO layout; BatchNorm scale and bias; no running statistics), so parameter
counts match theirs: ResNet-18 for CIFAR-10 has 11,173,962 parameters and
ResNet-50 for ImageNet 25,557,032. Only shapes are built here; the Flax
models themselves live in `gaf_optax.models`.

The ``*_torch`` trees hold the same tensors in PyTorch's layout (conv
kernels OIHW, so the minor dimension is 3 or 1; dense kernels (out, in)), as
a model ported from PyTorch has them: elementwise loops on XLA:CPU follow
the minor dimension, so the layout alone changes an optimizer's speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _conv_bn(tree, name, k, cin, cout):
  tree[f"{name}/kernel"] = (k, k, cin, cout)
  tree[f"{name}_bn/scale"] = (cout,)
  tree[f"{name}_bn/bias"] = (cout,)


def resnet_shapes(stage_sizes, bottleneck, *, num_classes, imagenet_stem):
  """Flat dict of parameter shapes of a ResNet (v1.5 for bottlenecks)."""
  tree: dict[str, tuple[int, ...]] = {}
  if imagenet_stem:
    _conv_bn(tree, "stem", 7, 3, 64)
  else:  # CIFAR variant: 3x3 stem, no max-pool
    _conv_bn(tree, "stem", 3, 3, 64)
  cin = 64
  expansion = 4 if bottleneck else 1
  for stage, blocks in enumerate(stage_sizes):
    width = 64 * 2**stage
    for b in range(blocks):
      name = f"stage{stage}_block{b}"
      stride = 2 if (b == 0 and stage > 0) else 1
      cout = width * expansion
      if bottleneck:
        _conv_bn(tree, f"{name}/conv1", 1, cin, width)
        _conv_bn(tree, f"{name}/conv2", 3, width, width)
        _conv_bn(tree, f"{name}/conv3", 1, width, cout)
      else:
        _conv_bn(tree, f"{name}/conv1", 3, cin, width)
        _conv_bn(tree, f"{name}/conv2", 3, width, width)
      if stride != 1 or cin != cout:
        _conv_bn(tree, f"{name}/shortcut", 1, cin, cout)
      cin = cout
  tree["head/kernel"] = (cin, num_classes)
  tree["head/bias"] = (num_classes,)
  return tree


def torch_layout(shapes):
  """The same shapes in PyTorch's layout: HWIO -> OIHW, (in, out) -> (out, in)."""
  out = {}
  for name, shape in shapes.items():
    if len(shape) == 4:
      h, w, i, o = shape
      shape = (o, i, h, w)
    elif len(shape) == 2:
      shape = shape[::-1]
    out[name] = shape
  return out


SHAPES = {
    "resnet18_cifar10": resnet_shapes([2, 2, 2, 2], False, num_classes=10,
                                      imagenet_stem=False),
    "resnet50_imagenet": resnet_shapes([3, 4, 6, 3], True, num_classes=1000,
                                       imagenet_stem=True),
}
SHAPES.update({f"{k}_torch": torch_layout(v) for k, v in list(SHAPES.items())})


def random_tree(name: str, key: jax.Array, scale: float = 1.0,
                dtype=jnp.float32) -> dict[str, jax.Array]:
  """A tree of normal(0, scale) arrays with the shapes of network `name`."""
  shapes = SHAPES[name]
  keys = jax.random.split(key, len(shapes))
  return {k: scale * jax.random.normal(kk, s, dtype)
          for kk, (k, s) in zip(keys, sorted(shapes.items()))}


def num_params(name: str) -> int:
  total = 0
  for shape in SHAPES[name].values():
    n = 1
    for d in shape:
      n *= d
    total += n
  return total


def parse_args(doc: str, default_trees: str, argv=None, *,
               grads_option: bool = False):
  """``--repeats`` and ``--trees`` of the optimizer benchmarks, checked.

  Returns ``(args, trees)``: the parsed arguments and the list of tree names.
  """
  from experiments import cli  # pylint: disable=import-outside-toplevel
  parser = cli.parser(doc)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--trees", default=default_trees)
  if grads_option:
    parser.add_argument(
        "--grads", default="input", choices=GRADS_MODES,
        help="input: the gradients are an argument of the step; computed: "
        "the step materializes them first, as a backward pass would")
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  trees = args.trees.split(",")
  unknown = [t for t in trees if t not in SHAPES]
  if unknown:
    parser.error(f"unknown --trees {unknown}; known: {sorted(SHAPES)}")
  return args, trees


GRADS_MODES = ("input", "computed")


def _check_grads_mode(grads: str) -> None:
  if grads not in GRADS_MODES:
    raise ValueError(f"grads must be one of {GRADS_MODES}; got {grads!r}.")


def update_step(opt, grads: str = "input"):
  """A jitted optimizer update (``update`` + ``apply_updates``), donated.

  What the optimizer benchmarks time: the optimizer alone, on given
  gradients, with no model. ``grads`` says where the gradients live:

  * ``"input"``: an argument of the step. XLA cannot write into it, so an
    optimizer that needs a parameter-sized temporary gets a fresh one each
    step.
  * ``"computed"``: the step receives ``-grads`` and negates it into a
    temporary fenced by an optimization barrier, as a backward pass leaves
    the gradients in a train step: in XLA temporaries, dead after the
    update, whose memory XLA may reuse. The negation is one extra pass over
    the gradients, the same for every optimizer (call the step with the
    negated tree, see :func:`step_grads`).
  """
  import optax  # pylint: disable=import-outside-toplevel

  _check_grads_mode(grads)

  def step(params, state, g):
    if grads == "computed":
      g = jax.lax.optimization_barrier(jax.tree.map(jnp.negative, g))
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def step_grads(grads_tree, grads: str = "input"):
  """What to pass to :func:`update_step`'s step for the gradients ``grads_tree``."""
  _check_grads_mode(grads)
  return grads_tree if grads == "input" else jax.tree.map(jnp.negative,
                                                          grads_tree)
