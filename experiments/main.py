r"""Trains a model with a config: the thin entry point.

    python -m experiments.main --config=experiments/configs/digits_mlp.py \
        --workdir=/tmp/run [--config.optimizer=sgd_gaf ...]

A checkpoint in ``--workdir`` is resumed. Metrics go to stdout,
``WORKDIR/metrics.jsonl`` and TensorBoard (``WORKDIR/tensorboard``). One run
at a time per workdir: a second one exits at once with status 2, naming the
lock file ``WORKDIR/lock`` and the run holding it; the lock is the kernel's
(``flock``), so a run that crashed or was killed leaves none behind.

Exit status (a scheduler can tell these apart; each failure prints one line
to stderr, and ``--debug``, ``GAF_OPTAX_DEBUG=1`` or ``--verbosity=0`` or
higher also prints its traceback; ``experiments/cli.py`` holds what every
entry point shares):

- 0: the run is complete.
- 2: bad config or input: a flag or config field (a misspelled
  ``--config.FIELD`` prints one line with the closest field), a config file
  that cannot be loaded, a model argument, a dataset that cannot be read (a
  damaged image, a missing folder, labels the model has no outputs for), or
  a workdir in use by another run. Nothing was trained;
  running again will fail again.
- 3: the run diverged (``NonFiniteError``): no diverged state is saved, the
  message names the last good checkpoint.
- 4: an I/O failure (``CheckpointWriteError``, e.g. a full disk during a
  save; any other ``OSError``): the earlier checkpoints are kept; fix the
  file system and run the same command again to resume.
- 128 + the signal's number (143 for SIGTERM, 130 for SIGINT) after a stop
  signal, once the current step is checkpointed: run the same command again
  to resume.
- 1: anything else (a bug: Python's traceback).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from gaf_optax import training

EXIT_BAD_INPUT = cli.EXIT_BAD_INPUT
EXIT_DIVERGED = cli.EXIT_DIVERGED
EXIT_IO = cli.EXIT_IO

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A get_config() file (see experiments/configs).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_boolean("debug", False, cli.DEBUG_HELP)
flags.mark_flags_as_required(["config", "workdir"])


def _no_orbax_tracebacks(record) -> bool:
  # Orbax logs a failed background save with its traceback several times
  # over (hundreds of lines); the error comes back as CheckpointWriteError,
  # printed in one line.
  return not (record.exc_info and "orbax" in record.pathname)


def _parse_flags(argv):
  """The flags (:func:`cli.absl_flags_parser`), and the config file loaded.

  A config file that cannot be loaded is bad input (status 2), reported in
  one line before anything else runs.
  """
  rest = cli.absl_flags_parser(argv)
  try:
    # ml_collections keeps a load error until the config is first used.
    _CONFIG.value.keys()
  except OSError as e:
    if cli.debug(argv[1:]):
      raise
    text = " ".join(str(e).split()).replace(
        "Configuration is not available because of an earlier failure to "
        "load: ", "")
    print(f"error: --config: {text}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  return rest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    logging.get_absl_logger().addFilter(_no_orbax_tracebacks)
    if not (flags.FLAGS.debug or cli.debug()):
      sys.stderr = cli.DropTracebacks(sys.stderr)
  try:
    summary = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Exception as e:  # pylint: disable=broad-except
    code = cli.exit_code(e)
    if code is None:
      raise
    verbose = (flags.FLAGS.debug or cli.debug()
               or flags.FLAGS["verbosity"].present)
    if code == EXIT_IO and not verbose:
      # After a failed write Orbax's background threads may still log their
      # own tracebacks while the interpreter shuts down ("Event loop is
      # closed"); the message is out and the good checkpoints are on disk,
      # so the process ends here, without that teardown.
      # The message goes to the real stream: a traceback another thread
      # was printing is still held by DropTracebacks, and is dropped.
      print(cli.message(e), file=sys.__stderr__)
      sys.stdout.flush()
      sys.__stderr__.flush()
      os._exit(code)  # pylint: disable=protected-access
    cli.fail(code, e, show_traceback=(
        not isinstance(e, training.Preempted) and verbose))
  print(f"last test accuracy {summary['last_test_accuracy']:.4f}, best "
        f"{summary['best_test_accuracy']:.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
