"""What every entry point shares: its help, its errors, its exit status.

Every ``python -m experiments...`` command is built from these, so they all
behave alike:

- ``--help`` exits 0 and shows each option's default (:func:`parser`; the
  absl entry point ``experiments.main`` through :func:`absl_flags_parser`).
- A user error (a wrong path, an unknown dataset, model or optimizer, a
  misspelled option or config field) prints one line, ``Type: message``,
  with a "did you mean" hint where one is close, and exits non-zero
  (:func:`run`); ``--debug``, or the environment variable
  ``GAF_OPTAX_DEBUG=1``, shows the Python traceback instead. A bug (any
  other exception) keeps its traceback and exits 1.

Exit status, as ``experiments/main.py`` documents it: 2 bad config or input,
3 the run diverged, 4 an I/O failure, 128 + the signal's number after a stop
signal (130 for Ctrl-C), 1 anything else.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_ENV = "GAF_OPTAX_DEBUG"
DEBUG_HELP = ("show the Python traceback of an error (or set "
              f"{DEBUG_ENV}=1)")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_IO = 4


def debug(argv: Sequence[str] | None = None) -> bool:
  """Whether ``--debug`` is in ``argv`` (default ``sys.argv``) or set in the
  environment (``GAF_OPTAX_DEBUG`` other than empty, ``0`` or ``false``)."""
  argv = sys.argv[1:] if argv is None else argv
  env = os.environ.get(DEBUG_ENV, "").strip().lower()
  return "--debug" in argv or env not in ("", "0", "false", "no")


def did_you_mean(name: str, known: Sequence[str]) -> str:
  """``"; did you mean X?"`` for the closest of ``known``, or ``""``."""
  close = difflib.get_close_matches(name, list(known), n=1)
  return f"; did you mean {close[0]}?" if close else ""


def _library_errors() -> tuple[tuple, tuple, tuple]:
  """gaf_optax's stop, divergence and bad-input errors, if it imports.

  Imported here: ``--help`` and the commands that never train stay fast, and
  one that runs before its dependencies are installed (``accelerator.py``)
  still reports its own errors.
  """
  try:
    from gaf_optax import data  # pylint: disable=import-outside-toplevel
    from gaf_optax import training  # pylint: disable=import-outside-toplevel
  except ImportError:
    return (), (), ()
  return ((training.Preempted,), (training.NonFiniteError,),
          (training.WorkdirLocked, data.TfdsNotPreparedError))


def exit_code(e: BaseException) -> int | None:
  """The exit status of a user error (see the module docstring), or None.

  None: ``e`` is not a user error (a bug), and keeps its traceback.
  """
  preempted, diverged, bad_input = _library_errors()
  if isinstance(e, KeyboardInterrupt):
    return 130
  if isinstance(e, preempted):
    return 128 + (e.signum or 15)
  if isinstance(e, diverged):
    return EXIT_DIVERGED
  if isinstance(e, (*bad_input, ValueError, TypeError, FileNotFoundError)):
    return EXIT_BAD_INPUT
  if isinstance(e, OSError):  # CheckpointWriteError among them
    return EXIT_IO
  return None


def message(e: BaseException) -> str:
  """What a user error prints: ``Type: message`` (a stop signal: the
  message alone)."""
  if isinstance(e, KeyboardInterrupt):
    return "interrupted"
  if isinstance(e, _library_errors()[0]):
    return str(e)
  return f"{type(e).__name__}: {e}"


def fail(code: int, e: BaseException, *, show_traceback: bool = False):
  """Prints ``e`` (its traceback first if asked) and exits ``code``."""
  if show_traceback:
    traceback.print_exception(type(e), e, e.__traceback__)
  print(message(e), file=sys.stderr)
  sys.exit(code)


def run(main: Callable, argv: Sequence[str] | None = None) -> int:
  """Calls ``main(argv)`` as a command and returns its exit status.

  A user error (:func:`exit_code`) is printed in one line and gives its
  status; with :func:`debug` it is raised with its traceback. A bug is
  raised. ``main`` returning an int (not a bool) is its status; anything
  else is 0.

  Example: ``if __name__ == "__main__": sys.exit(cli.run(main))``.
  """
  try:
    result = main(argv)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    code = exit_code(e)
    if code is None or debug(argv):
      raise
    print(message(e), file=sys.stderr)
    return code
  if isinstance(result, int) and not isinstance(result, bool):
    return result
  return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """The description as written; every option with its default.

  Unlike ``argparse.ArgumentDefaultsHelpFormatter``, an option without help
  text shows its default too, and flags (``store_true``) and None defaults
  show none.
  """

  def _format_action(self, action):
    default = action.default
    if (action.option_strings and default not in (None, False)
        and default is not argparse.SUPPRESS
        and "default" not in (action.help or "")
        and action.help is not argparse.SUPPRESS):
      action = copy.copy(action)
      action.help = (f"{action.help} " if action.help else "") + (
          "(default: %(default)s)")
    return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
  """argparse, with a hint for a misspelled option and one-line errors."""

  def error(self, message):
    options = [o for a in self._actions for o in a.option_strings
               if o.startswith("--")]
    found = re.match(r"unrecognized arguments: (\S+)", message)
    if found:
      message += did_you_mean(found.group(1).split("=")[0], options)
    self.exit(EXIT_BAD_INPUT,
              f"{self.prog}: error: {message} (see --help)\n")


def description(doc: str) -> str:
  """A module docstring's first paragraph: the help's description."""
  return doc.strip().split("\n\n")[0]


def parser(doc: str, **kwargs) -> ArgumentParser:
  """An entry point's parser: its docstring's first paragraph as the
  description, defaults in ``--help``, and ``--debug``."""
  p = ArgumentParser(description=description(doc),
                     formatter_class=HelpFormatter, **kwargs)
  p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
  return p


# --------------------------------------------------------------------------
# absl (experiments/main.py)

_ABSL_HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def _config_field_error(e: BaseException, argv: Sequence[str]) -> str:
  """A misspelled ``--config.FIELD`` as one line with a hint.

  ml_collections raises ``AttributeError``/``KeyError`` whose text holds the
  unknown name (and its own suggestion, quoted and escaped); the option is
  found in ``argv`` by that name.
  """
  text = str(e).encode().decode("unicode_escape", errors="replace")
  names = re.findall(r"'(\w+)'", text) or re.findall(r"\w+", text)[:1]
  bad = names[0] if names else "?"
  option = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.")
                 and bad in a.split("=")[0][len("--config."):].split(".")),
                f"--config...{bad}")
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  hint = f"; did you mean {suggestion.group(1)}?" if suggestion else ""
  return f"{option}: the config has no field {bad!r}{hint}"


def absl_flags_parser(argv: Sequence[str]):
  """``app.run``'s ``flags_parser``: help exits 0, a bad flag or config
  field prints one line and exits 2 (:data:`EXIT_BAD_INPUT`).

  absl's own help exits 1 and a failing ``--config.FIELD`` override (raised
  inside ml_collections, before ``main``) prints a traceback; with
  :func:`debug` the traceback is shown.
  """
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  args = list(argv[1:])
  if "--" in args:
    args = args[:args.index("--")]
  for a in args:
    if a in _ABSL_HELP:
      app.usage(shorthelp=a != "--helpfull", writeto_stdout=True,
                exitcode=0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # an unknown flag, a bad or missing value
    if debug(args):
      raise
    text = " ".join(str(e).split())
    print(f"error: {text} (see --help)", file=sys.stderr)
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    if debug(args):
      raise
    print(f"error: {_config_field_error(e, args)} (see --help)",
          file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


class DropTracebacks:
  """A text stream that leaves out tracebacks ending in given errors.

  Orbax's background threads print ``RuntimeError: Event loop is closed``
  tracebacks when a failed asynchronous save is torn down (the event loop
  closes while TensorStore still calls back into it): noise after an error
  that is reported in one line. This stream, put in place of
  ``sys.stderr`` for the run, holds each ``Traceback (most recent call
  last):`` block until its final line and drops the block when that line
  starts with one of ``endings``; any other block, and every other line,
  goes through unchanged. A block still open when the process ends is not
  written (a thread cut off mid-traceback).
  """

  _HEAD = "Traceback (most recent call last):"

  def __init__(self, stream, endings: Sequence[str] = (
      "RuntimeError: Event loop is closed",)):
    self.stream = stream
    self.endings = tuple(endings)
    self._partial = ""  # text after the last newline
    self._block: list[str] | None = None  # an open traceback's lines

  def write(self, text: str) -> int:
    n = len(text)
    if self._block is None and not self._partial:
      start = text.find(self._HEAD)
      if start < 0:  # the usual case, progress bars' "\r" included
        self.stream.write(text)
        return n
      self.stream.write(text[:start])
      text = text[start:]
    lines = (self._partial + text).split("\n")
    self._partial = lines.pop()
    for line in lines:
      self._line(line + "\n")
    if self._block is None and self._partial:
      self.stream.write(self._partial)
      self._partial = ""
    return n

  def _line(self, line: str) -> None:
    if self._block is None:
      if line.startswith(self._HEAD):
        self._block = [line]
      else:
        self.stream.write(line)
      return
    if line[:1] in (" ", "\t"):  # a frame or a source line
      self._block.append(line)
      return
    block, self._block = self._block, None
    if line.startswith(self.endings):
      return
    if line.startswith(self._HEAD):
      self.stream.write("".join(block))  # a new one began: keep the last
      self._block = [line]
      return
    self.stream.write("".join(block) + line)

  def flush(self) -> None:
    self.stream.flush()

  def __getattr__(self, name):
    return getattr(self.stream, name)
