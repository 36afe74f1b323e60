"""Smoke and correctness tests for the experiment entry points."""

import jax
import numpy as np
import optax
import pytest

import gaf_optax
from experiments import bench_optimizer, demo, param_trees


def test_param_tree_counts_match_pytorch_references():
  assert param_trees.num_params("resnet18_cifar10") == 11_173_962
  assert param_trees.num_params("resnet50_imagenet") == 25_557_032
  tree = param_trees.random_tree("resnet18_cifar10", jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(tree)) == 11_173_962


def test_bench_rejects_unknown_tree(capsys):
  with pytest.raises(SystemExit):
    bench_optimizer.main(["--trees", "vgg99"])
  assert "unknown --trees ['vgg99']" in capsys.readouterr().err


def test_demo_training_learns(monkeypatch):
  monkeypatch.setattr(demo, "STEPS", 60)
  x, y = demo.spirals(1024, seed=100)
  chance = np.log(2.0)
  for opt in (gaf_optax.sgd_gaf(0.05, 0.9), optax.sgd(0.05, 0.9)):
    loss, acc = demo.train(opt, seed=0)
    assert np.isfinite(loss) and loss < chance and 0.5 < acc <= 1.0
