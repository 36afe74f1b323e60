"""Benchmark: SGD_atanMom in PyTorch (the official code's way) vs gaf_optax.

    python -m experiments.benchmarks.torch_reference [--repeats 30] [--trees resnet18_cifar10]

Needs PyTorch, an optional dependency of this benchmark only (the CPU build
is enough: ``pip install torch --index-url
https://download.pytorch.org/whl/cpu``).

:class:`TorchSGDAtanMom` is the SGD_atanMom rule written the way the
official GAF code writes its optimizers: a ``torch.optim.Optimizer`` whose
``step`` loops over the parameters in Python and updates each tensor in
place (weight decay, momentum buffer started at the first gradient,
``alpha * atan(beta * buf)``, then ``p -= lr * ...``). It is our own
re-implementation of that rule, checked against ``gaf_optax.sgd_gaf`` in
``tests/experiments/benchmarks/torch_reference_test.py`` (skipped without PyTorch).

On the same parameter shapes (ResNet-18 CIFAR-10 by default: 62 tensors,
11.17M parameters, float32) the benchmark times, interleaved round by round,
one optimizer step (update + apply, gradients given) of:

- ``torch.optim.SGD(momentum=0.9)``, per-tensor loop (``foreach=False``) and
  multi-tensor (``foreach=True``), the PyTorch baselines;
- ``TorchSGDAtanMom`` (Python loop);
- ``optax.sgd(momentum=0.9)`` and ``gaf_optax.sgd_gaf`` under ``jax.jit``
  with donated parameters and state.

It prints medians, ratios to ``optax.sgd`` and to PyTorch's SGD, and the
optimizer-state size. Both frameworks use all host cores (PyTorch's
``torch.get_num_threads()``, XLA's CPU thread pool).
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

import jax
import numpy as np
import optax

import gaf_optax
from experiments import cli
from experiments.benchmarks import param_trees

LR, MOMENTUM, WD, ALPHA, BETA = 0.1, 0.9, 5e-4, 0.1, 20.0


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit(
        "bench_torch needs PyTorch (an optional benchmark dependency): "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from e
  return torch


def torch_sgd_atan_mom():
  """The ``TorchSGDAtanMom`` class (defined lazily: PyTorch is optional)."""
  torch = _torch()

  class TorchSGDAtanMom(torch.optim.Optimizer):
    """SGD_atanMom written as the official code's optimizers are."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0,
                 alpha=0.1, beta=20.0):
      super().__init__(params, dict(lr=lr, momentum=momentum,
                                    weight_decay=weight_decay, alpha=alpha,
                                    beta=beta))

    @torch.no_grad()
    def step(self):
      for group in self.param_groups:
        for p in group["params"]:
          if p.grad is None:
            continue
          d = p.grad
          if group["weight_decay"]:
            d = d.add(p, alpha=group["weight_decay"])
          state = self.state[p]
          if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = torch.clone(d).detach()
          else:
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(d)
          step = torch.atan(buf * group["beta"]).mul_(group["alpha"])
          p.add_(step, alpha=-group["lr"])

  return TorchSGDAtanMom


def torch_params(tree, grads):
  """Flat lists of torch tensors (params with ``.grad`` set) from JAX trees."""
  torch = _torch()
  params = []
  for p, g in zip(jax.tree.leaves(tree), jax.tree.leaves(grads)):
    t = torch.nn.Parameter(torch.from_numpy(np.array(p)))
    t.grad = torch.from_numpy(np.array(g))
    params.append(t)
  return params


def bench(tree_name: str, repeats: int) -> list[dict]:
  torch = _torch()
  grads = param_trees.random_tree(tree_name, jax.random.key(1), scale=1e-2)
  runs = {}
  sgd_atan_mom = torch_sgd_atan_mom()
  torch_optimizers = {
      "torch SGD (foreach=False)": lambda ps: torch.optim.SGD(
          ps, LR, MOMENTUM, weight_decay=WD, foreach=False),
      "torch SGD (foreach=True)": lambda ps: torch.optim.SGD(
          ps, LR, MOMENTUM, weight_decay=WD, foreach=True),
      "torch SGD_atanMom (Python loop)": lambda ps: sgd_atan_mom(
          ps, LR, MOMENTUM, WD, ALPHA, BETA),
  }
  for name, make in torch_optimizers.items():
    params = torch_params(param_trees.random_tree(tree_name,
                                                  jax.random.key(0)), grads)
    opt = make(params)
    opt.step()  # warm-up; creates the momentum buffers
    state = sum(s["momentum_buffer"].numel() * 4
                for s in opt.state.values())
    runs[name] = dict(call=opt.step, times=[], state_bytes=state)
  jax_optimizers = {
      "optax.sgd(momentum=0.9) + decay [jit]": optax.chain(
          optax.add_decayed_weights(WD), optax.sgd(LR, MOMENTUM)),
      "gaf_optax.sgd_gaf [jit]": gaf_optax.sgd_gaf(
          LR, MOMENTUM, weight_decay=WD, alpha=ALPHA, beta=BETA),
  }
  for name, opt in jax_optimizers.items():
    box = {"params": param_trees.random_tree(tree_name, jax.random.key(0))}
    box["state"] = opt.init(box["params"])
    step = param_trees.update_step(opt)

    def call(box=box, step=step):
      box["params"], box["state"] = step(box["params"], box["state"], grads)
      jax.block_until_ready(box["params"])

    call()  # compile + warm-up
    runs[name] = dict(call=call, times=[], state_bytes=sum(
        x.nbytes for x in jax.tree.leaves(box["state"])))
  for _ in range(repeats):
    for run in runs.values():
      t0 = time.perf_counter()
      run["call"]()
      run["times"].append(time.perf_counter() - t0)
  return [dict(optimizer=name, median_ms=1e3 * statistics.median(r["times"]),
               state_mb=r["state_bytes"] / 2**20) for name, r in runs.items()]


def main(argv=None) -> None:
  args, trees = param_trees.parse_args(__doc__, "resnet18_cifar10", argv)
  torch = _torch()
  print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"jax {jax.__version__}, optax {optax.__version__}, "
        f"{platform.processor() or platform.machine()}, "
        f"repeats={args.repeats}")
  for tree in trees:
    rows = bench(tree, args.repeats)
    ms = {r["optimizer"]: r["median_ms"] for r in rows}
    base = ms["optax.sgd(momentum=0.9) + decay [jit]"]
    torch_base = ms["torch SGD (foreach=True)"]
    print(f"\n{tree} ({param_trees.num_params(tree):,} parameters in "
          f"{len(param_trees.SHAPES[tree])} tensors, float32)")
    print(f"{'optimizer':40s} {'median ms':>10s} {'vs optax.sgd':>13s} "
          f"{'vs torch SGD foreach':>21s} {'state MiB':>10s}")
    for r in rows:
      print(f"{r['optimizer']:40s} {r['median_ms']:10.2f} "
            f"{r['median_ms'] / base:13.2f} "
            f"{r['median_ms'] / torch_base:21.2f} {r['state_mb']:10.1f}")


if __name__ == "__main__":
  sys.exit(cli.run(main))
