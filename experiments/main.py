"""Trains a model with a config: the thin entry point.

    python -m experiments.main --config=experiments/configs/digits_mlp.py \
        --workdir=/tmp/run [--config.optimizer=sgd_gaf ...]

A checkpoint in ``--workdir`` is resumed. Metrics go to stdout,
``WORKDIR/metrics.jsonl`` and TensorBoard (``WORKDIR/tensorboard``).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gaf_optax import training

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A get_config() file (see experiments/configs).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  summary = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(f"last test accuracy {summary['last_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main)
