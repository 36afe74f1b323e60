"""Benchmark: training throughput of a reference model (one jitted SGD step).

    python -m experiments.benchmarks.models --model resnet20 [--batch 128]
        [--steps 10] [--dtype float32] [--variants default,cpu-no-ynn]
        [--compiler-option KEY=VALUE ...]

Builds `gaf_optax.models.get(--model)` and a `gaf_optax.training.Trainer`
with optax.sgd (momentum 0.9), compiles its training step (forward, backward,
BatchNorm statistics, update; the state donated) on a fixed random batch,
runs it
`--steps` times and prints the compile time, the median step time (and the
process CPU time per step), images per second and the peak resident memory
of the process. Several `--variants` are compiled separately and timed
interleaved, step by step, so that machine noise hits them alike. XLA flags
are taken from the XLA_FLAGS environment variable as usual;
`--compiler-option` sets XLA debug options for the training step alone
(the Trainer's `compiler_options`).

Variant `cpu-no-ynn` (`--cpu-no-ynn`; CPU only, the default options on
other backends) compiles the step without XLA:CPU's YNNPACK library fusions
(`xla_cpu_experimental_ynn_fusion_type=""`), so convolutions run on XLA's
Eigen kernels. Measured on a shared 2-core CPU (medians, noisy): the
YNNPACK weight-gradient convolutions of ResNet-18 take 2.5x as long as
Eigen's in isolation (10.6 s vs 4.3 s summed over the layers), forward and
input-gradient convolutions are on par; a whole ResNet-18 CIFAR step is about
1.15x faster without YNNPACK, a ResNet-20 step unchanged (its 16-64 channel
convolutions are fast either way).
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
import numpy as np
import optax

from gaf_optax import data
from gaf_optax import models
from gaf_optax import training

# XLA:CPU debug options that route convolutions (and the rest) away from the
# YNNPACK library fusions of recent jaxlib releases, to XLA's own Eigen-based
# kernels; faster weight-gradient convolutions (module docstring). Passed per
# compilation, so other programs and other backends are unaffected.
CPU_NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def ynn_supported() -> bool:
  """Whether this jaxlib's CPU compiler knows the YNNPACK fusion option."""
  if jax.default_backend() != "cpu":
    return False
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=CPU_NO_YNN)
  except Exception:  # pylint: disable=broad-except
    return False  # older jaxlib: "No such compile option"
  return True


def compiler_options(cpu_no_ynn: bool = False,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
  """XLA compiler options for the training step (empty: XLA's defaults)."""
  options = {}
  if cpu_no_ynn and jax.default_backend() == "cpu":
    options.update(CPU_NO_YNN)
  options.update(extra or {})
  return options


VARIANTS = ("default", "cpu-no-ynn")


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
  parser.add_argument("--cpu-no-ynn", action="store_true",
                      help="shorthand for --variants cpu-no-ynn")
  parser.add_argument("--compiler-option", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="an XLA debug option for every variant "
                      "(repeatable)")
  args = parser.parse_args(argv)
  if args.model not in models.names():
    parser.error(f"unknown --model {args.model!r}; known: "
                 f"{', '.join(models.names())}")
  variants = ["cpu-no-ynn"] if args.cpu_no_ynn else args.variants.split(",")
  if not variants or set(variants) - set(VARIANTS):
    parser.error(f"--variants must be from {VARIANTS}; got {args.variants!r}")
  if "cpu-no-ynn" in variants and not ynn_supported():
    parser.error("--variants cpu-no-ynn needs the CPU backend of a jaxlib "
                 "with YNNPACK fusions (option "
                 f"{next(iter(CPU_NO_YNN))!r} is unknown here)")
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
    options = compiler_options(name == "cpu-no-ynn", extra)
    trainer = training.Trainer(
        model, tx, ds, batch_size=args.batch, mesh=training.make_mesh(1),
        preprocess=training.Preprocess.for_dataset(ds, augment=False),
        compiler_options=options or None)
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
  return results


if __name__ == "__main__":
  main()
