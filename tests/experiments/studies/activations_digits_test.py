"""Deep-MLP activation sweep (digits) smoke test, through the trainer."""

import numpy as np

from experiments.studies import activations_digits


def test_smoke_prints_a_row_per_arm_and_lr(capsys):
  activations_digits.main(["--smoke"])
  out = capsys.readouterr().out
  assert "python -m experiments.studies.activations_digits --smoke" in out
  for study in activations_digits.SMOKE:
    for arm in study.arms:
      assert f"| {arm.name} | {study.lrs[0]:g} | " in out


def test_train_returns_seed_by_lr_arrays_from_one_start():
  arm = activations_digits.Arm("tanh", "gaaf", 0.5)
  m = activations_digits.train(arm, (0, 1), (0.01, 0.1), depth=3, width=8,
                               steps=3, fast_compile=True)
  assert {k: v.shape for k, v in m.items()} == {
      k: (2, 2) for k in ("first_loss", "train_loss", "test_loss",
                          "test_acc")}
  # The learning rate does not change the loss before the first update...
  np.testing.assert_allclose(m["first_loss"][:, 0], m["first_loss"][:, 1],
                             rtol=1e-6)
  # ...the seed does.
  assert m["first_loss"][0, 0] != m["first_loss"][1, 0]
  assert np.all(m["train_loss"][:, 1] != m["train_loss"][:, 0])
