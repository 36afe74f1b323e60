"""Trains a model with a config: the thin entry point.

    python -m experiments.main --config=experiments/configs/digits_mlp.py \
        --workdir=/tmp/run [--config.optimizer=sgd_gaf ...]

A checkpoint in ``--workdir`` is resumed. Metrics go to stdout,
``WORKDIR/metrics.jsonl`` and TensorBoard (``WORKDIR/tensorboard``).

Exit status: 0 when the run is complete; 1 with a message when it diverged
(``NonFiniteError``: no diverged state is saved, the message names the last
good checkpoint); 128 + the signal's number (143 for SIGTERM, 130 for
SIGINT) after a stop signal, once the current step is checkpointed: run the
same command again to resume.
"""

import sys

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
  try:
    summary = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except training.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + (e.signum or 15))
  except training.NonFiniteError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
  print(f"last test accuracy {summary['last_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main)
