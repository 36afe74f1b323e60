"""The accelerator run: the papers' comparisons and two benchmarks, one command.

    python -m experiments.accelerator --out OUT [--budget-seconds 540]
        [--data data/cifar10-jpeg.tar.gz] [--resume FILE] [--seeds 3]
        [--arms a,b,...] [--epochs E] [--smoke]

The first command to run on a fresh accelerator machine, from the
repository root (experiments/README.md, "One accelerator", lists what to
put in the checkout first: the CIFAR-10 archive in ``data/`` and, only for
a machine without them, wheels of Pillow and matplotlib in ``wheels/``). It
prints the versions it found and writes everything to ``--out``, at most
five small files:

- ``results.md``: the tables (mean +- std over the seeds) and a status line,
  ``complete`` or ``partial`` with the reason;
- ``results.json``: the same data, every epoch of every arm;
- ``curves.png``: training loss and test accuracy per arm;
- ``resume.json``: what a rerun needs (``--resume``): the setting, the plan
  and the finished arms' and benchmarks' results, under 1 MB (checkpoints
  of the arm in progress would be about 270 MB for three ResNet-18 seeds,
  so an arm cut mid-way is run again from its start);
- ``log.txt``: everything it printed.

What it runs, in this order, all inside ``--budget-seconds`` of wall time
counted from the process's start (imports, device start and the last
file included):

1. the CIFAR-10 JPEG archive, ``gaf_optax.data.get("folder:" + ARCHIVE,
   decode_workers=cores)``: decoded by one process per core (up to 16; one
   process takes about 30 s) and cached for a rerun (in
   ``$GAF_OPTAX_CACHE`` or ``~/.cache/gaf_optax``);
2. the optimizer benchmark (experiments/benchmarks/optimizer.py's
   optimizers, every GAF preset against optax): one update + apply on the
   model's parameter tree, ms per step and GB/s of the least traffic a step
   needs, against the device's memory bandwidth where known;
3. the train-step benchmark (experiments/benchmarks/models.py) of the same
   model in bfloat16 and float32, images/s;
4. the arms, in priority order, each one :meth:`gaf_optax.training.Trainer.
   fit_seeds` over ``--seeds`` seeds (vmapped: three seeds cost one
   compile) with one compiled program per epoch (``on_epoch``): ``sgd``,
   ``sgd_gaf``, ``sgd_matched``, ``amp_random``, ``swish`` + ``nswish``,
   ``amp_cv``, ``sgd_gaf_gradient`` (experiments/reproduce.py describes
   them). The order is the papers' claims by weight: GAF against SGD and
   against SGD at GAF's matched learning rate (also amplification's lr x
   factor control), then amplification (2020), then Swish against NSwish
   (a pair: one without the other answers nothing), then the variants.

The plan (epochs per arm, which arms) comes from measured times: a prior
from the train-step benchmark gives the first arm's epochs; that arm's
compile and first epoch, measured, then give the plan, which keeps the
first arm's run or restarts it with other epochs when that gains at least
two epochs or an arm. Every arm gets the same epochs (its cosine schedule
and amplification window depend on them); arms are dropped from the end
of the priority list before the epochs fall below 6 (amplification's
window, epochs [1, E/2), is then at least 2 epochs). While one arm trains,
the next ones compile in background threads (``Trainer.compile_seeds``),
and a persistent compilation cache (``--cache-dir``) serves a rerun on the
same machine. Before each arm and after each epoch the run checks that
what comes next fits the deadline; a thread that hears SIGTERM and SIGINT
and watches a hard deadline a few seconds before the budget's end writes
the files as they stand, with ``partial`` and the reason, and exits with
status 0. The files are rewritten after every epoch (the plot at most
every 2 s), so even a run killed outright leaves a readable table marked
``partial``.

``--smoke`` is the same code on a tiny MLP (two hidden layers of 64), a
class-balanced subset of 640 training and 200 test images (64 and 20 per
class, ``data.get``'s ``train_size``/``test_size``; normalised with the
whole training set's statistics), batch 32 and 2-4 epochs, for the test
suite on the CPU (tests/experiments/accelerator_test.py).

Design: a Python entry point rather than a shell script, so that the code
the tests run is the code the accelerator runs, and so that the deadline
and the signals are handled inside the process that holds the results
(a shell wrapper's ``timeout`` could only kill it).
"""

from __future__ import annotations

# Only the standard library at import: the stop signals must be blocked
# before JAX starts its threads (main() does that first), and the data's
# decoding processes (spawned) import this module again. Everything else is
# imported where it is used.
# pylint: disable=import-outside-toplevel
import concurrent.futures
import copy
import dataclasses
import glob
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import select
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from experiments import cli


def _process_start() -> float:
  """``time.monotonic()`` at this process's start (Linux), else now."""
  now = time.monotonic()
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    if 0.0 <= age < 60.0:
      return now - age
  except (OSError, ValueError, IndexError):
    pass
  return now


START = _process_start()
FORMAT = 1  # of results.json / resume.json
CIFAR_SHA256 = (
    "5fe16dda30dbe5895617412f0065ba656c754a2dd938029ffd64189650fc4909")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Memory bandwidth by device kind (vendor datasheets), for GB/s shares.
BANDWIDTH_GBS = {"H200": 4800.0}
# The arms in priority order, grouped: a group is planned whole.
GROUPS = (("sgd",), ("sgd_gaf",), ("sgd_matched",), ("amp_random",),
          ("swish", "nswish"), ("amp_cv",), ("sgd_gaf_gradient",))


@dataclasses.dataclass(frozen=True)
class Bounds:
  """The plan's limits on epochs per arm and the arms always planned."""

  min_epochs: int  # drop arms before going below this
  max_epochs: int
  core_groups: int  # planned even when min_epochs does not fit


@dataclasses.dataclass(frozen=True)
class Mode:
  """What ``--smoke`` changes: sizes, never the code path."""

  sizes: tuple[int, int] | None  # (train, test) images, class-balanced
  bounds: Bounds
  bench_steps: int  # timed train steps per dtype
  optimizer_steps: int  # steps per optimizer-benchmark sample
  margin_s: float  # the hard deadline is this long before the budget's end
  prior: tuple[float, float]  # (compile s, epoch s) without a benchmark


FULL = Mode(None, Bounds(6, 30, 3), bench_steps=20, optimizer_steps=20,
            margin_s=4.0, prior=(60.0, 15.0))
SMOKE = Mode((640, 200), Bounds(2, 4, 3), bench_steps=3, optimizer_steps=20,
             margin_s=2.5, prior=(5.0, 1.0))


def _now() -> float:
  return time.monotonic() - START


# --------------------------------------------------------------------------
# The plan: pure functions of measured times


def arm_groups(arms) -> list[tuple[str, ...]]:
  """``arms`` in their order, grouped as :data:`GROUPS` pairs them."""
  groups, seen = [], set()
  for arm in arms:
    if arm in seen:
      continue
    pair = next((g for g in GROUPS if arm in g), (arm,))
    group = tuple(a for a in pair if a in arms)
    groups.append(group)
    seen.update(group)
  return groups


def timeline(runs, compile_s: float, epoch_s: float, workers: int) -> float:
  """Seconds from now to train ``runs`` one after another.

  Args:
    runs: ``(epochs, compiled)`` per arm, in order; the arms not yet
      compiled are compiled in that order by ``workers`` background threads
      starting now, each in ``compile_s``; an arm starts when the one
      before it is done and its own program is compiled.
    compile_s: one arm's compile time.
    epoch_s: one epoch of one arm (all its seeds).
    workers: compile threads.
  """
  free = [0.0] * max(1, workers)
  t = 0.0
  for epochs, compiled in runs:
    ready = 0.0
    if not compiled:
      w = free.index(min(free))
      free[w] += compile_s
      ready = free[w]
    t = max(t, ready) + epochs * epoch_s
  return t


def _most_epochs(runs_for, remaining_s, compile_s, epoch_s, workers,
                 max_epochs) -> int:
  """The most epochs ``E <= max_epochs`` whose ``runs_for(E)`` fit (0: none)."""
  for epochs in range(max_epochs, 0, -1):
    if timeline(runs_for(epochs), compile_s, epoch_s,
                workers) <= remaining_s:
      return epochs
  return 0


def plan_epochs(groups, remaining_s: float, compile_s: float,
                epoch_s: float, workers: int, bounds: Bounds
                ) -> tuple[int, int]:
  """``(epochs, groups planned)`` for arms that all start uncompiled.

  The most groups (a prefix of ``groups``, at least ``bounds.core_groups``)
  for which at least ``bounds.min_epochs`` fit, with the most epochs that
  fit them; when none reaches that, the first ``bounds.core_groups`` groups
  with the most epochs that fit (0 when not even one does).
  """
  core = min(bounds.core_groups, len(groups))
  for g in range(len(groups), core - 1, -1):
    n = sum(len(x) for x in groups[:g])
    epochs = _most_epochs(lambda e, n=n: [(e, False)] * n, remaining_s,
                          compile_s, epoch_s, workers, bounds.max_epochs)
    if epochs >= bounds.min_epochs:
      return epochs, g
  n = sum(len(x) for x in groups[:core])
  epochs = _most_epochs(lambda e: [(e, False)] * n, remaining_s, compile_s,
                        epoch_s, workers, bounds.max_epochs)
  return epochs, core


def groups_that_fit(groups, epochs: int, done_epochs: int,
                    remaining_s: float, compile_s: float, epoch_s: float,
                    workers: int) -> int:
  """How many groups fit at ``epochs``, the first arm running (compiled,
  ``done_epochs`` done)."""
  for g in range(len(groups), 0, -1):
    n = sum(len(x) for x in groups[:g])
    runs = [(epochs - done_epochs, True)] + [(epochs, False)] * (n - 1)
    if timeline(runs, compile_s, epoch_s, workers) <= remaining_s:
      return g
  return 0


def decide(groups, remaining_s: float, compile_s: float, epoch_s: float,
           workers: int, bounds: Bounds, epochs: int, fixed: bool
           ) -> dict:
  """Keep the first arm's run at ``epochs`` (one done), or restart it.

  Restart (the first arm compiled again, its epoch lost) when keeping fits
  no group, or fewer than ``bounds.core_groups`` where restarting fits
  more, or restarting reaches ``bounds.min_epochs`` where keeping does not,
  or plans more groups at ``min_epochs`` or more, or the same groups with
  at least ``max(2, epochs // 4)`` more epochs. ``fixed`` (``--epochs``)
  never restarts.

  Returns:
    ``{"epochs", "groups", "restart", "keep": (epochs, groups), "best":
    (epochs, groups)}``.
  """
  keep_g = groups_that_fit(groups, epochs, 1, remaining_s, compile_s,
                           epoch_s, workers)
  best_e, best_g = plan_epochs(groups, remaining_s, compile_s, epoch_s,
                               workers, bounds)
  low = bounds.min_epochs
  core = min(bounds.core_groups, len(groups))
  restart = not fixed and best_e > 0 and (
      keep_g == 0
      or (keep_g < core and best_g > keep_g)
      or (epochs < low <= best_e)
      or (best_g > keep_g and best_e >= low)
      or (best_g == keep_g and best_e >= epochs + max(2, epochs // 4)))
  chosen = (best_e, best_g) if restart else (epochs, max(1, keep_g))
  return {"epochs": chosen[0], "groups": chosen[1], "restart": restart,
          "keep": (epochs, keep_g), "best": (best_e, best_g)}


# --------------------------------------------------------------------------
# Reporting (standard library only: the stop thread may write before JAX
# is imported)


def mean_std(values, decimals: int) -> str:
  """``mean +- std`` (population std), or how many were not finite."""
  values = [float(v) for v in values]
  bad = sum(1 for v in values if not math.isfinite(v))
  if not values:
    return ""
  if bad:
    return f"diverged ({bad}/{len(values)})"
  return (f"{statistics.fmean(values):.{decimals}f} +- "
          f"{statistics.pstdev(values):.{decimals}f}")


def _table(header, rows) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _arm_row(arm: str, a: dict, descriptions: dict) -> list[str]:
  done = a.get("epochs_done", 0)
  status = a.get("status", "")
  epochs = f"{done}/{a.get('epochs', '?')}"
  if status == "resumed":
    epochs += f" (earlier run, {a.get('device', '?')})"
  elif status != "done":
    epochs += f" ({status})"
  if a.get("note"):
    epochs += f"; {a['note']}"
  acc = a.get("test_accuracy") or []
  cells = [f"`{arm}`: {descriptions.get(arm, '')}", epochs]
  if acc:
    seeds = len(acc[-1])
    best = [max(100 * acc[e][s] for e in range(len(acc)))
            for s in range(seeds)]
    cells += [mean_std([100 * x for x in acc[-1]], 2), mean_std(best, 2),
              mean_std(a["train_loss"][-1], 3)]
  else:
    cells += ["", "", ""]
  epoch_s = a.get("epoch_s") or []
  cells += [f"{a['compile_s']:.1f}" if a.get("compile_s") is not None
            else "",
            f"{statistics.median(epoch_s):.1f}" if epoch_s else ""]
  return cells


def status_line(snap: dict) -> str:
  status = snap.get("status", "running")
  elapsed = f"{snap.get('elapsed_s', 0):.0f} of {snap.get('budget_s', 0):.0f} s"
  if status == "complete":
    return f"**Status: complete** ({elapsed})."
  if status == "running":
    return (f"**Status: partial** (still running at {elapsed}: "
            f"{snap.get('doing', '')}; a run that stops here was killed "
            "before it could write again).")
  return f"**Status: partial**: {snap.get('reason', '')} ({elapsed})."


def report(snap: dict) -> str:
  """results.md from a snapshot (see :class:`Run`)."""
  setting, plan = snap.get("setting") or {}, snap.get("plan") or {}
  device, versions = snap.get("device") or {}, snap.get("versions") or {}
  lines = ["# The papers' comparisons and two benchmarks on one accelerator",
           "", status_line(snap), "",
           f"Command: `{snap.get('command', '')}`  "]
  if device:
    lines.append(
        f"Device: {device['kind']} ({device['platform']}, {device['count']} "
        f"device(s)); memory bandwidth {_bandwidth_text(device)}  ")
  if versions:
    lines.append("Versions: " + ", ".join(f"{k} {v}"
                                          for k, v in versions.items()) + "  ")
  if snap.get("data"):
    d = snap["data"]
    lines.append(f"Data: `{d['path']}` (sha256 {d['sha256'][:12]}...), "
                 f"{d['num_train']} train / {d['num_test']} test images, "
                 f"read in {d['seconds']:.1f} s (decode_workers "
                 f"{d['workers']})  ")
  if setting:
    lines.append(
        f"Setting: {setting['model']} ({setting['params']:,} parameters), "
        f"batch {setting['batch_size']}, {setting['precision']} compute "
        "(float32 parameters and optimizer state), SGD momentum 0.9, "
        "weight decay 5e-4, cosine decay to 0 over the arm's epochs, crop + "
        f"flip on the device; seeds {setting['seeds']} vmapped in one "
        "compiled program per arm and epoch  ")
  if plan:
    cal = plan.get("calibration") or {}
    lines.append(
        f"Plan: {plan['epochs']} epochs per arm; arms "
        f"{', '.join('`%s`' % a for a in plan['arms'])}"
        + (f"; not planned: {', '.join('`%s`' % a for a in plan['dropped'])}"
           if plan.get("dropped") else "")
        + f". {plan.get('why', '')}"
        + (f" Calibration (`{cal['arm']}`): compile {cal['compile_s']:.1f} s,"
           f" epoch {cal['epoch_s']:.1f} s." if cal else "") + "  ")
  if snap.get("phases"):
    lines.append("Time: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in snap["phases"].items()) + "  ")
  for run in snap.get("earlier_runs") or []:
    lines.append(f"Resumed from an earlier run: `{run.get('command', '')}` "
                 f"on {run.get('device', '?')}, {run.get('status', '?')}, "
                 f"{run.get('elapsed_s', 0):.0f} s  ")
  if setting:
    lines += ["", f"Mean +- std over the {len(setting['seeds'])} seeds "
              "(population std); accuracies in %; epochs: run / planned; "
              "compile s: the arm's compile (in the background, beside the "
              "arm before it, for all but the first); s per epoch: all "
              "seeds, evaluation included.", ""]
  descriptions = snap.get("descriptions") or {}
  arms = snap.get("arms") or {}
  for paper, members in (snap.get("papers") or {}).items():
    rows = [_arm_row(a, arms[a], descriptions) for a in members if a in arms]
    if rows:
      lines += [f"## {paper}", ""]
      lines += _table(["arm", "epochs", "final test acc", "best test acc",
                       "final train loss", "compile s", "s per epoch"], rows)
      lines.append("")
  lines += _bench_lines(snap.get("benchmarks") or {}, device)
  if snap.get("plot"):
    lines += ["![curves](curves.png)", ""]
  return "\n".join(lines)


def _bandwidth_text(device: dict) -> str:
  bw = device.get("bandwidth_gbs")
  return f"{bw:.0f} GB/s (datasheet)" if bw else "unknown"


def _bench_lines(bench: dict, device: dict) -> list[str]:
  lines = []
  opt = bench.get("optimizer")
  if opt:
    lines += ["## Benchmark: the optimizer step", "",
              f"{opt.get('what', '')} Status: {opt.get('status', '')}.", ""]
    rows = []
    for r in opt.get("rows", []):
      if "median_ms" not in r:
        rows.append([r["optimizer"], r.get("status", ""), "", "", "", "", ""])
        continue
      rows.append([r["optimizer"], f"{r['compile_s']:.1f}",
                   f"{r['median_ms']:.3f}", f"{r['vs_sgd']:.2f}",
                   f"{r['traffic_mb']:.0f}", f"{r['gb_s']:.0f}",
                   f"{r['pct_peak']:.0f}%" if r.get("pct_peak") is not None
                   else "unknown"])
    lines += _table(["optimizer", "compile s", "ms per step",
                     "vs optax.sgd + decay", "least traffic MB", "GB/s",
                     f"of {_bandwidth_text(device)}"], rows) + [""]
  step = bench.get("train_step")
  if step:
    lines += ["## Benchmark: the train step", "",
              f"{step.get('what', '')} Status: {step.get('status', '')}.", ""]
    rows = []
    for r in step.get("rows", []):
      if "images_per_s" not in r:
        rows.append([r["dtype"], r.get("status", ""), "", ""])
        continue
      rows.append([r["dtype"], f"{r['compile_s']:.1f}",
                   f"{1e3 * r['median_step_s']:.2f}",
                   f"{r['images_per_s']:.0f}"])
    lines += _table(["dtype", "compile s", "median step ms", "images/s"],
                    rows) + [""]
  return lines


def resume_archive(snap: dict) -> dict:
  """What ``--resume`` reads: the setting, the plan, finished work."""
  arms = {a: v for a, v in (snap.get("arms") or {}).items()
          if v.get("status") in ("done", "resumed")}
  bench = {k: v for k, v in (snap.get("benchmarks") or {}).items()
           if v.get("status") == "done"}
  this = {k: snap.get(k) for k in ("command", "status", "reason",
                                   "elapsed_s")}
  this["device"] = (snap.get("device") or {}).get("kind")
  return {"format": FORMAT, "setting": snap.get("setting"),
          "plan": snap.get("plan"), "arms": arms, "benchmarks": bench,
          "earlier_runs": list(snap.get("earlier_runs") or []) + [this]}


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)  # whole or not at all


def plot(snap: dict, path: str) -> bool:
  """curves.png: training loss per step and test accuracy per epoch."""
  arms = {a: v for a, v in (snap.get("arms") or {}).items()
          if v.get("epochs_done")}
  if not arms or importlib.util.find_spec("matplotlib") is None:
    return False
  from experiments import common
  results = {}
  for arm, a in arms.items():
    seeds = len(a["test_accuracy"][0])
    results[arm] = [{
        "step_loss": [x for epoch in a["step_loss"] for x in epoch[s]],
        "records": [{"test_accuracy": acc[s]} for acc in a["test_accuracy"]]}
                    for s in range(seeds)]
  setting = snap.get("setting") or {}
  common.plot_curves(results, f"{setting.get('model')}, CIFAR-10, "
                     f"{len(setting.get('seeds', []))} seeds, "
                     f"{(snap.get('plan') or {}).get('epochs')} epochs "
                     f"({snap.get('status')})", path + ".tmp.png")
  os.replace(path + ".tmp.png", path)
  return True


# --------------------------------------------------------------------------
# The run's state, its files, the deadline and the stop signals


class Run:
  """The snapshot of the run and the thread that writes and guards it.

  The main thread changes the snapshot through :meth:`update`; a thread of
  its own writes the files whenever it changed (the plot at most every
  ``plot_every`` seconds), waits for SIGTERM and SIGINT and watches the
  hard deadline. The signals reach it through ``signal.set_wakeup_fd``:
  their handlers do nothing, but the C-level handler writes the signal's
  number to a pipe at once, on whichever thread the kernel picked, so the
  watcher sees it even while the main thread is inside a compile or a
  device program. (Blocking the signals in every thread and waiting with
  ``sigtimedwait`` does not hold: threads that native libraries start
  with an empty signal mask let a signal through with its default action,
  which kills the process.) On a signal or at the deadline
  it writes the files with status ``partial`` and ends the process with
  status 0 (``os._exit``: compiles still running in background threads
  would hold a normal exit).
  """

  def __init__(self, out: str, budget_s: float, margin_s: float,
               plot_every: float = 2.0):
    self.out = out
    self.budget_s = budget_s
    self.hard = budget_s - margin_s  # seconds since the process started
    self.plot_every = plot_every
    self.snap: dict = {"format": FORMAT, "status": "running",
                       "budget_s": budget_s, "doing": "starting"}
    self._lock = threading.Lock()  # the snapshot
    self._io = threading.RLock()  # the files
    self._version = 0
    self._written = -1
    self._plotted = -1
    self._last_plot = -math.inf
    self.finished = False
    self.log = None
    self._wakeup: int | None = None  # the pipe's read end

  def start(self) -> None:
    """Installs the signal handlers (main thread) and starts the watcher."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    self._wakeup = read
    for signum in SIGNALS:
      signal.signal(signum, lambda *_: None)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    os.makedirs(self.out, exist_ok=True)
    self.log = open(os.path.join(self.out, "log.txt"), "a", buffering=1)
    sys.stdout = _Tee(sys.__stdout__, self.log)
    sys.stderr = _Tee(sys.__stderr__, self.log)
    threading.Thread(target=self._watch, name="deadline", daemon=True).start()

  def update(self, change) -> None:
    """Applies ``change(snapshot)`` under the lock."""
    with self._lock:
      change(self.snap)
      self.snap["elapsed_s"] = _now()
      self._version += 1

  def set(self, **items) -> None:
    self.update(lambda s: s.update(items))

  def remaining(self) -> float:
    """Seconds to the soft deadline (when work must have ended)."""
    return self.hard - 2.0 - _now()

  def _watch(self) -> None:
    while True:
      signum = self._next_signal(0.2)
      if signum is not None:
        self.cut(f"stopped by {signal.Signals(signum).name} at "
                 f"{_now():.0f} s")
      if _now() >= self.hard:
        self.cut(f"hard deadline at {_now():.0f} s (budget "
                 f"{self.budget_s:.0f} s)")
      if self._version != self._written or (
          self._version != self._plotted and
          time.monotonic() - self._last_plot >= self.plot_every):
        try:
          self.write()
        except Exception:  # pylint: disable=broad-except
          traceback.print_exc()

  def _next_signal(self, timeout: float) -> int | None:
    """A stop signal that arrived, waiting at most ``timeout`` seconds."""
    ready, _, _ = select.select([self._wakeup], [], [], timeout)
    if not ready:
      return None
    try:
      got = os.read(self._wakeup, 512)
    except BlockingIOError:
      return None
    return next((b for b in got if b in SIGNALS), None)

  def write(self, final: bool = False) -> None:
    """Writes results.json, results.md, resume.json and (due) curves.png."""
    with self._io:
      if self.finished:
        return
      with self._lock:
        self.snap["elapsed_s"] = _now()
        snap = copy.deepcopy(self.snap)
        version = self._version
      due = final or time.monotonic() - self._last_plot >= self.plot_every
      if due and version != self._plotted:
        try:
          made = plot(snap, os.path.join(self.out, "curves.png"))
        except Exception:  # pylint: disable=broad-except
          traceback.print_exc()
          made = False
        snap["plot"] = made
        with self._lock:
          self.snap["plot"] = made
        self._plotted, self._last_plot = version, time.monotonic()
      _write_text(os.path.join(self.out, "results.json"),
                  json.dumps(snap))
      _write_text(os.path.join(self.out, "results.md"), report(snap) + "\n")
      _write_text(os.path.join(self.out, "resume.json"),
                  json.dumps(resume_archive(snap)))
      self._written = version

  def finish(self, status: str, reason: str | None = None) -> None:
    """The main thread's last write."""
    with self._io:
      self.set(status=status, reason=reason, doing="")
      self.write(final=True)
      self.finished = True
    sys.stdout.flush()

  def cut(self, reason: str) -> None:
    """Writes the files as they stand (``partial``) and exits with 0."""
    with self._io:
      if not self.finished:
        say(f"{reason}: writing the partial results and exiting")

        def cut_short(snap):
          snap.update(status="partial", reason=reason)
          for arm in (snap.get("arms") or {}).values():
            if arm.get("status") == "running":
              arm["status"] = "partial"
        self.update(cut_short)
        self._last_plot = -math.inf
        self.write(final=True)
        self.finished = True
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(0)  # pylint: disable=protected-access


class _Tee(io.TextIOBase):
  """A text stream writing to several (stdout and the log file)."""

  def __init__(self, *streams):
    super().__init__()
    self.streams = streams

  def write(self, s):
    for stream in self.streams:
      stream.write(s)
    return len(s)

  def flush(self):
    for stream in self.streams:
      stream.flush()


def say(*args) -> None:
  print(f"[{_now():6.1f} s]", *args, flush=True)


# --------------------------------------------------------------------------
# Packages and data


def ensure_packages(wheels: str, modules=("PIL", "matplotlib"),
                    target: str | None = None) -> dict:
  """Installs the wheels in ``wheels`` if one of ``modules`` is missing.

  Nothing is installed when all import (the target machine's image has
  Pillow and matplotlib, but nothing beyond jax, flax, optax, chex and orbax
  is assumed): the wheels go to a temporary folder with ``pip install
  --no-index --no-deps`` and that folder is put first on ``sys.path``.

  Args:
    wheels: the folder of ``.whl`` files.
    modules: the modules to import.
    target: where to install (default: a folder in the temporary
      directory).

  Returns:
    ``{module: "found" | "installed from WHEELS" | "missing"}``.
  """
  found = {m: importlib.util.find_spec(m) is not None for m in modules}
  wheel_files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
  if not all(found.values()) and wheel_files:
    target = target or os.path.join(tempfile.gettempdir(),
                                    "gaf_optax_wheels")
    say(f"missing {[m for m, ok in found.items() if not ok]}: installing "
        f"{len(wheel_files)} wheels from {wheels}/")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", target,
                    *wheel_files], check=False, timeout=180)
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    return {m: "found" if ok else (
        f"installed from {wheels}/" if importlib.util.find_spec(m)
        else "missing") for m, ok in found.items()}
  return {m: "found" if ok else "missing" for m, ok in found.items()}


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# --------------------------------------------------------------------------
# The benchmarks


def _versions() -> dict:
  out = {"python": platform.python_version()}
  for dist in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin",
               "libtpu", "flax", "optax", "chex", "orbax-checkpoint",
               "numpy", "pillow", "matplotlib"):
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def _device_info() -> dict:
  import jax
  dev = jax.devices()[0]
  kind = dev.device_kind
  info = {"kind": kind, "platform": jax.default_backend(),
          "count": jax.device_count(),
          "bandwidth_gbs": next((bw for name, bw in BANDWIDTH_GBS.items()
                                 if name in kind), None),
          "cpu_count": os.cpu_count()}
  try:
    stats = dev.memory_stats() or {}
    if "bytes_limit" in stats:
      info["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
  except Exception:  # pylint: disable=broad-except
    pass
  return info


def bench_optimizer(run: Run, params, cap_s: float, steps: int) -> dict:
  """experiments/benchmarks/optimizer.py's optimizers on ``params``' tree.

  Each optimizer's ``update + apply_updates`` (``param_trees.update_step``,
  the gradients given) runs ``steps`` times in one compiled loop per sample
  (an optimization barrier per step ties the gradients to the parameters,
  so nothing is hoisted out of the loop and steps do not fuse), so that the
  time is the device's, not the dispatch of ~200 arrays per call; samples
  are interleaved over the optimizers, round by round, until ``cap_s``
  (or 30 rounds). An optimizer whose compile and warm-up (as long as the
  last one's) would pass the cap is not run.
  """
  import jax
  import jax.numpy as jnp
  from experiments.benchmarks import optimizer as opt_bench
  from experiments.benchmarks import param_trees
  end = min(_now() + cap_s, run.hard - 10.0)
  nbytes = lambda t: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  grads = jax.tree.unflatten(treedef, [
      1e-2 * jax.random.normal(k, x.shape, x.dtype)
      for k, x in zip(keys, leaves)])
  rows, runs, cost = [], {}, 0.0
  for name, opt in opt_bench.optimizers().items():
    if _now() + cost > end:  # the last one's compile and warm-up
      rows.append({"optimizer": name, "status": "not run (time cap)"})
      continue
    started = _now()
    step = param_trees.update_step(opt)

    def loop(p, s, g, step=step):
      def body(_, carry):
        g_i, _ = jax.lax.optimization_barrier((g, carry[0]))
        return step(carry[0], carry[1], g_i)
      return jax.lax.fori_loop(0, steps, body, (p, s))

    p = jax.tree.map(jnp.copy, params)
    s = opt.init(p)
    t0 = time.perf_counter()
    fn = jax.jit(loop, donate_argnums=(0, 1)).lower(p, s, grads).compile()
    compile_s = time.perf_counter() - t0
    p, s = jax.block_until_ready(fn(p, s, grads))  # warm-up
    runs[name] = {"fn": fn, "p": p, "s": s, "times": [],
                  "compile_s": compile_s, "state": nbytes(s)}
    rows.append({"optimizer": name})
    cost = _now() - started
  rounds = 0
  while runs and rounds < 30 and (_now() < end or rounds < 3):
    for r in runs.values():
      t0 = time.perf_counter()
      r["p"], r["s"] = jax.block_until_ready(r["fn"](r["p"], r["s"], grads))
      r["times"].append((time.perf_counter() - t0) / steps)
    rounds += 1
  device = run.snap["device"]
  p_bytes = nbytes(params)
  base = None
  for row in rows:
    r = runs.get(row["optimizer"])
    if r is None:
      continue
    median = statistics.median(r["times"])
    traffic = 3 * p_bytes + 2 * r["state"]  # params r+w, grads r, state r+w
    gb_s = traffic / median / 1e9
    base = base or median  # optax.sgd + decay comes first
    row.update(compile_s=r["compile_s"], median_ms=1e3 * median,
               min_ms=1e3 * min(r["times"]), samples=len(r["times"]),
               state_mib=r["state"] / 2**20, traffic_mb=traffic / 1e6,
               gb_s=gb_s, vs_sgd=median / base,
               pct_peak=(100 * gb_s / device["bandwidth_gbs"]
                         if device.get("bandwidth_gbs") else None))
  n = sum(x.size for x in jax.tree.leaves(params))
  return {"status": "done", "rows": rows, "rounds": rounds,
          "what": (f"One update + apply (experiments/benchmarks/"
                   f"optimizer.py's optimizers) on the model's parameter "
                   f"tree ({n:,} float32 parameters), parameters and state "
                   f"donated, gradients given; {steps} steps per sample in "
                   f"one compiled loop, the median of {rounds} interleaved "
                   "samples. Least traffic: parameters read and written, "
                   "gradients read, optimizer state read and written; GB/s "
                   "is that over the step time.")}


def bench_train_step(run: Run, model: str, batch: int, steps: int,
                     cap_s: float) -> dict:
  """experiments/benchmarks/models.py's train step in bf16, then float32."""
  from experiments.benchmarks import models as model_bench
  end = min(_now() + cap_s, run.hard - 10.0)
  rows, cost = [], 0.0
  for dtype in ("bfloat16", "float32"):
    # float32 starts if 3/4 of the bfloat16 leg's time fits: that leg also
    # paid the device's first-use costs (libraries, autotuner).
    if _now() + 0.75 * cost > end:
      rows.append({"dtype": dtype, "status": "not run (time cap)"})
      continue
    t0 = _now()
    (res,) = model_bench.main(["--model", model, "--batch", str(batch),
                               "--steps", str(steps), "--dtype", dtype])
    cost = _now() - t0
    rows.append({k: res[k] for k in ("dtype", "compile_s", "median_step_s",
                                     "min_step_s", "images_per_s",
                                     "loss")})
  return {"status": "done", "rows": rows,
          "what": (f"`Trainer.train_step` of {model} (experiments/"
                   f"benchmarks/models.py), optax.sgd momentum 0.9, a fixed "
                   f"random batch of {batch}, the median of {steps} steps "
                   "after the compiling one.")}


# --------------------------------------------------------------------------
# The arms


class Arms:
  """Builds, compiles (in background threads) and trains the arms."""

  def __init__(self, run: Run, ds, setting, seeds, precision, workers):
    from experiments import reproduce
    self.reproduce = reproduce
    self.run, self.ds, self.setting = run, ds, setting
    self.seeds, self.precision = list(seeds), precision
    self.pool = concurrent.futures.ThreadPoolExecutor(
        max(1, workers), thread_name_prefix="compile")
    self.futures: dict[str, tuple] = {}

  def submit(self, arm: str, epochs: int) -> None:
    """Builds ``arm``'s trainer for ``epochs`` and compiles it, queued."""
    def build():
      trainer = self.reproduce.make_arm(self.setting, arm, self.ds, epochs, 0,
                                        self.precision)
      return trainer, trainer.compile_seeds(self.seeds)
    self.futures[arm] = (self.pool.submit(build), _now(), epochs)

  def wait(self, arm: str):
    """``(trainer, compile seconds)``, or None at the soft deadline."""
    future = self.futures[arm][0]
    while True:
      try:
        return future.result(timeout=max(0.05, min(1.0,
                                                    self.run.remaining())))
      except concurrent.futures.TimeoutError:
        if self.run.remaining() <= 0:
          return None

  def train(self, arm: str, trainer, epochs: int, compile_s: float,
            on_first_epoch=None) -> str:
    """Trains ``arm``; returns ``"done"``, ``"partial"`` or ``"restart"``."""
    device = self.run.snap["device"]["kind"]
    self.run.update(lambda s: s["arms"].__setitem__(arm, {
        "status": "running", "epochs": epochs, "epochs_done": 0,
        "compile_s": compile_s, "epoch_s": [], "device": device,
        "seeds": self.seeds, "test_accuracy": [], "test_loss": [],
        "train_loss": [], "train_accuracy": [], "step_loss": []}))
    self.run.set(doing=f"`{arm}` epoch 1/{epochs}")
    last = [_now()]
    outcome = ["done"]

    def on_epoch(epoch, record):
      t = _now()
      dt, last[0] = t - last[0], t

      def change(s):
        a = s["arms"][arm]
        a["epochs_done"] = epoch
        a["epoch_s"].append(dt)
        for k in ("test_accuracy", "test_loss", "train_loss",
                  "train_accuracy"):
          a[k].append([float(x) for x in record[k]])
        a["step_loss"].append([[float(x) for x in row]
                               for row in record["steps"]["loss"]])
        s["doing"] = f"`{arm}` epoch {epoch + 1}/{epochs}"
      self.run.update(change)
      acc = [100 * float(x) for x in record["test_accuracy"]]
      say(f"{arm} epoch {epoch}/{epochs}: test acc {mean_std(acc, 2)} "
          f"({dt:.1f} s)")
      if on_first_epoch is not None and epoch == 1:
        if on_first_epoch(dt):
          outcome[0] = "restart"
          return True
      if epoch < epochs and dt * 1.1 > self.run.remaining():
        outcome[0] = "partial"
        say(f"{arm}: epoch {epoch + 1} would pass the deadline; stopping")
        return True
      return False

    trainer.fit_seeds(self.seeds, on_epoch=on_epoch)
    status = {"done": "done", "partial": "partial",
              "restart": "restarted"}[outcome[0]]
    self.run.update(lambda s: s["arms"][arm].update(status=status))
    return outcome[0]


def _prior(bench: dict, spe: int, seeds: int, num_test: int,
           mode: Mode) -> tuple[float, float, str]:
  """(compile s, epoch s, how) for the first arm's epochs."""
  rows = [r for r in (bench.get("train_step") or {}).get("rows", [])
          if "median_step_s" in r]
  if rows:
    r = rows[0]
    epoch_s = seeds * (spe * r["median_step_s"] +
                       num_test / (3 * r["images_per_s"]))
    return (2.0 * r["compile_s"], epoch_s,
            f"prior from the {r['dtype']} train-step benchmark")
  return mode.prior[0], mode.prior[1], "default prior"


def main(argv=None) -> int:
  p = cli.parser(__doc__)
  p.add_argument("--out", required=True,
                 help="the output folder (e.g. $OUT); at most 5 files")
  p.add_argument("--budget-seconds", type=float, default=540.0,
                 help="wall time from the process's start to its end")
  p.add_argument("--data", default=os.path.join("data",
                                                "cifar10-jpeg.tar.gz"))
  p.add_argument("--wheels", default="wheels",
                 help="wheels installed (--no-index) only if an import fails")
  p.add_argument("--cache-dir", default=os.path.join("runs", "jax_cache"),
                 help="persistent compilation cache (unless "
                 "JAX_COMPILATION_CACHE_DIR is set)")
  p.add_argument("--resume", default=None,
                 help="an earlier run's resume.json: its plan is kept and "
                 "its finished arms and benchmarks are not run again")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--arms", default=",".join(a for g in GROUPS for a in g),
                 help="arms in priority order")
  p.add_argument("--epochs", type=int, default=None,
                 help="epochs per arm (default: planned from measurements)")
  p.add_argument("--benchmark-seconds", type=float, default=None,
                 help="cap of each benchmark (default: min(60, budget/9))")
  p.add_argument("--compile-workers", type=int, default=None,
                 help="background compile threads (default: cores // 4, "
                 "1 to 4)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny sizes (a 2x64 MLP, 640 images), same code")
  args = p.parse_args(argv)
  for name in ("budget_seconds", "seeds"):
    if getattr(args, name) <= 0:
      p.error(f"--{name.replace('_', '-')} must be positive; got "
              f"{getattr(args, name)}")
  if args.epochs is not None and args.epochs < 1:
    p.error(f"--epochs must be >= 1; got {args.epochs}")
  if not os.path.isfile(args.data):
    p.error(f"--data {args.data!r} does not exist: copy the CIFAR-10 JPEG "
            "archive there first (experiments/README.md, 'One "
            "accelerator')")
  known = [a for g in GROUPS for a in g]
  unknown = sorted(set(args.arms.split(",")) - set(known))
  if unknown:
    p.error(f"--arms: unknown {unknown}; known: {', '.join(known)}")
  archive = None
  if args.resume:
    with open(args.resume) as f:
      archive = json.load(f)
    if archive.get("format") != FORMAT:
      p.error(f"--resume {args.resume!r} is not a resume.json of this "
              f"script (format {archive.get('format')!r})")
  mode = SMOKE if args.smoke else FULL
  run = Run(args.out, args.budget_seconds, mode.margin_s)
  run.start()
  try:
    return _main(args, argv, mode, run, archive)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    run.finish("partial", f"failed: {type(e).__name__}: {e}")
    return 1


def _main(args, argv, mode: Mode, run: Run, archive) -> int:
  command = " ".join(["python -m experiments.accelerator",
                      *map(shlex.quote, sys.argv[1:] if argv is None
                           else argv)])
  run.set(command=command, arms={}, benchmarks={}, phases={},
          earlier_runs=(archive or {}).get("earlier_runs", []))

  def phase(name, seconds):
    run.update(lambda s: s["phases"].__setitem__(name, seconds))

  say(command)
  packages = ensure_packages(args.wheels)
  if packages.get("PIL") == "missing":
    raise RuntimeError("Pillow is needed to decode the JPEG archive; put "
                       f"its wheel in {args.wheels}/ (experiments/README.md)")
  t0 = _now()
  import jax
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.abspath(args.cache_dir))
  from experiments import reproduce
  from gaf_optax import data
  from gaf_optax import models
  imports_s = _now() - t0
  # The data next, before the device starts. The library's decoding
  # processes are spawned, not forked, so JAX imported here is no hazard.
  t0 = _now()
  workers = min(16, os.cpu_count() or 1)
  train_size, test_size = mode.sizes or (None, None)
  ds = data.get("folder:" + args.data, train_size=train_size,
                test_size=test_size, decode_workers=workers)
  digest = _sha256(args.data)
  data_info = {"path": args.data, "sha256": digest,
               "num_train": ds.num_train, "num_test": ds.num_test,
               "seconds": _now() - t0, "workers": workers}
  say(f"data: {data_info}" + ("" if digest == CIFAR_SHA256 or args.smoke
                              else " (not the documented CIFAR-10 archive)"))

  t0 = _now()
  versions = _versions()
  device = _device_info()
  say(f"versions: {versions}; packages: {packages}")
  say(f"device: {device}")
  setting = (reproduce.Setting(model="mlp", batch_size=32, smoke=True,
                               model_kwargs=(("features", (64, 64)),))
             if args.smoke else reproduce.Setting())
  precision = "f32" if device["platform"] == "cpu" else "bf16"
  model = models.get(setting.model, num_classes=ds.num_classes,
                     **dict(setting.model_kwargs))
  seeds = list(range(args.seeds))
  setting_info = {"model": setting.model, "model_kwargs": [
      list(kv) for kv in setting.model_kwargs],
                  "params": models.num_params(model, (1, *ds.image_shape)),
                  "batch_size": setting.batch_size, "precision": precision,
                  "num_train": ds.num_train, "num_test": ds.num_test,
                  "seeds": seeds, "smoke": bool(args.smoke)}
  setting_info = json.loads(json.dumps(setting_info))  # as stored
  if archive is not None and archive.get("setting") != setting_info:
    say(f"--resume {args.resume!r} was made with another setting: "
        f"{archive.get('setting')} (now {setting_info})")
    run.finish("partial", f"--resume {args.resume} has another setting")
    return 2
  phase("data", data_info["seconds"])
  phase("start (imports, device)", imports_s + _now() - t0)
  run.set(versions=versions, device=device, data=data_info,
          setting=setting_info, descriptions=reproduce.ARMS,
          papers={k: list(v) for k, v in reproduce.PAPERS.items()},
          packages=packages)

  # The benchmarks (skipped when the archive has them).
  cap = args.benchmark_seconds or min(60.0, args.budget_seconds / 9)
  done_bench = (archive or {}).get("benchmarks", {})
  for key, fn in (
      ("optimizer", lambda: bench_optimizer(
          run, _random_params(model, ds.image_shape), cap,
          mode.optimizer_steps)),
      ("train_step", lambda: bench_train_step(
          run, setting.model, setting.batch_size, mode.bench_steps, cap))):
    if key in done_bench:
      run.update(lambda s, key=key: s["benchmarks"].__setitem__(
          key, {**done_bench[key], "status": "done"}))
      say(f"benchmark {key}: from {args.resume}")
      continue
    t0 = _now()
    run.set(doing=f"benchmark {key}")
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      result = {"status": f"failed: {type(e).__name__}: {e}"}
    run.update(lambda s, key=key, result=result: s["benchmarks"].__setitem__(
        key, result))
    phase(f"benchmark {key}", _now() - t0)
    say(f"benchmark {key}: {_now() - t0:.1f} s")

  # The arms.
  t_train = _now()
  plan = (archive or {}).get("plan")
  arm_names = ([*plan["arms"], *plan.get("dropped", [])] if plan
               else [a for a in args.arms.split(",") if a])
  done_arms = (archive or {}).get("arms", {})
  for arm, a in done_arms.items():
    run.update(lambda s, arm=arm, a=a: s["arms"].__setitem__(
        arm, {**a, "status": "resumed"}))
    say(f"{arm}: resumed from {args.resume} ({a['epochs_done']} epochs on "
        f"{a.get('device')})")
  spe = data.steps_per_epoch(ds, setting.batch_size)
  workers = args.compile_workers or max(1, min(4, (os.cpu_count() or 1) // 4))
  arms = Arms(run, ds, setting, seeds, precision, workers)
  todo = [a for a in (plan["arms"] if plan else arm_names)
          if a not in done_arms]
  state = {"epochs": None, "planned": None}
  if plan:
    state["epochs"], state["planned"] = plan["epochs"], list(todo)
    run.set(plan=plan)
  else:
    c, e, how = _prior(run.snap["benchmarks"], spe, len(seeds), ds.num_test,
                       mode)
    e0, _ = plan_epochs(arm_groups(todo), run.remaining(), c, e, workers,
                        mode.bounds)
    state["epochs"] = args.epochs or max(1, e0)
    say(f"first arm: {state['epochs']} epochs ({how}: compile {c:.1f} s, "
        f"epoch {e:.1f} s)")
  queue = list(todo)
  if state["planned"] is not None:
    for arm in queue:
      arms.submit(arm, state["epochs"])
  elif queue:
    arms.submit(queue[0], state["epochs"])

  def calibrate(arm, compile_s):
    """The plan, from ``arm``'s measured compile and first epoch."""
    def on_first_epoch(epoch_s):
      groups = arm_groups(queue)
      d = decide(groups, run.remaining(), compile_s, epoch_s, workers,
                 mode.bounds, state["epochs"], fixed=args.epochs is not None)
      planned = [a for g in groups[:d["groups"]] for a in g]
      dropped = [a for a in queue if a not in planned]
      why = (f"Measured: compile {compile_s:.1f} s, epoch {epoch_s:.1f} s; "
             f"keeping the first arm's {state['epochs']} epochs fits "
             f"{d['keep'][1]} group(s), a restart {d['best'][0]} epochs for "
             f"{d['best'][1]} group(s): "
             + ("restarted." if d["restart"] else "kept."))
      say(f"plan: {d['epochs']} epochs, arms {planned}; {why}")
      state["epochs"], state["planned"] = d["epochs"], planned
      new = {"epochs": d["epochs"], "arms": planned, "dropped": dropped,
             "why": why, "seeds": seeds, "compile_workers": workers,
             "calibration": {"arm": arm, "compile_s": compile_s,
                             "epoch_s": epoch_s,
                             "first_epochs": d["keep"][0]}}
      run.set(plan=new)
      for other in planned:
        if other != arm or d["restart"]:
          arms.submit(other, d["epochs"])
      return d["restart"]
    return on_first_epoch

  stopped = None
  i = 0
  while i < len(queue):
    arm = queue[i]
    planned = state["planned"]
    if planned is not None and arm not in planned:
      i += 1
      continue
    epochs = state["epochs"]
    est = (run.snap.get("plan") or {}).get("calibration") or {}
    epoch_s = max([est.get("epoch_s", 0.0)] + [
        statistics.median(a["epoch_s"])
        for a in run.snap["arms"].values() if a.get("epoch_s")])
    # A group (Swish and NSwish) starts only if all of it fits.
    group = next(g for g in arm_groups(queue) if arm in g)
    left = [a for a in group if a == arm or a not in run.snap["arms"]]
    if planned is not None and len(left) * epoch_s * epochs > (
        run.remaining()):
      stopped = (f"deadline: {' + '.join('`%s`' % a for a in left)} "
                 f"({epochs} epochs of ~{epoch_s:.1f} s each) would not end "
                 "before it")
      break
    run.set(doing=f"compiling `{arm}`")
    if arm not in arms.futures:  # a calibration arm after a failed one
      arms.submit(arm, epochs)
    got = arms.wait(arm)
    if got is None:
      stopped = f"deadline while compiling `{arm}`"
      break
    trainer, compile_s = got
    say(f"{arm}: compiled in {compile_s:.1f} s")
    hook = calibrate(arm, compile_s) if planned is None else None
    try:
      outcome = arms.train(arm, trainer, epochs, compile_s, hook)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      run.update(lambda s, arm=arm, e=e: s["arms"].setdefault(arm, {}).update(
          status="failed", note=f"{type(e).__name__}: {str(e)[:200]}"))
      outcome = "failed"
    if outcome == "restart":
      continue  # the same arm, at the plan's epochs
    if outcome == "partial":
      stopped = f"deadline: `{arm}` stopped before its last epoch"
      break
    i += 1
  phase("arms", _now() - t_train)
  not_run = [a for a in arm_names if a not in run.snap["arms"]]
  for arm in not_run:
    run.update(lambda s, arm=arm: s["arms"].__setitem__(arm, {
        "status": "not run", "epochs": state["epochs"], "epochs_done": 0}))
  bench_ok = all(v.get("status") == "done"
                 and not any("status" in r for r in v.get("rows", []))
                 for v in run.snap["benchmarks"].values())
  if stopped is None and not not_run and bench_ok and all(
      a.get("status") in ("done", "resumed")
      for a in run.snap["arms"].values()):
    run.finish("complete")
  else:
    reasons = [stopped] if stopped else []
    if not_run:
      reasons.append("not run: " + ", ".join(f"`{a}`" for a in not_run))
    failed = [a for a, v in run.snap["arms"].items()
              if v.get("status") == "failed"]
    if failed:
      reasons.append("failed: " + ", ".join(f"`{a}`" for a in failed))
    if not bench_ok:
      reasons.append("a benchmark did not run in full")
    run.finish("partial", "; ".join(reasons))
  reason = run.snap.get("reason")
  say(f"done: {run.snap['status']}" + (f" ({reason})" if reason else "")
      + f"; {_now():.1f} s of {args.budget_seconds:.0f} s")
  return 0


def _random_params(model, image_shape):
  """A random tree in the shapes of ``model``'s parameters (benchmarks)."""
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


if __name__ == "__main__":
  code = cli.run(main)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access
