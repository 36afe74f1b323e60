"""The Python examples of the README and the documentation run as written.

An example is the first python code block after a ``<!-- test:NAME -->``
marker in README.md or a page under docs/.
"""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(__file__))


def _block(marker: str) -> str:
  pages = [os.path.join(REPO, "README.md")] + sorted(
      p for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                           recursive=True) if "_build" not in p)
  found = [open(p).read() for p in pages
           if f"<!-- {marker} -->" in open(p).read()]
  assert len(found) == 1, f"marker {marker} in {len(found)} pages"
  after = found[0].split(f"<!-- {marker} -->", 1)[1]
  return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_python_trainer_example_trains_digits_and_writes_its_files(
    tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_block("test:python-trainer"), "README.md", "exec"),  # pylint: disable=exec-used
       namespace)
  summary = namespace["summary"]
  assert summary["best_test_accuracy"] > 0.9
  assert f"{summary['best_test_accuracy']}" in capsys.readouterr().out
  assert [r["epoch"] for r in summary["records"]] == list(range(1, 11))
  steps = len(summary["step_loss"])
  assert summary["telemetry"]["step"] == list(range(10, steps + 1, 10))
  assert 0 <= min(summary["telemetry"]["gaf_saturated"])
  for name in ("metrics.jsonl", "telemetry.jsonl", "checkpoints",
               "tensorboard"):
    assert os.path.exists(tmp_path / "runs" / "digits" / name), name


def _run(marker):
  namespace = {}
  exec(compile(_block(marker), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_nnx_loop_example_trains_and_amplifies():
  import flax  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  if tuple(int(p) for p in flax.__version__.split(".")[:2]) < (0, 11):
    pytest.skip("the README shows nnx.Optimizer.update(model, grads), "
                "Flax >= 0.11's signature")
  ns = _run("test:nnx-loop")
  losses = ns["losses"]
  assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
  factors = ns["gaf_optax"].amplification_factors(ns["optimizer"].opt_state)
  assert sorted(set(factors.tolist())) == [1.0, 2.0]  # epoch 2: amplified
  assert ns["model"].use_running_average  # eval() reached the bridge


def test_linen_loop_example_trains_and_amplifies():
  ns = _run("test:linen-loop")
  losses = ns["losses"]
  assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
  factors = ns["gaf_optax"].amplification_factors(ns["opt_state"])
  assert sorted(set(factors.tolist())) == [1.0, 2.0]


def test_pmap_loop_example_keeps_every_replica_identical():
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  ns = _run("test:pmap-loop")
  losses = ns["losses"]
  assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
  for leaf in jax.tree.leaves((ns["params"], ns["state"], ns["opt_state"])):
    assert leaf.shape[0] == jax.local_device_count()
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
  factors = ns["gaf_optax"].amplification_factors(ns["opt_state"])
  assert 2.0 in np.asarray(factors)  # amplifying from epoch 1 on


def test_shard_map_example_steps_as_the_pmap_loop_does():
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pytest  # pylint: disable=import-outside-toplevel
  if not hasattr(jax, "shard_map"):
    pytest.skip("the page shows jax.shard_map (jax >= 0.7)")
  ns = _run("test:pmap-loop")
  pmap_step = ns["train_step"]
  start = (ns["params"], ns["state"], ns["opt_state"])
  exec(compile(_block("test:shard-map-step"), "flax.md", "exec"), ns)  # pylint: disable=exec-used
  # The same 20 steps through the pmap loop, from the same state.
  params, state, opt_state = start
  x, y, shard = ns["x"], ns["y"], ns["shard"]
  for i in range(0, 1280, 64):
    params, state, opt_state, _ = pmap_step(
        params, state, opt_state, shard(x[i:i + 64]), shard(y[i:i + 64]))
  for a, b in zip(jax.tree.leaves((ns["params"], ns["state"],
                                   ns["opt_state"])),
                  jax.tree.leaves((params, state, opt_state)), strict=True):
    np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-5)
