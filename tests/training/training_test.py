"""The training system: devices, processes, resumption, errors."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from experiments.configs import default
from gaf_optax import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _config(**overrides):
  c = default.get_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.model_kwargs.features = (32, 32)
  c.augment = False
  c.batch_size = 64
  c.eval_batch_size = 512
  c.num_epochs = 2
  c.learning_rate = 0.05
  c.num_devices = 1  # tests that shard pass their own mesh
  c.progress = False
  c.tensorboard = False
  c.log_to_stdout = False
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for part in path:
      target = target[part]
    target[leaf] = value
  return c


def _losses(config, mesh, steps=6):
  trainer = training.Trainer.from_config(config, mesh)
  out = []
  for i, batch in enumerate(trainer.train_batches(0)):
    if i == steps:
      break
    out.append(float(trainer.train_step(batch)["loss"]))
  return np.array(out), trainer.state


@pytest.mark.parametrize("overrides", [
    {},
    {"act": "nrelu", "amplification.enabled": True, "optimizer": "sgd_gaf"},
    {"model_kwargs.dropout_rate": 0.3},  # same masks on 1 and 8 devices
])
def test_one_and_eight_devices_give_the_same_losses(overrides):
  config = _config(**overrides)
  one, s1 = _losses(config, training.make_mesh(1))
  eight, s8 = _losses(config, training.make_mesh(8))
  # Same global batch; only the reduction order of the gradient all-reduce
  # differs, so float32 rounding is the only difference.
  np.testing.assert_allclose(eight, one, rtol=2e-5)
  assert one[-1] < one[0]
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert len(jax.tree.leaves(s8.params)[0].sharding.device_set) == 8


def test_dropout_runs_are_reproducible_and_differ_from_no_dropout():
  mesh = training.make_mesh(1)
  plain, _ = _losses(_config(), mesh, steps=3)
  dropped, _ = _losses(_config(**{"model_kwargs.dropout_rate": 0.3}), mesh,
                       steps=3)
  again, _ = _losses(_config(**{"model_kwargs.dropout_rate": 0.3}), mesh,
                     steps=3)
  np.testing.assert_array_equal(dropped, again)
  assert not np.allclose(dropped, plain, rtol=1e-4)


def _strip_timing(records):
  drop = ("epoch_seconds", "images_per_second")
  return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  # Stateful activation (ANAct batch_stats), the amplification controller
  # and momentum all live in the checkpoint; the data order is (seed, epoch).
  config = _config(**{"act": "nrelu", "amplification.enabled": True,
                      "amplification.selection": "delta",
                      "checkpoint_every_steps": 9, "num_epochs": 3})
  full = training.train_and_evaluate(config, str(tmp_path / "full"))
  work = str(tmp_path / "resumed")
  part = training.train_and_evaluate(config, work, max_steps=31)
  assert len(part["records"]) == 1  # epoch 1 done; stopped inside epoch 2
  assert training.Checkpointer(work).all_steps()[-1] == 27
  resumed = training.train_and_evaluate(config, work)
  assert _strip_timing(resumed["records"]) == _strip_timing(full["records"])
  assert _strip_timing(training.read_records(
      os.path.join(work, "metrics.jsonl"))) == _strip_timing(full["records"])
  for a, b in zip(jax.tree.leaves(full["state"]),
                  jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(a, b)


def test_damaged_checkpoint_is_a_clear_error_and_earlier_ones_are_kept(
    tmp_path):
  config = _config(checkpoint_every_steps=10, num_epochs=1)
  work = str(tmp_path / "run")
  training.train_and_evaluate(config, work, max_steps=20)
  ckpt = training.Checkpointer(work)
  assert ckpt.all_steps() == [10, 20]
  latest = os.path.join(ckpt.directory, "20")
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(ValueError, match=r"step 20 .* could not be restored.*"
                     r"Earlier checkpoints are kept: \[10\]"):
    training.train_and_evaluate(config, work)
  assert os.path.isdir(os.path.join(ckpt.directory, "10"))
  # The documented way out: resume from the earlier step.
  config.restore_step = 10
  summary = training.train_and_evaluate(config, work)
  assert summary["records"][-1]["step"] == 21


@pytest.mark.parametrize("field, value, match", [
    ("optimizer", "lion", "Unknown optimizer 'lion'; known: adam, adam_gaf"),
    ("act", "mish", "Unknown activation 'mish'; known: gaaf_relu"),
    ("model", "resnet9", "Unknown model 'resnet9'; known models: "),
    ("schedule", "linear", "Unknown schedule 'linear'"),
    ("batch_size", 60, r"batch_size=60 must be divisible by the number of "
     r"devices \(8\)"),
])
def test_config_errors_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    training.Trainer.from_config(_config(**{field: value, "num_devices": 8}))


def test_gaaf_amplitude_only_for_gaaf():
  with pytest.raises(ValueError, match="gaaf_amplitude applies to"):
    training.get_activation("relu", amplitude=0.5)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, pid, out, devices, sharding = sys.argv[1:]
    pid, devices = int(pid), int(devices)
    jax.config.update("jax_num_cpu_devices", devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    sys.path.insert(0, {repo!r})
    from jax.sharding import PartitionSpec as P
    from tests.training.training_test import _config
    from gaf_optax import training
    config = _config(**{{"distributed.coordinator_address": f"127.0.0.1:{{port}}",
                        "distributed.num_processes": 2,
                        "num_devices": None,
                        "distributed.process_id": pid,
                        "sharding": sharding, "fsdp_min_bytes": 0}})
    training.initialize_distributed(config)
    assert jax.process_count() == 2 and jax.device_count() == 2 * devices
    trainer = training.Trainer.from_config(config)
    kernel = trainer.state.params["fc1"]["kernel"]
    if sharding == "fsdp":  # split over both processes' devices
      assert kernel.sharding.spec == P("data", None), kernel.sharding
      assert len(kernel.addressable_shards) == devices
    losses = []
    for i, batch in enumerate(trainer.train_batches(0)):
      if i == 6:
        break
      assert batch["image"].shape[0] == 32  # this process's half
      losses.append(float(trainer.train_step(batch)["loss"]))
    acc = trainer.evaluate()["test_accuracy"]
    json.dump({{"losses": losses, "acc": acc}}, open(out, "w"))
    jax.distributed.shutdown()
""")


@pytest.mark.parametrize("devices, sharding", [(2, "replicated"),
                                               (4, "fsdp")])
def test_two_processes_match_one_process(tmp_path, devices, sharding):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER.format(repo=REPO))
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(
      [sys.executable, str(script), port, str(i), str(tmp_path / f"{i}.json"),
       str(devices), sharding],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outputs.append(out.decode()[-3000:])
  assert all(p.returncode == 0 for p in procs), outputs
  results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
  assert results[0] == results[1]  # both see the same global values
  one, _ = _losses(_config(), training.make_mesh(2 * devices))
  np.testing.assert_allclose(results[0]["losses"], one, rtol=2e-5)


def test_half_precision_computes_in_bf16_and_keeps_f32_params():
  trainer = training.Trainer.from_config(_config(half_precision=True),
                                        training.make_mesh(1))
  batch = next(iter(trainer.train_batches(0)))
  loss = float(trainer.train_step(batch)["loss"])
  assert np.isfinite(loss) and 1.5 < loss < 3.5
  assert {x.dtype for x in jax.tree.leaves(trainer.state.params)} == {
      np.dtype("float32")}
  hlo = trainer._train_step.lower(trainer.state, trainer._global(batch))
  assert "bf16" in hlo.as_text()


@pytest.mark.parametrize("optimizer,position", [
    ("sgd", None), ("adam", None), ("clip_norm", None),
    ("sgd_gaf", "momentum"), ("sgd_gaf", "gradient"), ("adam_gaf", None)])
def test_weight_decay_can_exclude_biases_and_norm_parameters(optimizer,
                                                             position):
  params = {"dense": {"kernel": np.ones((3, 2), np.float32),
                      "bias": np.ones(2, np.float32)},
            "bn": {"scale": np.ones(2, np.float32)}}
  zeros = jax.tree.map(np.zeros_like, params)
  for exclude in (False, True):
    config = _config(optimizer=optimizer, weight_decay=0.1,
                     decay_bn_and_bias=not exclude)
    if position is not None:
      config.gaf.position = position
    tx, _ = training.build_optimizer(config, steps_per_epoch=10,
                                     params=params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)
    for leaf in (updates["dense"]["bias"], updates["bn"]["scale"]):
      assert np.all(np.asarray(leaf) == 0) == exclude, (optimizer, exclude)


def test_schedules():
  c = _config(schedule="cosine", warmup_epochs=1, num_epochs=4,
              learning_rate=0.4)
  sched = training.build_schedule(c, steps_per_epoch=10)
  np.testing.assert_allclose(
      [sched(0), sched(5), sched(10), sched(25), sched(40)],
      [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6)
  c = _config(schedule="step", decay_epochs=(2, 3), decay_factor=0.1,
              learning_rate=1.0, num_epochs=4)
  sched = training.build_schedule(c, steps_per_epoch=10)
  np.testing.assert_allclose([sched(19), sched(20), sched(30)],
                             [1.0, 0.1, 0.01], rtol=1e-6)
