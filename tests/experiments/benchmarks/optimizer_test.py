"""The optimizer benchmarks' parameter trees and argument checks."""

import jax
import pytest

from experiments.benchmarks import optimizer
from experiments.benchmarks import param_trees


def test_param_tree_counts_match_pytorch_references():
  assert param_trees.num_params("resnet18_cifar10") == 11_173_962
  assert param_trees.num_params("resnet50_imagenet") == 25_557_032
  # Shapes only (eval_shape): drawing 62 random leaves eagerly compiles 62
  # programs, which took 40 s of the suite.
  tree = jax.eval_shape(lambda: param_trees.random_tree(
      "resnet18_cifar10", jax.random.key(0)))
  assert sum(x.size for x in jax.tree.leaves(tree)) == 11_173_962
  assert {str(x.dtype) for x in jax.tree.leaves(tree)} == {"float32"}


def test_bench_rejects_unknown_tree(capsys):
  with pytest.raises(SystemExit):
    optimizer.main(["--trees", "vgg99"])
  assert "unknown --trees ['vgg99']" in capsys.readouterr().err


def test_torch_layout_trees_hold_the_same_tensors_transposed():
  for name in ("resnet18_cifar10", "resnet50_imagenet"):
    flax, torch = param_trees.SHAPES[name], param_trees.SHAPES[f"{name}_torch"]
    assert flax.keys() == torch.keys()
    assert param_trees.num_params(f"{name}_torch") == param_trees.num_params(
        name)
    conv = flax["stem/kernel"]
    assert torch["stem/kernel"] == (conv[3], conv[2], conv[0], conv[1])
    assert torch["head/kernel"] == flax["head/kernel"][::-1]
