"""The PyTorch SGD_atanMom of the benchmark implements sgd_gaf's rule.

Skipped where PyTorch (an optional benchmark dependency) is not installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaf_optax
from experiments.benchmarks import torch_reference as bench_torch

torch = pytest.importorskip("torch")


def test_torch_sgd_atan_mom_matches_sgd_gaf_over_steps():
  keys = jax.random.split(jax.random.key(0), 3)
  params = {"a": jax.random.normal(keys[0], (5, 3)),
            "b": jax.random.normal(keys[1], (4,))}
  opt = gaf_optax.sgd_gaf(bench_torch.LR, bench_torch.MOMENTUM,
                          weight_decay=bench_torch.WD, alpha=bench_torch.ALPHA,
                          beta=bench_torch.BETA)
  state = opt.init(params)
  tparams = bench_torch.torch_params(params, params)
  topt = bench_torch.torch_sgd_atan_mom()(
      tparams, bench_torch.LR, bench_torch.MOMENTUM, bench_torch.WD,
      bench_torch.ALPHA, bench_torch.BETA)
  for t in range(6):
    grads = jax.tree.map(
        lambda p, t=t: jnp.sin(3.0 * p + t) * 0.05 * (t + 1), params)
    for tp, g in zip(tparams, jax.tree.leaves(grads)):
      tp.grad = torch.from_numpy(np.array(g))
    topt.step()
    updates, state = opt.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for tp, p in zip(tparams, jax.tree.leaves(params)):
      np.testing.assert_allclose(tp.detach().numpy(), p, rtol=1e-6,
                                 atol=1e-7)
