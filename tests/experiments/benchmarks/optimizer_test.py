"""The optimizer benchmarks' parameter trees and argument checks."""

import jax
import numpy as np
import optax
import pytest

import gaf_optax

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


def _tiny_torch_tree(key, scale=1.0):
  # A PyTorch-layout conv kernel (minor dimension 3) and a bias.
  k1, k2 = jax.random.split(key)
  return {"conv": scale * jax.random.normal(k1, (32, 16, 3, 3)),
          "bias": scale * jax.random.normal(k2, (32,))}


def _step_once(opt, mode):
  params = _tiny_torch_tree(jax.random.key(0))
  grads = _tiny_torch_tree(jax.random.key(1), scale=1e-2)
  state = opt.init(params)
  step = param_trees.update_step(opt, mode)
  g = param_trees.step_grads(grads, mode)
  temp = step.lower(params, state, g).compile().memory_analysis()
  return step(params, state, g), temp.temp_size_in_bytes


def test_computed_grads_step_the_same_as_input_grads():
  opt = gaf_optax.sgd_gaf(0.1, 0.9, weight_decay=5e-4)
  (p_in, s_in), _ = _step_once(opt, "input")
  (p_c, s_c), _ = _step_once(opt, "computed")
  for a, b in zip(jax.tree.leaves((p_in, s_in)), jax.tree.leaves((p_c, s_c))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="flat views and their temporaries are CPU only")
def test_computed_grads_let_xla_reuse_their_memory():
  # SGD_atanMom computes its update on a flat view of a PyTorch-layout
  # leaf and hands it to the caller's apply in a temporary. With the
  # gradients as an argument that temporary is extra memory; with the
  # gradients computed in the step, XLA writes it over them.
  sgd = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, 0.9))
  gaf = gaf_optax.sgd_gaf(0.1, 0.9, weight_decay=5e-4)
  conv_bytes = 32 * 16 * 3 * 3 * 4
  _, sgd_in = _step_once(sgd, "input")
  _, gaf_in = _step_once(gaf, "input")
  _, sgd_c = _step_once(sgd, "computed")
  _, gaf_c = _step_once(gaf, "computed")
  assert gaf_in - sgd_in >= conv_bytes
  assert sgd_c >= conv_bytes  # the gradients themselves
  assert gaf_c == sgd_c


def test_grads_mode_is_checked(capsys):
  with pytest.raises(ValueError, match="grads must be one of"):
    param_trees.update_step(optax.sgd(0.1), "donated")
  with pytest.raises(SystemExit):
    optimizer.main(["--grads", "donated"])
  assert "invalid choice: 'donated'" in capsys.readouterr().err
