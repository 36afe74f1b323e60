"""Per-device memory of the train state: replicated vs FSDP.

    python -m experiments.benchmarks.sharding --model resnet50 --devices 8

Builds the library's :class:`gaf_optax.training.Trainer` state (parameters
and optimizer buffers) on a mesh of ``--devices`` simulated CPU devices for
each optimizer and layout, and reports the bytes that one device holds
(``gaf_optax.training.per_device_bytes``, read from the arrays' shards, not
computed from a formula), with the ratio to the replicated layout. FSDP
keeps arrays under ``--fsdp-min-bytes`` (default 1 MiB) whole, as the
trainer does by default.

The trainer pins its state's sharding (``out_shardings``), so those figures
hold whatever an optimizer's update does. The last two columns show what the
update itself does to the FSDP state: the bytes one device holds after one
``jax.jit(tx.update)`` on it (the update's own output shardings, as in a
user's train step without ``out_shardings``) and the all-gathers XLA
compiled into that update (an update that keeps each parameter's sharding
has none).
"""

from __future__ import annotations

import sys

from experiments import cli

OPTIMIZERS = ("sgd", "sgd_gaf", "adam", "adam_gaf")


def _tx(name):
  import optax  # pylint: disable=g-import-not-at-top
  import gaf_optax  # pylint: disable=g-import-not-at-top
  return {"sgd": lambda: optax.sgd(0.1, 0.9),
          "sgd_gaf": lambda: gaf_optax.sgd_gaf(0.1, 0.9),
          "adam": lambda: optax.adam(1e-3),
          "adam_gaf": lambda: gaf_optax.adam_gaf(1e-3)}[name]()


def _all_gathers(compiled) -> int:
  """All-gather instructions (not mentions) in a compiled program."""
  import re  # pylint: disable=g-import-not-at-top
  return len(re.findall(r"\ball-gather(?:-start)?\(", compiled.as_text()))


def measure(model_name: str, devices: int, optimizers, min_bytes: int
            ) -> dict[tuple[str, str], int]:
  """Bytes on device 0 of params + opt state, and the update's all-gathers.

  Returns:
    ``{(optimizer, layout): bytes}`` for the layouts ``"replicated"`` and
    ``"fsdp"`` (the trainer's state), ``{(optimizer, "fsdp_updated"):
    bytes}`` after one jitted update of the FSDP state and
    ``{(optimizer, "fsdp_update_all_gathers"): count}`` in that update.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gaf_optax import data, models, training  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3) if not model_name.startswith("imagenet") else (
      224, 224, 3)
  # The state does not depend on the data: a tiny in-memory set of the
  # model's input shape.
  images = np.zeros((devices, *shape), np.uint8)
  labels = np.arange(devices, dtype=np.int32) % 10
  src = data.ArraySource(images, labels)
  ds = data.Dataset("zeros", 10, shape, src, src, np.zeros(3, np.float32),
                    np.ones(3, np.float32))
  model = models.get(model_name, num_classes=10)
  out = {}
  for opt in optimizers:
    for layout in ("replicated", "fsdp"):
      trainer = training.Trainer(
          model, _tx(opt), ds, batch_size=devices,
          mesh=training.make_mesh(devices), sharding=layout,
          fsdp_min_bytes=min_bytes)
      state = trainer.state
      out[(opt, layout)] = training.per_device_bytes(
          (state.params, state.opt_state))
      if layout == "fsdp":
        # The parameters stand in for gradients: same shapes, same sharding.
        update = jax.jit(trainer.tx.update)
        args = (state.params, state.opt_state, state.params)
        out[(opt, "fsdp_update_all_gathers")] = _all_gathers(
            update.lower(*args).compile())
        _, new_opt_state = update(*args)
        out[(opt, "fsdp_updated")] = training.per_device_bytes(
            (state.params, new_opt_state))
        del new_opt_state
      del trainer, state
      jax.clear_caches()
  return out


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  p.add_argument("--model", default="resnet50")
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  p.add_argument("--fsdp-min-bytes", type=int, default=1 << 20)
  args = p.parse_args(argv)
  optimizers = args.optimizers.split(",")
  if set(optimizers) - set(OPTIMIZERS):
    p.error(f"--optimizers must be from {OPTIMIZERS}; got {args.optimizers!r}")
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.config.update("jax_num_cpu_devices", args.devices)
  except RuntimeError:  # backend already up (e.g. under pytest): keep it
    pass
  if jax.device_count() < args.devices:
    p.error(f"--devices {args.devices} but only {jax.device_count()} exist")
  from gaf_optax import models  # pylint: disable=g-import-not-at-top
  if args.model not in models.names():
    p.error(f"unknown --model {args.model!r}; known: {models.names()}")
  res = measure(args.model, args.devices, optimizers, args.fsdp_min_bytes)
  print(f"{args.model}, {args.devices} devices, params + optimizer state on "
        f"one device, jax {jax.__version__}")
  print("| optimizer | replicated MiB | fsdp MiB | fsdp / replicated | "
        "fsdp MiB after jit(update) | all-gathers in update |")
  print("|---|---|---|---|---|---|")
  for opt in optimizers:
    rep, part = res[(opt, "replicated")], res[(opt, "fsdp")]
    after = res[(opt, "fsdp_updated")]
    print(f"| {opt} | {rep / 2**20:.1f} | {part / 2**20:.1f} | "
          f"{part / rep:.3f} | {after / 2**20:.1f} | "
          f"{res[(opt, 'fsdp_update_all_gathers')]} |")
  sys.stdout.flush()
  return res


if __name__ == "__main__":
  sys.exit(cli.run(main))
