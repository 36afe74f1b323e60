"""Benchmark: training throughput of a reference model (one jitted SGD step).

    python -m experiments.bench_models --model resnet20 [--batch 128]
        [--steps 10] [--dtype float32] [--cpu-no-ynn]
        [--compiler-option KEY=VALUE ...]

Builds `gaf_optax.models.get(--model)`, compiles one training step (forward,
backward, BatchNorm statistics, optax.sgd with momentum 0.9; parameters,
statistics and optimizer state donated) on a fixed random batch, runs it
`--steps` times and prints the compile time, the median step time, images per
second and the peak resident memory of the process. XLA flags are taken from
the XLA_FLAGS environment variable as usual; `--compiler-option` sets XLA
debug options for the training step alone (`jax.jit(...).lower(...).compile(
compiler_options=...)`).

`--cpu-no-ynn` (CPU only, ignored on other backends) compiles the step
without XLA:CPU's YNNPACK library fusions
(`xla_cpu_experimental_ynn_fusion_type=""`), so convolutions run on XLA's
Eigen kernels. On the 2-core CPU this was measured on, the step of ResNet-20
is about 1.6x faster that way and that of ResNet-18 about 2x: the YNNPACK
kernels were slow mainly for the weight-gradient convolutions (see
`CPU_NO_YNN`).
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from gaf_optax import models

# XLA:CPU debug options that route convolutions (and the rest) away from the
# YNNPACK library fusions of recent jaxlib releases, to XLA's own Eigen-based
# kernels; measured faster for conv-net training on CPU (module docstring).
# Per-compilation, so other programs and other backends are unaffected.
CPU_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(cpu_no_ynn: bool = False,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
  """XLA compiler options for the training step (empty: XLA's defaults)."""
  options = {}
  if cpu_no_ynn and jax.default_backend() == "cpu":
    options.update(CPU_NO_YNN)
  options.update(extra or {})
  return options


def make_step(model, tx):
  def loss_fn(params, batch_stats, x, y):
    logits, updates = model.apply({"params": params,
                                   "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y).mean()
    return loss, updates.get("batch_stats", {})

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, x, y):
    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, batch_stats, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return step


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20",
                      help=f"one of {', '.join(models.names())}")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10,
                      help="timed steps after the first (compiling) one")
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--cpu-no-ynn", action="store_true",
                      help="on CPU, compile without YNNPACK fusions")
  parser.add_argument("--compiler-option", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="an XLA debug option for the step (repeatable)")
  args = parser.parse_args(argv)
  try:
    extra = dict(kv.split("=", 1) for kv in args.compiler_option)
  except ValueError:
    parser.error(f"--compiler-option takes KEY=VALUE; got "
                 f"{args.compiler_option}")
  options = compiler_options(args.cpu_no_ynn, extra)
  if args.model not in models.names():
    parser.error(f"unknown --model {args.model!r}; known: "
                 f"{', '.join(models.names())}")

  model = models.get(args.model, dtype=jnp.dtype(args.dtype))
  size = 224 if args.model.startswith("imagenet") else 32
  x = jax.random.normal(jax.random.key(1), (args.batch, size, size, 3))
  y = jax.random.randint(jax.random.key(2), (args.batch,), 0,
                         model.num_classes)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), x[:1])  # rbg: fast to compile
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})  # none in LeNet and MLP
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(params)
  step = make_step(model, tx)

  t0 = time.perf_counter()
  compiled = step.lower(params, batch_stats, opt_state, x, y).compile(
      compiler_options=options or None)
  compile_s = time.perf_counter() - t0
  params, batch_stats, opt_state, loss = compiled(params, batch_stats,
                                                  opt_state, x, y)
  jax.block_until_ready(loss)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    params, batch_stats, opt_state, loss = compiled(params, batch_stats,
                                                    opt_state, x, y)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  result = dict(model=args.model, batch=args.batch, dtype=args.dtype,
                compiler_options=options, compile_s=compile_s,
                median_step_s=median, min_step_s=min(times),
                images_per_s=args.batch / median, peak_rss_mib=peak_mib,
                loss=float(loss))
  print(f"{jax.devices()[0].device_kind} / {platform.processor() or '?'}; "
        f"{args.model} batch {args.batch} {args.dtype}; compiler options "
        f"{options or 'default'}")
  print(f"compile {compile_s:.1f} s; step median {median * 1e3:.0f} ms "
        f"(min {min(times) * 1e3:.0f} ms, {args.steps} steps); "
        f"{result['images_per_s']:.1f} images/s; peak RSS {peak_mib:.0f} MiB; "
        f"loss {float(loss):.3f}")
  return result


if __name__ == "__main__":
  main()
