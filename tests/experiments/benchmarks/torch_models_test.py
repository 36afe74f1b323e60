"""The PyTorch twins have the Flax models' parameter counts; the profile.

The twins need PyTorch (an optional benchmark dependency): those tests are
skipped without it. The convolution shapes and the JAX side of the profile
are tested everywhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import torch_models
from gaf_optax import models


def _flax_params(name):
  model = models.get(name)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return sum(int(np.prod(x.shape))
             for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(torch_models.ARCHS))
def test_twins_have_the_flax_parameter_counts(name):
  pytest.importorskip("torch")
  twin = torch_models.resnet(name)
  assert torch_models.num_params(twin) == _flax_params(name)
  import torch  # pylint: disable=g-import-not-at-top
  assert twin(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_conv_shapes_follow_the_network():
  shapes = torch_models.conv_shapes(models.get("resnet8"), (32, 32, 3))
  # Stem and two convs per block; option-A shortcuts have no conv.
  assert len(shapes) == 1 + 2 * 3
  assert shapes[0][:3] == ((1, 32, 32, 3), (3, 3, 3, 16), (1, 1))
  assert shapes[3][:3] == ((1, 32, 32, 16), (3, 3, 16, 32), (2, 2))
  assert shapes[-1][0] == (1, 8, 8, 64)


def test_profile_sums_the_kinds():
  prof = torch_models.conv_profile(models.get("resnet8"), 2, rounds=1,
                                   with_torch=False)
  p = prof["jax"]
  assert p["total"] == pytest.approx(
      p["forward"] + p["input_grad"] + p["kernel_grad"])
  assert all(p[k] > 0 for k in ("forward", "input_grad", "kernel_grad"))
