"""Benchmark: one jitted optimizer update + apply, gaf_optax vs optax.

    python -m experiments.benchmarks.optimizer [--repeats 30] [--trees resnet18_cifar10,resnet18_cifar10_torch] [--grads input|computed]

For each parameter tree (ResNet-18 CIFAR-10, 11.17M parameters, in Flax's
layout and in PyTorch's; ResNet-50 ImageNet, 25.6M, with ``--trees``) and
each optimizer, compiles `params, state = step(params, state, grads)` with
params and state donated, then times the optimizers interleaved, round by
round, so that machine noise hits all of them alike. Prints the median step
time, its ratio to optax.sgd with momentum and the same weight decay (the
Adam family also to optax.adam), the optimizer state size and XLA's peak
temporary memory for the step, and the minor page faults per step (fresh
memory touched for the first time).

``--grads computed`` times the same steps with the gradients materialized
inside the step first, as a backward pass leaves them (see
`param_trees.update_step`): closer to a train step, where XLA may reuse the
dead gradients' memory for an optimizer's temporaries. That adds one pass
over the gradients to every optimizer alike; the extra milliseconds over the
baseline are printed too.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

try:
  import resource
except ImportError:  # Windows
  resource = None

import jax
import jax.numpy as jnp
import optax

import gaf_optax
from experiments import cli
from experiments.benchmarks import param_trees


SGD = "optax.sgd(momentum=0.9) + decay"
ADAM = "optax.adam"


def optimizers() -> dict[str, optax.GradientTransformation]:
  lr, wd = 0.1, 5e-4
  sgd_gaf = lambda **kw: gaf_optax.sgd_gaf(lr, 0.9, weight_decay=wd, **kw)
  return {
      SGD: optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(lr, momentum=0.9)),
      "sgd_gaf(position='momentum')": sgd_gaf(),
      "sgd_gaf(position='gradient')": sgd_gaf(position="gradient"),
      "sgd_gaf(fn='tanh')": sgd_gaf(fn="tanh"),
      "sgd_gaf(fn=jnp.arctan) [XLA atan]": sgd_gaf(fn=jnp.arctan),
      ADAM: optax.adam(1e-3),
      "adam_gaf": gaf_optax.adam_gaf(1e-3),
      "chain(gaf(), optax.adam)": optax.chain(gaf_optax.gaf(0.1, 15.0),
                                              optax.adam(1e-3)),
  }


def _minor_faults() -> int:
  """The process's minor page faults so far.

  Fresh memory is faulted in page by page; on this project's machine a
  parameter-sized temporary allocated anew each step cost more than the
  arithmetic (glibc returns large blocks to the OS when they are freed).
  """
  if resource is None:  # not on Windows: the column reads 0 there.
    return 0
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def bench_tree(tree_name: str, repeats: int, grads_mode: str = "input"
               ) -> list[dict]:
  grads = param_trees.step_grads(
      param_trees.random_tree(tree_name, jax.random.key(1), scale=1e-2),
      grads_mode)
  runs = {}
  for name, opt in optimizers().items():
    params = param_trees.random_tree(tree_name, jax.random.key(0))
    state = opt.init(params)
    step = param_trees.update_step(opt, grads_mode)
    compiled = step.lower(params, state, grads).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem else float("nan")
    params, state = step(params, state, grads)  # warm-up
    jax.block_until_ready(params)
    runs[name] = dict(step=step, params=params, state=state, times=[],
                      faults=0, state_bytes=_nbytes(state), temp_bytes=temp)
  for _ in range(repeats):
    for run in runs.values():
      faults = _minor_faults()
      t0 = time.perf_counter()
      run["params"], run["state"] = run["step"](run["params"], run["state"],
                                                grads)
      jax.block_until_ready(run["params"])
      run["times"].append(time.perf_counter() - t0)
      run["faults"] += _minor_faults() - faults
  rows = []
  for name, run in runs.items():
    rows.append(dict(tree=tree_name, optimizer=name,
                     median_ms=1e3 * statistics.median(run["times"]),
                     faults=run["faults"] / repeats,
                     state_mb=run["state_bytes"] / 2**20,
                     temp_mb=run["temp_bytes"] / 2**20))
  return rows


def main(argv=None) -> None:
  args, trees = param_trees.parse_args(
      __doc__, "resnet18_cifar10,resnet18_cifar10_torch", argv,
      grads_option=True)
  print(f"jax {jax.__version__}, optax {optax.__version__}, "
        f"{jax.devices()[0].platform} x{jax.device_count()}, "
        f"{platform.processor() or platform.machine()}, repeats={args.repeats}, "
        f"grads={args.grads}")
  for tree in trees:
    rows = bench_tree(tree, args.repeats, args.grads)
    base = {r["optimizer"]: r["median_ms"] for r in rows}
    sgd, adam = base[SGD], base[ADAM]
    print(f"\n{tree} ({param_trees.num_params(tree):,} parameters, float32)")
    print(f"{'optimizer':36s} {'median ms':>10s} {'vs sgd':>7s} {'vs adam':>8s}"
          f" {'+ms vs base':>11s} {'faults/step':>11s} {'state MiB':>10s}"
          f" {'XLA temp MiB':>13s}")
    for r in rows:
      is_adam = "adam" in r["optimizer"]
      vs_adam = f"{r['median_ms'] / adam:8.2f}" if is_adam else " " * 8
      extra = r["median_ms"] - (adam if is_adam else sgd)
      print(f"{r['optimizer']:36s} {r['median_ms']:10.2f} "
            f"{r['median_ms'] / sgd:7.2f} {vs_adam} {extra:+11.2f} "
            f"{r['faults']:11.0f} {r['state_mb']:10.1f} {r['temp_mb']:13.1f}")


if __name__ == "__main__":
  sys.exit(cli.run(main))
