"""The accelerator run (experiments/accelerator.py) on the CPU: its plan,
its imports, and the script itself at smoke size, as CI runs it, with only
the target machine's packages: the deadline kept, partial files after
SIGTERM mid-arm, a rerun that resumes."""

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

from experiments import accelerator as acc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")
# Installed here, absent on the target machine (which has jax, flax, optax,
# chex, orbax, numpy, Pillow and matplotlib): the script runs without them.
NOT_ON_THE_TARGET = ("grain", "sklearn", "tensorflow_datasets", "tensorflow",
                     "ml_collections", "tqdm", "tensorboardX", "torch")


def _archive(path, train=64, test=20):
  """A CIFAR-10-like .tar.gz: each class a colour plus noise (learnable)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  with tarfile.open(path, "w:gz") as tar:
    for split, n in (("train", train), ("test", test)):
      for c, name in enumerate(CLASSES):
        colour = np.array([(37 * c) % 256, (91 * c) % 256, (153 * c) % 256])
        for i in range(n):
          x = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255)
          im = Image.fromarray(x.astype(np.uint8))
          buf = io.BytesIO()
          im.save(buf, "JPEG", quality=90)
          info = tarfile.TarInfo(f"cifar10/{split}/{name}/{i:04d}.jpg")
          info.size = buf.tell()
          buf.seek(0)
          tar.addfile(info, buf)
  return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
  return _archive(str(tmp_path_factory.mktemp("data") / "cifar.tar.gz"))


@pytest.fixture(scope="module")
def target_env(tmp_path_factory):
  """The environment of a Python without :data:`NOT_ON_THE_TARGET`.

  A ``sitecustomize`` on ``PYTHONPATH`` (so spawned workers get it too) sets
  ``sys.modules[name] = None`` for each: ``import name`` then raises
  ModuleNotFoundError and ``importlib.util.find_spec(name)`` is None, as
  for a package that is not installed. The decoded data are cached in a
  folder of the test's own.
  """
  site = tmp_path_factory.mktemp("target_site")
  (site / "sitecustomize.py").write_text(
      f"import sys\nfor name in {NOT_ON_THE_TARGET!r}:\n"
      "  sys.modules[name] = None\n")
  path = [str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(path),
              GAF_OPTAX_CACHE=str(tmp_path_factory.mktemp("data_cache")))


def _command(archive, out, budget, *extra):
  return [sys.executable, "-m", "experiments.accelerator", "--smoke",
          "--data", archive, "--out", out, "--budget-seconds", str(budget),
          *extra]


def _results(out):
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f)


# --------------------------------------------------------------------------
# The plan


def test_timeline_waits_for_the_background_compiles():
  runs = [(3, True), (3, False), (3, False)]
  # One thread: the 2nd arm is ready at 10 s, the 3rd at 20 s.
  assert acc.timeline(runs, 10.0, 2.0, workers=1) == 26.0
  # Two threads compile both by 10 s; then the arms run back to back.
  assert acc.timeline(runs, 10.0, 2.0, workers=2) == 22.0
  assert acc.timeline([(4, False)], 10.0, 2.0, workers=4) == 18.0


def test_plan_drops_groups_before_epochs_fall_below_the_floor():
  groups = acc.arm_groups([a for g in acc.GROUPS for a in g])
  assert groups[4] == ("swish", "nswish") and len(groups) == 7
  bounds = acc.Bounds(min_epochs=6, max_epochs=30, core_groups=3)
  # 8 arms, compile 30 s (4 threads, so the arms are ready in time), 8 s
  # an epoch, 400 s: all 8 fit 5 epochs (30 + 8 * 5 * 8 = 350), below 6;
  # 6 groups (7 arms) fit 6 (30 + 7 * 6 * 8 = 366), not 7 (422).
  assert acc.plan_epochs(groups, 400.0, 30.0, 8.0, 4, bounds) == (6, 6)
  # Plenty of time: every arm, epochs capped.
  assert acc.plan_epochs(groups, 1e5, 30.0, 8.0, 4, bounds) == (30, 7)
  # Too little for 6 epochs of the 3 core arms: they get what fits
  # (30 + 3 * 2 * 8 = 78), never fewer arms with more epochs.
  assert acc.plan_epochs(groups, 100.0, 30.0, 8.0, 4, bounds) == (2, 3)
  assert acc.plan_epochs(groups, 10.0, 30.0, 8.0, 4, bounds) == (0, 3)


def test_decide_keeps_or_restarts_the_first_arm():
  groups = acc.arm_groups(["sgd", "sgd_gaf", "sgd_matched", "swish",
                           "nswish"])
  bounds = acc.Bounds(6, 30, 3)
  # The prior was right: the first arm's 9 epochs left and 4 x 10 for the
  # others (392 s) fit; a restart would give 9 (30 + 5 * 9 * 8 = 390).
  d = acc.decide(groups, 400.0, 30.0, 8.0, 4, bounds, 10, fixed=False)
  assert d["keep"] == (10, 4) and d["best"] == (9, 4)
  assert d["restart"] is False and (d["epochs"], d["groups"]) == (10, 4)
  # Twice as fast: a restart gets 18 epochs (30 + 5 * 18 * 4 = 390).
  d = acc.decide(groups, 400.0, 30.0, 4.0, 4, bounds, 10, fixed=False)
  assert d["restart"] is True and (d["epochs"], d["groups"]) == (18, 4)
  # Slower: keeping 10 epochs fits 2 groups (90 + 100 = 190 of 250 s), a
  # restart 7 epochs for 3 (30 + 3 * 7 * 10 = 240).
  d = acc.decide(groups, 250.0, 30.0, 10.0, 4, bounds, 10, fixed=False)
  assert d["keep"] == (10, 2) and d["best"] == (7, 3)
  assert d["restart"] is True and (d["epochs"], d["groups"]) == (7, 3)
  # Nothing fits a restart: keep what runs.
  d = acc.decide(groups, 20.0, 30.0, 10.0, 4, bounds, 2, fixed=False)
  assert d["best"] == (0, 3) and d["restart"] is False
  # --epochs: never a restart, only fewer arms.
  d = acc.decide(groups, 250.0, 30.0, 10.0, 4, bounds, 10, fixed=True)
  assert d["restart"] is False and (d["epochs"], d["groups"]) == (10, 2)


def test_arm_groups_keep_swish_and_nswish_together():
  assert acc.arm_groups(["nswish", "sgd", "swish"]) == [("swish", "nswish"),
                                                        ("sgd",)]
  assert acc.arm_groups(["swish", "sgd"]) == [("swish",), ("sgd",)]
  assert acc.mean_std([1.0, 3.0], 2) == "2.00 +- 1.00"
  assert acc.mean_std([1.0, float("nan"), 3.0], 2) == "diverged (1/3)"


# --------------------------------------------------------------------------
# Data and packages


def test_the_scripts_imports_need_only_the_target_machines_packages(
    target_env):
  # Every module the script imports, at its top or inside its functions.
  tree = ast.parse(open(acc.__file__).read())
  imports = sorted({(a.name, "") for n in ast.walk(tree)
                    if isinstance(n, ast.Import) for a in n.names} |
                   {(n.module, a.name) for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and
                    n.module != "__future__" for a in n.names})
  assert ("gaf_optax", "data") in imports
  assert ("experiments", "reproduce") in imports
  code = f"""
import importlib, importlib.util, sys
for module, name in {imports!r}:
  m = importlib.import_module(module)
  if name and not hasattr(m, name):
    importlib.import_module(module + "." + name)
import gaf_optax.training  # what experiments.reproduce trains with
blocked = {NOT_ON_THE_TARGET!r}
assert all(importlib.util.find_spec(n) is None for n in blocked)
for n in blocked:
  try:
    importlib.import_module(n)
  except ModuleNotFoundError:
    pass
  else:
    raise AssertionError(n + " was imported")
print(sorted(m for m, v in sys.modules.items()
             if v is not None and m.split(".")[0] in blocked))
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                        env=target_env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "[]"


def test_wheels_are_installed_only_when_an_import_fails(tmp_path):
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  name = "gaf_optax_wheel_probe"
  with zipfile.ZipFile(wheels / f"{name}-1.0-py3-none-any.whl", "w") as z:
    z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
    dist = f"{name}-1.0.dist-info"
    z.writestr(f"{dist}/METADATA",
               f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
               "Root-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{dist}/RECORD", "")
  target = str(tmp_path / "site")
  try:
    assert acc.ensure_packages(str(wheels), ("json",), target) == {
        "json": "found"}
    assert not os.path.exists(target)  # nothing installed
    got = acc.ensure_packages(str(wheels), ("json", name), target)
    assert got == {"json": "found", name: f"installed from {wheels}/"}
    assert __import__(name).VALUE == 42
  finally:
    if target in sys.path:
      sys.path.remove(target)
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------
# The script at smoke size, as CI runs it


def test_the_budget_is_kept_and_the_tables_are_written(archive, target_env,
                                                       tmp_path):
  out = str(tmp_path / "out")
  budget = 30
  t0 = time.monotonic()
  proc = subprocess.run(_command(archive, out, budget), cwd=ROOT,
                        env=target_env, capture_output=True, text=True,
                        timeout=budget + 60)
  wall = time.monotonic() - t0
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert wall <= budget + 3, (wall, proc.stdout[-2000:])
  res = _results(out)
  assert res["elapsed_s"] <= budget
  # Read by the library (its cache), in a process per core, subset 64 + 20
  # per class (here: all of them).
  assert [f[:7] for f in os.listdir(target_env["GAF_OPTAX_CACHE"])] == [
      "folder-"]
  assert res["data"]["workers"] == min(16, os.cpu_count() or 1)
  assert (res["data"]["num_train"], res["data"]["num_test"]) == (640, 200)
  assert res["status"] in ("complete", "partial")
  assert sorted(os.listdir(out)) == ["curves.png", "log.txt", "results.json",
                                     "results.md", "resume.json"]
  assert sum(os.path.getsize(os.path.join(out, f))
             for f in os.listdir(out)) < 2 << 20
  plan = res["plan"]
  assert 1 <= plan["epochs"] <= 4 and plan["seeds"] == [0, 1, 2]
  sgd = res["arms"]["sgd"]
  assert sgd["status"] == "done" and sgd["epochs_done"] == plan["epochs"]
  acc_final = np.array(sgd["test_accuracy"][-1])
  assert acc_final.shape == (3,) and np.all((acc_final >= 0) &
                                            (acc_final <= 1))
  assert len(sgd["step_loss"]) == plan["epochs"]
  assert len(sgd["step_loss"][0][0]) == 640 // 32  # steps per epoch
  text = open(os.path.join(out, "results.md")).read()
  (row,) = [l for l in text.splitlines() if l.startswith("| `sgd`:")][:1]
  final = re.search(r"\| (\d+\.\d+) \+- (\d+\.\d+) \|", row)
  assert abs(float(final[1]) - 100 * acc_final.mean()) < 0.006
  assert abs(float(final[2]) - 100 * acc_final.std()) < 0.006
  assert "## Benchmark: the optimizer step" in text
  assert "## Benchmark: the train step" in text
  bench = res["benchmarks"]["optimizer"]["rows"][0]
  assert bench["optimizer"].startswith("optax.sgd") and bench["gb_s"] > 0
  assert "memory bandwidth unknown" in text  # the CPU has no datasheet row
  status = re.search(r"\*\*Status: (\w+)\*\*", text)[1]
  assert status == res["status"]
  if status == "partial":
    assert res["reason"]


def test_a_hard_deadline_during_startup_ends_cleanly(archive, target_env,
                                                     tmp_path):
  # A 3 s budget puts the hard deadline (2.5 s before the end) inside the
  # imports: the watching thread cuts the run, whatever the main one does.
  out = str(tmp_path / "out")
  t0 = time.monotonic()
  proc = subprocess.run(_command(archive, out, 3), cwd=ROOT,
                        env=target_env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert time.monotonic() - t0 <= 3 + 2
  res = _results(out)
  assert res["status"] == "partial" and "hard deadline" in res["reason"]
  assert "**Status: partial**" in open(os.path.join(out, "results.md")).read()


def test_sigterm_mid_arm_leaves_partial_files_and_a_rerun_resumes(
    archive, target_env, tmp_path):
  out1, out2 = str(tmp_path / "out1"), str(tmp_path / "out2")
  # --epochs fixed: no restart of the first arm, so sgd_gaf comes soon; 3
  # epochs leave two epochs' time (about 1 s) for this process, on a busy
  # machine, to read the line and send the signal while sgd_gaf still runs.
  proc = subprocess.Popen(_command(archive, out1, 90, "--benchmark-seconds",
                                   "2", "--epochs", "3"), cwd=ROOT,
                          env=target_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1)
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if re.search(r"\] sgd_gaf epoch 1/", line):
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        break
    rest, _ = proc.communicate(timeout=30)
  finally:
    proc.kill()
  assert proc.returncode == 0, "".join(lines)[-3000:]
  assert time.monotonic() - sent < 5
  res = _results(out1)
  assert res["status"] == "partial" and "SIGTERM" in res["reason"], rest
  epochs = res["plan"]["epochs"]
  assert res["arms"]["sgd"]["status"] == "done"
  cut = res["arms"]["sgd_gaf"]
  assert cut["status"] == "partial" and 1 <= cut["epochs_done"] < epochs
  text = open(os.path.join(out1, "results.md")).read()
  assert "**Status: partial**: stopped by SIGTERM" in text
  assert f"| {cut['epochs_done']}/{epochs} (partial) |" in text
  archive1 = json.load(open(os.path.join(out1, "resume.json")))
  assert list(archive1["arms"]) == ["sgd"]  # finished arms only
  assert set(archive1["benchmarks"]) == {"optimizer", "train_step"}

  # The rerun keeps the plan, does not run sgd or the benchmarks again and
  # runs sgd_gaf from its start: its first epoch as before.
  proc = subprocess.run(
      _command(archive, out2, 20, "--resume",
               os.path.join(out1, "resume.json")),
      cwd=ROOT, env=target_env, capture_output=True, text=True, timeout=100)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  res2 = _results(out2)
  assert res2["plan"] == res["plan"]
  assert res2["benchmarks"]["optimizer"]["rows"] == (
      res["benchmarks"]["optimizer"]["rows"])
  assert res2["arms"]["sgd"]["status"] == "resumed"
  assert res2["arms"]["sgd"]["test_accuracy"] == (
      res["arms"]["sgd"]["test_accuracy"])
  again = res2["arms"]["sgd_gaf"]
  assert again["status"] == "done" and again["epochs_done"] == epochs == 3
  # It learned (the colours tell the classes apart): images and labels
  # line up through the reader and the seeds' programs.
  assert np.mean(again["test_accuracy"][-1]) > 0.6
  np.testing.assert_allclose(again["train_loss"][0], cut["train_loss"][0],
                             rtol=1e-6)
  assert "sgd: resumed from" in proc.stdout
  assert "benchmark optimizer: from" in proc.stdout
  assert len(res2["earlier_runs"]) == 1
  assert "Resumed from an earlier run" in open(
      os.path.join(out2, "results.md")).read()
