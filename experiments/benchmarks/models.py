"""Benchmark: training throughput of a reference model (one SGD step).

    python -m experiments.benchmarks.models --model resnet20 [--batch 128]
        [--steps 10] [--dtype float32] [--variants default,xla-defaults,torch]
        [--profile] [--compiler-option KEY=VALUE ...]

Builds `gaf_optax.models.get(--model)` and a `gaf_optax.training.Trainer`
with optax.sgd (momentum 0.9), compiles its training step (forward, backward,
BatchNorm statistics, update; the state donated) on a fixed random batch,
runs it `--steps` times and prints the compile time, the median step time
(and the process CPU time per step), images per second and the peak resident
memory of the process. Several `--variants` are timed interleaved, step by
step, so that machine noise hits them alike:

- `default`: the trainer's own compiler options
  (`gaf_optax.training.default_compiler_options`: on CPU, convolutions on
  XLA's Eigen kernels instead of YNNPACK's library fusions);
- `xla-defaults`: XLA's own defaults (`Trainer(compiler_options={})`; on a
  recent jaxlib's CPU backend, YNNPACK fusions on);
- `torch`: the same architecture in eager PyTorch
  (`experiments.benchmarks.torch_models`, equal parameter counts; SGD
  momentum 0.9; optional dependency).

`--profile` then times every convolution of the model alone (forward, input
gradient, kernel gradient; `torch_models.conv_profile`) for each variant and
prints their sums next to the step time: where the step's time goes.
XLA flags are taken from the XLA_FLAGS environment variable as usual;
`--compiler-option` adds XLA debug options to every JAX variant.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli
from experiments.benchmarks import torch_models
from gaf_optax import data
from gaf_optax import models
from gaf_optax import training

def compiler_options(variant: str, extra: dict[str, str] | None = None
                     ) -> dict[str, str] | None:
  """The step's exact XLA options: the trainer's defaults or XLA's + extra."""
  base = ({} if variant == "xla-defaults"
          else training.default_compiler_options() or {})
  return {**base, **(extra or {})}


VARIANTS = ("default", "xla-defaults", "torch")


def main(argv=None) -> list[dict]:
  parser = cli.parser(__doc__)
  parser.add_argument("--model", default="resnet20",
                      help=f"one of {', '.join(models.names())}")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10,
                      help="timed steps after the first one, per variant")
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--variants", default="default",
                      help=f"comma-separated, from {VARIANTS}; several are "
                      "timed interleaved, step by step")
  parser.add_argument("--profile", action="store_true",
                      help="also time every convolution of the model alone "
                      "(forward, input and kernel gradients) per variant")
  parser.add_argument("--compiler-option", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="an XLA debug option for every variant "
                      "(repeatable)")
  args = parser.parse_args(argv)
  if args.model not in models.names():
    parser.error(f"unknown --model {args.model!r}; known: "
                 f"{', '.join(models.names())}")
  variants = args.variants.split(",")
  if not variants or set(variants) - set(VARIANTS):
    parser.error(f"--variants must be from {VARIANTS}; got {args.variants!r}")
  try:
    extra = dict(kv.split("=", 1) for kv in args.compiler_option)
  except ValueError:
    parser.error(f"--compiler-option takes KEY=VALUE; got "
                 f"{args.compiler_option}")

  model = models.get(args.model, dtype=jnp.dtype(args.dtype))
  size = 224 if args.model.startswith("imagenet") else 32
  rng = np.random.default_rng(0)
  src = data.ArraySource(
      rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8),
      rng.integers(0, model.num_classes, args.batch))
  ds = data.Dataset("random", model.num_classes, (size, size, 3), src, src,
                    np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
  tx = optax.sgd(0.1, momentum=0.9)
  print(f"{jax.devices()[0].device_kind} / {platform.processor() or '?'}; "
        f"{args.model} batch {args.batch} {args.dtype}")

  runs = {}
  for name in variants:
    if name == "torch":  # the same architecture in eager PyTorch
      step = torch_models.sgd_step(args.model, args.batch)
      t0 = time.perf_counter()
      loss = step()
      runs[name] = dict(trainer=None, step=step, loss=loss, times=[], cpu=[],
                        options=None, compile_s=time.perf_counter() - t0)
      continue
    options = compiler_options(name, extra)
    trainer = training.Trainer(
        model, tx, ds, batch_size=args.batch, mesh=training.make_mesh(1),
        preprocess=training.Preprocess.for_dataset(ds, augment=False),
        compiler_options=options)
    (batch,) = list(trainer.train_batches(0))
    t0 = time.perf_counter()  # the first call compiles
    loss = trainer.train_step(batch)["loss"]
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    runs[name] = dict(trainer=trainer, batch=batch, loss=loss, times=[],
                      cpu=[], options=options, compile_s=compile_s)
  for _ in range(args.steps):
    for run in runs.values():
      t0, c0 = time.perf_counter(), time.process_time()
      if run["trainer"] is None:
        run["loss"] = run["step"]()
      else:
        run["loss"] = run["trainer"].train_step(run["batch"])["loss"]
        jax.block_until_ready(run["loss"])
      run["times"].append(time.perf_counter() - t0)
      run["cpu"].append(time.process_time() - c0)

  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  results = []
  for name, run in runs.items():
    median = statistics.median(run["times"])
    results.append(dict(
        model=args.model, batch=args.batch, dtype=args.dtype, variant=name,
        compiler_options=run["options"], compile_s=run["compile_s"],
        median_step_s=median, min_step_s=min(run["times"]),
        cpu_s_per_step=statistics.median(run["cpu"]),
        images_per_s=args.batch / median, peak_rss_mib=peak_mib,
        loss=float(run["loss"])))
    print(f"{name}: compile {run['compile_s']:.1f} s; step median "
          f"{median * 1e3:.0f} ms (min {min(run['times']) * 1e3:.0f} ms, "
          f"{args.steps} steps; CPU {results[-1]['cpu_s_per_step']:.2f} "
          f"s/step); {args.batch / median:.1f} images/s; loss "
          f"{float(run['loss']):.3f}")
  print(f"peak RSS {peak_mib:.0f} MiB (process, all variants)")
  if len(results) > 1:
    base = results[-1] if variants[-1] == "torch" else results[0]
    print("step time vs " + base["variant"] + ": " + ", ".join(
        f"{r['variant']} {r['median_step_s'] / base['median_step_s']:.2f}x"
        for r in results))
  if args.profile:
    jax_variants = {v: compiler_options(v, extra) or None
                    for v in variants if v != "torch"}
    prof = torch_models.conv_profile(
        model, args.batch, jax_variants=jax_variants,
        with_torch="torch" in variants)
    print(f"convolutions of {args.model} at batch {args.batch}, each timed "
          "alone (median of 5), summed over the model, ms:")
    print("| variant | forward | input grad | kernel grad | all convs | "
          "step | rest of the step |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
      p = prof.get(r["variant"])
      if p is not None:
        print(f"| {r['variant']} | {1e3 * p['forward']:.0f} | "
              f"{1e3 * p['input_grad']:.0f} | {1e3 * p['kernel_grad']:.0f} "
              f"| {1e3 * p['total']:.0f} | {1e3 * r['median_step_s']:.0f} | "
              f"{1e3 * (r['median_step_s'] - p['total']):.0f} |")
        r["conv_profile_s"] = p
  return results


if __name__ == "__main__":
  sys.exit(cli.run(main))
