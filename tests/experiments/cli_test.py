"""The command line: --help of every entry point, user errors, --debug.

The ``--help`` of every argparse entry point runs in one subprocess (one
import of JAX); the rest are one subprocess per case, on the fast failing
paths (nothing trains).
"""

import glob
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
CONFIG = "--config=experiments/configs/digits_mlp.py"


def _run(args, env=None, timeout=300):
  full_env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
  full_env.update(env or {})
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=full_env)


def _entry_points():
  """Every ``experiments`` module with a ``__main__`` block, but main.py."""
  mods = []
  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "**",
                                            "*.py"), recursive=True)):
    with open(path) as f:
      if 'if __name__ == "__main__":' not in f.read():
        continue
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    if rel not in ("experiments.main", "experiments.cli"):
      mods.append(rel)
  return mods


def test_every_entry_point_help_exits_0_and_shows_defaults():
  mods = _entry_points()
  assert "experiments.quickstart" in mods and len(mods) >= 15
  script = textwrap.dedent("""
      import contextlib, io, json, runpy, sys
      out = {}
      for mod in sys.argv[1:]:
        sys.argv = [mod, "--help"]
        buf = io.StringIO()
        code = None
        with contextlib.redirect_stdout(buf):
          try:
            runpy.run_module(mod, run_name="__main__")
          except SystemExit as e:
            code = e.code
        out[mod] = [code, buf.getvalue()]
      print(json.dumps(out))
      """)
  r = _run(["-c", script, *mods])
  assert r.returncode == 0, r.stderr[-3000:]
  helps = json.loads(r.stdout.splitlines()[-1])
  for mod, (code, text) in helps.items():
    assert code in (0, None), (mod, code)
    assert text.startswith("usage:"), (mod, text[:200])
    assert "--debug" in text and "GAF_OPTAX_DEBUG=1" in text, mod
    assert "(default: " in text, (mod, text)
  quick = " ".join(helps["experiments.quickstart"][1].split())
  assert "--epochs EPOCHS epochs per run (default: 8)" in quick
  assert "--lr LR peak learning rate (Adam arms: 1e-3) (default: 0.02)" in (
      quick)
  study = " ".join(helps["experiments.studies.gaf_cifar"][1].split())
  assert "--seeds SEEDS seeds per arm (default: 3)" in study
  bench = " ".join(helps["experiments.benchmarks.optimizer"][1].split())
  assert "--repeats REPEATS (default: 30)" in bench


def test_main_help_exits_0_with_its_docstring_intact():
  r = _run(["-m", "experiments.main", "--help"])
  assert r.returncode == 0, r.stderr
  # The docstring's line continuation is kept, not joined into one line.
  assert ("digits_mlp.py \\\n        --workdir=/tmp/run" in r.stdout)
  assert "- 2: bad config or input" in r.stdout
  assert "--[no]debug" in r.stdout and "--workdir" in r.stdout


@pytest.mark.parametrize("flag,hint", [
    ("--config.optimzer=sgd_gaf", "--config.optimzer: the config has no "
     "field 'optimzer'; did you mean optimizer?"),
    ("--config.gaf.alpah=0.5", "--config.gaf.alpah: the config has no field "
     "'alpah'; did you mean alpha?"),
    ("--workdri=/tmp/x", "Unknown command line flag 'workdri'. Did you mean: "
     "workdir ?"),
])
def test_main_misspelled_field_or_flag_is_one_line_and_exits_2(
    tmp_path, flag, hint):
  r = _run(["-m", "experiments.main", CONFIG, f"--workdir={tmp_path}", flag])
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and hint in lines[0], r.stderr
  assert "Traceback" not in r.stderr
  assert not os.listdir(tmp_path)  # nothing ran


def test_main_debug_shows_the_traceback(tmp_path):
  r = _run(["-m", "experiments.main", CONFIG, f"--workdir={tmp_path}",
            "--config.optimzer=sgd", "--debug"])
  assert r.returncode == 1 and "Traceback" in r.stderr, r.stderr


def test_main_missing_config_file_is_one_line_and_exits_2(tmp_path):
  r = _run(["-m", "experiments.main", "--config=/nonexistent/config.py",
            f"--workdir={tmp_path}"])
  assert r.returncode == 2, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "/nonexistent/config.py" in lines[0]


@pytest.mark.parametrize("args,env,message", [
    (["--dataset=folder:/nonexistent/set"], {},
     "FileNotFoundError: image folder '/nonexistent/set' does not exist"),
    (["--dataset=cifar11", "--debug"], {}, None),
    (["--dataset=cifar11"], {cli.DEBUG_ENV: "1"}, None),
])
def test_quickstart_user_errors(tmp_path, args, env, message):
  r = _run(["-m", "experiments.quickstart", f"--out={tmp_path}", *args],
           env=env)
  if message is None:  # --debug or GAF_OPTAX_DEBUG=1: the traceback
    assert r.returncode == 1 and "Traceback" in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "ValueError: unknown dataset 'cifar11' (did you mean 'cifar10'?)")
  else:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


# ---------------------------------------------------------------------------
# cli's pieces, in process


def _raises(error):
  def main(argv):
    raise error
  return main


@pytest.mark.parametrize("error,code", [
    (ValueError("unknown model 'resnet9'"), 2),
    (FileNotFoundError("no such folder"), 2),
    (TypeError("features must be a tuple"), 2),
    (OSError("disk full"), 4),
    (KeyboardInterrupt(), 130),
])
def test_run_prints_user_errors_in_one_line(capsys, monkeypatch, error,
                                            code):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  assert cli.run(_raises(error), []) == code
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert err.strip() == ("interrupted" if code == 130
                         else f"{type(error).__name__}: {error}")


def test_run_keeps_a_bug_s_traceback_and_debug_raises(monkeypatch):
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  with pytest.raises(RuntimeError):
    cli.run(_raises(RuntimeError("a bug")), [])
  with pytest.raises(ValueError):
    cli.run(_raises(ValueError("bad")), ["--debug"])
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  with pytest.raises(ValueError):
    cli.run(_raises(ValueError("bad")), [])
  monkeypatch.setenv(cli.DEBUG_ENV, "0")
  assert cli.run(_raises(ValueError("bad")), []) == 2
  assert cli.run(lambda argv: 5, []) == 5
  assert cli.run(lambda argv: {"a": 1}, []) == 0


def test_run_exit_codes_of_training_errors(capsys, monkeypatch):
  from gaf_optax import training  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
  error = training.NonFiniteError("loss is nan", step=3, checkpoint=None)
  assert cli.run(_raises(error), []) == 3
  capsys.readouterr()


def test_parser_help_defaults_and_option_hint(capsys):
  p = cli.parser("Title line\nsecond line.\n\nMore.")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--rate", type=float, default=0.5, help="the rate")
  p.add_argument("--already", default="x", help="x (default: x)")
  p.add_argument("--none", default=None, help="unset")
  text = " ".join(p.format_help().split())
  assert "Title line second line." in text and "More." not in text
  assert "--steps STEPS (default: 10)" in text
  assert "--rate RATE the rate (default: 0.5)" in text
  assert "--already ALREADY x (default: x) " in text
  assert "--none NONE unset --" in text or text.endswith("unset")
  assert "--debug show the Python traceback" in text
  with pytest.raises(SystemExit) as e:
    p.parse_args(["--stesp=3"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "unrecognized arguments: --stesp=3; did you mean --steps?" in err


def test_did_you_mean():
  assert cli.did_you_mean("optimzer", ["optimizer", "model"]) == (
      "; did you mean optimizer?")
  assert cli.did_you_mean("zzz", ["optimizer"]) == ""


def test_drop_tracebacks_leaves_out_only_the_teardown_noise():
  out = io.StringIO()
  err = cli.DropTracebacks(out)
  noise = ("Traceback (most recent call last):\n"
           '  File "base_events.py", line 837, in call_soon_threadsafe\n'
           "    self._check_closed()\n"
           "RuntimeError: Event loop is closed\n")
  bug = ("Traceback (most recent call last):\n"
         '  File "x.py", line 1, in <module>\n'
         "ValueError: a real one\n")
  err.write("progress 10%\r")
  err.write("progress 20%\r")
  assert out.getvalue() == "progress 10%\rprogress 20%\r"  # not held back
  for chunk in (noise[:40], noise[40:], bug, "one line\n", noise):
    err.write(chunk)
  # A traceback cut off by the process's end (another thread) is dropped.
  err.write("Traceback (most recent call last):\n  File \"y.py\"")
  assert out.getvalue() == ("progress 10%\rprogress 20%\r" + bug +
                            "one line\n")
