"""The trainer, and gaf_optax's optimizers, with models that know nothing of
gaf_optax: a Linen MLP and an NNX CNN as a user writes them, each trained
by ``Trainer`` and by a hand-written loop over the same batches, keys and
optimizer, which must agree step by step."""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gaf_optax
from gaf_optax import data
from gaf_optax import training

SEED = 0
BATCH = 64


@pytest.fixture(scope="module")
def digits():
  return data.get("digits")


def _normalise(ds, images):
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(ds.mean, jnp.float32)) / jnp.asarray(ds.std,
                                                              jnp.float32)


def _loss(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels))


def _accuracy(logits, labels):
  return float(np.mean(np.argmax(np.asarray(logits), -1) ==
                       np.asarray(labels)))


def _dropout_key(step):
  """The key the trainer's step ``step`` gives a model's dropout."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(SEED),
                                               step), 1)


def _batches(ds, num_epochs):
  return data.batches(ds.train, BATCH, seed=SEED, epoch=0,
                      num_epochs=num_epochs)


def _fit(model, tx, ds, num_epochs):
  trainer = training.Trainer(model, tx, ds, batch_size=BATCH,
                             num_epochs=num_epochs, seed=SEED,
                             mesh=training.make_mesh(1))
  start = jax.device_get(trainer.state)
  summary = trainer.fit(progress=False, log_to_stdout=False)
  return trainer, start, summary


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


# ------------------------------------------------------------------ Linen


class MLP(nn.Module):
  """The plainest Linen model: no train flag, no state."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


class NormMLP(nn.Module):
  """Flax's examples' convention: ``train`` (here positional-or-keyword),
  BatchNorm and Dropout; it also sows an intermediate, which is no state
  (not mutable in the trainer's step)."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Dense(32)(x.reshape(x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    self.sow("intermediates", "hidden", x)
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(10)(x)


class DropoutMLP(nn.Module):
  """Flax's layers' convention: a keyword-only ``deterministic``."""

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(nn.Dropout(0.2, deterministic=deterministic)(x))


_LINEN = {  # the model, and how the hand-written loop calls it
    "plain": (MLP, lambda train: {}),
    "train": (NormMLP, lambda train: {"train": train}),
    "deterministic": (DropoutMLP, lambda train: {"deterministic": not train}),
}


def _linen_reference(model, call, tx, ds, variables, num_epochs):
  """A hand-written Linen loop; returns step losses, variables, test sums."""
  params = variables["params"]
  stats = {k: v for k, v in variables.items() if k == "batch_stats"}

  @jax.jit
  def step(params, stats, opt_state, images, labels, key):
    def objective(params):
      logits, new = model.apply({"params": params, **stats},
                                _normalise(ds, images), rngs={"dropout": key},
                                mutable=list(stats), **call(True))
      return _loss(logits, labels), new
    (loss, new), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), dict(new), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for t, batch in enumerate(_batches(ds, num_epochs)):
    params, stats, opt_state, loss = step(params, stats, opt_state,
                                          batch["image"], batch["label"],
                                          _dropout_key(t))
    losses.append(float(loss))
  logits = model.apply({"params": params, **stats},
                       _normalise(ds, ds.test.images), **call(False))
  labels = np.asarray(ds.test.labels)
  test = {"test_loss": float(_loss(logits, labels)),
          "test_accuracy": _accuracy(logits, labels)}
  return np.array(losses), {"params": params, **stats}, test


@pytest.mark.parametrize("kind", sorted(_LINEN))
def test_trainer_trains_a_user_linen_model_as_a_hand_written_loop(digits,
                                                                  kind):
  cls, call = _LINEN[kind]
  tx = gaf_optax.sgd_gaf(0.1, momentum=0.9)
  num_epochs = 2 if kind == "plain" else 1
  trainer, start, summary = _fit(cls(), tx, digits, num_epochs)
  # The state holds exactly what the model's init made.
  assert set(start.model_state) == ({"batch_stats"} if kind == "train"
                                    else set())
  losses, variables, test = _linen_reference(
      cls(), call, tx, digits, {"params": start.params, **start.model_state},
      num_epochs)
  assert len(summary["step_loss"]) == len(losses) == (
      num_epochs * trainer.steps_per_epoch)
  np.testing.assert_allclose(summary["step_loss"], losses, rtol=1e-5)
  state = trainer.state
  _assert_trees_close({"params": state.params, **state.model_state},
                      variables)
  last = summary["records"][-1]
  assert last["test_accuracy"] == pytest.approx(test["test_accuracy"],
                                                abs=1e-9)
  assert last["test_loss"] == pytest.approx(test["test_loss"], rel=1e-5)
  assert losses[-1] < 0.5 * losses[0]
  assert last["test_accuracy"] > 0.85


def test_dropout_is_on_in_training_only_and_keyed_by_the_step(digits):
  """The trainer's mode reaches the model: reference losses with dropout
  off, or with another step's key, differ from the trainer's."""
  tx = optax.sgd(0.1)
  trainer = training.Trainer(DropoutMLP(), tx, digits, batch_size=BATCH,
                             seed=SEED, mesh=training.make_mesh(1))
  params = jax.device_get(trainer.state.params)
  batch = next(iter(_batches(digits, 1)))
  loss = float(trainer.train_step(batch)["loss"])
  x = _normalise(digits, batch["image"])

  def ref(key, deterministic=False):
    return float(_loss(DropoutMLP().apply(
        {"params": params}, x, deterministic=deterministic,
        rngs={} if key is None else {"dropout": key}), batch["label"]))

  assert loss == pytest.approx(ref(_dropout_key(0)), rel=1e-6)
  assert loss != pytest.approx(ref(_dropout_key(1)), rel=1e-3)
  assert loss != pytest.approx(ref(None, deterministic=True), rel=1e-3)


# -------------------------------------------------------------------- NNX


class CNN(nnx.Module):
  """An NNX CNN as Flax's NNX examples write one: Dropout with no stored
  stream draws from the call's ``rngs``; ``train()``/``eval()`` set the
  mode."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(rate=0.1)
    self.head = nnx.Linear(4 * 4 * 8, 10, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    x = nnx.relu(self.bn(self.conv(x)))
    x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = self.dropout(x.reshape(x.shape[0], -1), rngs=rngs)
    return self.head(x)


class StreamCNN(nnx.Module):
  """The other NNX way: Dropout holds its stream; ``__call__(self, x)``."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.head(self.dropout(x.reshape(x.shape[0], -1)))


def _pure(model, kind):
  return jax.device_get(nnx.to_pure_dict(nnx.state(model, kind)))


def _call_key(step):
  """The key of the ``nnx.Rngs`` the trainer's step ``step`` hands a
  module's call (one stream apart from the module's own)."""
  key = jax.random.wrap_key_data(_dropout_key(step))
  return jax.random.fold_in(key, 2**31 - 1)


def _call_rngs(step):
  return nnx.Rngs(_call_key(step))


def test_trainer_trains_a_user_nnx_cnn_as_a_hand_written_nnx_loop(digits):
  tx = gaf_optax.sgd_gaf(0.1, momentum=0.9)
  trainer, start, summary = _fit(CNN(rngs=nnx.Rngs(0)), tx, digits, 2)
  assert set(start.model_state) == {"batch_stats"}

  model = CNN(rngs=nnx.Rngs(0))  # the same initial values
  _assert_trees_close(start.params, _pure(model, nnx.Param), rtol=0, atol=0)
  opt_state = tx.init(nnx.state(model, nnx.Param))

  @nnx.jit
  def train_step(model, opt_state, images, labels, key):
    def loss_fn(model):
      return _loss(model(_normalise(digits, images), rngs=nnx.Rngs(key)),
                   labels)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    params = nnx.state(model, nnx.Param)
    updates, opt_state = tx.update(grads, opt_state, params)
    nnx.update(model, optax.apply_updates(params, updates))
    return loss, opt_state

  losses = []
  model.train()
  for t, batch in enumerate(_batches(digits, 2)):
    loss, opt_state = train_step(model, opt_state, batch["image"],
                                 batch["label"], _call_key(t))
    losses.append(float(loss))
  np.testing.assert_allclose(summary["step_loss"], losses, rtol=1e-5)
  _assert_trees_close(trainer.state.params, _pure(model, nnx.Param))
  _assert_trees_close(trainer.state.model_state["batch_stats"],
                      _pure(model, nnx.BatchStat))
  model.eval()
  accuracy = _accuracy(model(_normalise(digits, digits.test.images)),
                       digits.test.labels)
  last = summary["records"][-1]
  assert last["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
  assert last["test_accuracy"] > 0.9
  assert losses[-1] < 0.5 * losses[0]


def test_a_stored_dropout_stream_and_a_call_rngs_both_get_step_keys(digits):
  """Dropout is on in training for either NNX way, and off in evaluation."""
  x = _normalise(digits, digits.test.images[:32])
  k0, k1 = _dropout_key(0), _dropout_key(1)
  for cls in (CNN, StreamCNN):
    fn = training.functional(cls(rngs=nnx.Rngs(0)))
    variables = fn.init(None, None)

    def run(key, train=True, fn=fn, variables=variables):
      return np.asarray(fn.apply(variables, x, train=train,
                                 rngs={"dropout": key}))

    np.testing.assert_array_equal(run(k0), run(k0))
    assert not np.allclose(run(k0), run(k1))
    np.testing.assert_array_equal(run(k0, train=False), run(k1, train=False))
  # The call's rngs are the documented key: the module called by hand.
  module = CNN(rngs=nnx.Rngs(0))
  fn = training.functional(module)
  module.train()
  want = module(x, rngs=_call_rngs(0))
  got, _ = fn.apply(fn.init(None, None), x, train=True, mutable=True,
                    rngs={"dropout": k0})
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------- gaf_optax in a user's loop


def _optimizer(model, tx):
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _optimizer_update(optimizer, model, grads):
  # Flax >= 0.11: update(model, grads); 0.10: update(grads).
  if "model" in inspect.signature(optimizer.update).parameters:
    optimizer.update(model, grads)
  else:
    optimizer.update(grads)


def test_sgd_gaf_in_a_flax_examples_nnx_loop_is_atan_of_the_momentum(
    digits):
  """Flax's NNX example loop, with ``gaf_optax.sgd_gaf`` in optax.sgd's
  place; each step equals SGD_atanMom written out by hand."""
  lr, mu, alpha, beta = 0.1, 0.9, 0.3, 4.5
  model = StreamCNN(rngs=nnx.Rngs(1))
  optimizer = _optimizer(model, gaf_optax.sgd_gaf(lr, momentum=mu))

  def loss_fn(model, images, labels):
    logits = model(images)
    return _loss(logits, labels), logits

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, _), grads = grad_fn(model, images, labels)
    _optimizer_update(optimizer, model, grads)
    return loss

  @nnx.jit
  def eval_step(model, images, labels):
    _, logits = loss_fn(model, images, labels)
    return jnp.mean(jnp.argmax(logits, -1) == labels)

  # The same model and steps by hand: grads of a copy, then
  # buffer = mu * buffer + g and p -= lr * alpha * arctan(beta * buffer)
  # (with alpha * beta = 1.35, not plain SGD's step).
  ref = StreamCNN(rngs=nnx.Rngs(1))
  buffers = jax.tree.map(jnp.zeros_like, _pure(ref, nnx.Param))

  @nnx.jit
  def ref_step(ref, buffers, images, labels):
    grads = nnx.grad(lambda m: loss_fn(m, images, labels)[0])(ref)
    buffers = jax.tree.map(lambda b, g: mu * b + g, buffers,
                           nnx.to_pure_dict(grads))
    state = nnx.state(ref, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(
        lambda p, b: p - lr * alpha * jnp.arctan(beta * b),
        nnx.to_pure_dict(state), buffers))
    nnx.update(ref, state)
    return buffers

  losses = []
  test = (_normalise(digits, digits.test.images), digits.test.labels)
  model.train()
  ref.train()
  for t, batch in enumerate(_batches(digits, 1)):
    if t == 6:
      break
    images = _normalise(digits, batch["image"])
    losses.append(float(train_step(model, optimizer, images,
                                   batch["label"])))
    buffers = ref_step(ref, buffers, images, batch["label"])
    _assert_trees_close(_pure(model, nnx.Param), _pure(ref, nnx.Param))
    _assert_trees_close(_pure(model, nnx.BatchStat),
                        _pure(ref, nnx.BatchStat))
  model.eval()
  assert float(eval_step(model, *test)) > 0.5
  assert losses[-1] < losses[0]


# ----------------------------------------------------------------- errors


class NeedsMask(nn.Module):

  @nn.compact
  def __call__(self, x, mask):
    return nn.Dense(10)(x.reshape(x.shape[0], -1) * mask)


class NNXNeedsMask(nnx.Module):

  def __init__(self):
    self.head = nnx.Linear(64, 10, rngs=nnx.Rngs(0))

  def __call__(self, x, *, mask):
    return self.head(x.reshape(x.shape[0], -1) * mask)


class PositionalTrain(nn.Module):

  @nn.compact
  def __call__(self, x, train, /):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_user_model_errors_name_the_argument(digits):
  make = lambda model, **kw: training.Trainer(
      model, optax.sgd(0.1), digits, batch_size=BATCH,
      mesh=training.make_mesh(1), **kw)
  for model in (NeedsMask(), NNXNeedsMask()):
    with pytest.raises(TypeError, match=(
        f"model {type(model).__name__}'s __call__ has a required parameter "
        "'mask' that the trainer cannot fill")):
      make(model)
  with pytest.raises(TypeError, match="required parameter 'train'"):
    make(PositionalTrain())  # positional-only: not passed by keyword
  with pytest.raises(ValueError, match=(
      r"amplification_points=True needs a model with amplification points; "
      r"MLP has none \(a Linen model")):
    make(MLP(), amplification_points=True)
  with pytest.raises(ValueError, match=(
      r"Telemetry\(signals=True\) needs a model with amplification points; "
      "CNN has none")):
    make(CNN(rngs=nnx.Rngs(0)), telemetry=training.Telemetry(signals=True))
