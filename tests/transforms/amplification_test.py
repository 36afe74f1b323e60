"""Gradient amplification: amplification points and the controller."""

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import gaf_optax
from gaf_optax.nn import AmplificationPoints, amplify, signal_norms

# ---------------------------------------------------------------------------
# amplify


def test_amplify_is_the_exact_identity_forward():
  x = jax.random.normal(jax.random.key(0), (5, 7)) * 1e3
  for factor in (0.5, 2.0, 1e6):
    np.testing.assert_array_equal(amplify(x, jnp.float32(factor)), x)
  xb = x.astype(jnp.bfloat16)
  out = amplify(xb, jnp.float32(3.0))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, xb)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_amplify_scales_the_cotangent_exactly_and_reports_its_norm(dtype):
  x = jax.random.normal(jax.random.key(1), (4, 3)).astype(dtype)
  w = jax.random.normal(jax.random.key(2), (4, 3)).astype(dtype)
  loss = lambda x, a: jnp.sum((w * amplify(x, a)).astype(jnp.float32))
  gx, ga = jax.grad(loss, argnums=(0, 1))(x, jnp.float32(2.5))
  assert gx.dtype == dtype
  np.testing.assert_array_equal(gx, (w * jnp.float32(2.5)).astype(dtype))
  expected = np.sum(np.square(np.asarray(w, np.float64)))
  np.testing.assert_allclose(ga, expected, rtol=1e-6)
  np.testing.assert_allclose(signal_norms(ga), np.sqrt(expected), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_points_compound_to_factor_to_the_k(k):
  # A plain chain x -> c*x -> ... with a point after every layer: the input's
  # gradient is scaled by factor**k, and point i (input side first) reports
  # the cotangent it received, already amplified by the points above it.
  def net(x, factors):
    amp = AmplificationPoints(factors)
    for _ in range(k):
      x = amp(0.5 * jnp.tanh(x))
    amp.check_used_all()
    return jnp.sum(x)

  x = jnp.linspace(-1.0, 1.0, 5)
  plain = jax.grad(net)(x, jnp.ones(k))
  factors = jnp.full(k, 2.0)
  amplified, fgrads = jax.grad(net, argnums=(0, 1))(x, factors)
  np.testing.assert_allclose(amplified, plain * 2.0**k, rtol=1e-6)
  # Statistics without amplification, then with: point i (0-based) sits
  # below k - 1 - i amplified points.
  _, base = jax.grad(net, argnums=(0, 1))(x, jnp.ones(k))
  np.testing.assert_allclose(
      fgrads, base * 4.0 ** np.arange(k - 1, -1, -1), rtol=1e-6)


def test_only_the_residual_branch_is_amplified_in_a_residual_block():
  w1, w2 = 0.3, -0.7

  def block(x, factors):
    amp = AmplificationPoints(factors)
    branch = amp(w2 * jnp.tanh(amp(w1 * x)))
    amp.check_used_all()
    return jnp.sum(x + branch)

  x = jnp.array([0.2, -1.0, 0.5])
  g = jax.grad(block)(x, jnp.array([2.0, 3.0]))
  branch_grad = w2 * w1 * (1 - jnp.tanh(w1 * x) ** 2)
  np.testing.assert_allclose(g, 1.0 + 6.0 * branch_grad, rtol=1e-6)


def test_amplification_points_check_their_count():
  with pytest.raises(ValueError, match=r"float32\[2\]"):
    amp = AmplificationPoints(jnp.ones(3))
    amp(1.0), amp(2.0)
    amp.check_used_all()
  amp = AmplificationPoints(jnp.ones(1))
  amp(1.0)
  with pytest.raises(ValueError, match="more than 1 amplification points"):
    amp(2.0)
  with pytest.raises(ValueError, match="1-D array"):
    AmplificationPoints(jnp.ones((2, 2)))
  amp = AmplificationPoints(None)  # no factors: plain identity
  x = jnp.ones(2)
  assert amp(x) is x


# ---------------------------------------------------------------------------
# The controller against a NumPy re-computation


def _run_controller(tx, stats):
  state = tx.init({"w": jnp.zeros(3)})
  update = jax.jit(lambda s, r: tx.update({"w": jnp.ones(3)}, s,
                                          layer_stats=r))
  out = [np.asarray(gaf_optax.amplification_factors(state))]
  selected = []
  for r in stats:
    _, state = update(state, r)
    out.append(np.asarray(gaf_optax.amplification_factors(state)))
    selected.append(np.asarray(state.selected))
  return np.stack(out), np.stack(selected), state


def _reference_factors(stats, spe, selection, threshold, reselect, factor,
                       start, end):
  steps, layers = stats.shape
  selected = np.zeros(layers, bool)
  chosen = False
  out = []
  for t in range(steps + 1):  # factors for step t, after t updates
    epoch = t // spe
    if t and t % spe == 0 and (reselect == "epoch" or not chosen):
      r = stats[t - spe:t].astype(np.float64)
      with np.errstate(invalid="ignore", divide="ignore"):  # silent layers
        if selection == "cv":
          measure = r.std(axis=0) / r.mean(axis=0)
        else:
          measure = np.abs(np.diff(r, axis=0)).mean(axis=0) / r.mean(axis=0)
        level = (np.nanmean(measure) if threshold == "mean"
                 else np.nanmedian(measure))
        selected, chosen = measure > level, True
    active = epoch >= start and (end is None or epoch < end)
    out.append(np.where(active & selected, factor, 1.0))
  return np.stack(out)


@pytest.mark.parametrize("reselect", ["epoch", "once"])
@pytest.mark.parametrize("threshold", ["mean", "median"])
@pytest.mark.parametrize("selection", ["cv", "delta"])
def test_selection_matches_numpy_recomputation(selection, threshold, reselect):
  rng = np.random.default_rng(0)
  spe, epochs, layers = 7, 5, 9
  # Each layer has its own level and fluctuation, changing per epoch.
  level = rng.uniform(0.5, 5.0, size=(epochs, 1, layers))
  noise = rng.uniform(0.01, 0.5, size=(epochs, 1, layers))
  stats = (level * (1 + noise * rng.normal(size=(epochs, spe, layers))))
  stats = np.abs(stats).reshape(epochs * spe, layers).astype(np.float32)
  tx = gaf_optax.gradient_amplification(
      layers, spe, factor=3.0, start_epoch=1, end_epoch=4,
      selection=selection, threshold=threshold, reselect=reselect)
  got, _, _ = _run_controller(tx, stats)
  expected = _reference_factors(stats, spe, selection, threshold, reselect,
                                3.0, 1, 4)
  np.testing.assert_array_equal(got, expected)
  # The test data makes the selection non-trivial and changing.
  assert (got == 3.0).any() and (got == 1.0).any()
  per_epoch = {tuple(got[e * spe + 1]) for e in range(1, 4)}
  assert len(per_epoch) > 1 or reselect == "once"


@pytest.mark.parametrize("threshold", ["mean", "median"])
@pytest.mark.parametrize("selection", ["cv", "delta"])
def test_a_layer_without_a_measure_does_not_stop_the_selection(selection,
                                                                threshold):
  """A silent point (zero signal: 0/0 measure) is skipped, not contagious."""
  rng = np.random.default_rng(1)
  spe, layers = 6, 5
  stats = np.abs(rng.uniform(0.5, 2.0, (1, layers)) * (
      1 + rng.uniform(0.0, 0.5, (1, layers)) * rng.normal(size=(3 * spe,
                                                               layers))))
  stats[:, 0] = 0.0  # silent all along
  stats = stats.astype(np.float32)
  tx = gaf_optax.gradient_amplification(
      layers, spe, factor=2.0, start_epoch=1, selection=selection,
      threshold=threshold)
  got, _, _ = _run_controller(tx, stats)
  expected = _reference_factors(stats, spe, selection, threshold, "epoch",
                                2.0, 1, None)
  np.testing.assert_array_equal(got, expected)
  assert (got[spe:, 1:] == 2.0).any()  # others are still selected
  assert (got[:, 0] == 1.0).all()  # the silent one never is


def test_factors_are_one_outside_the_epoch_window():
  spe = 3
  tx = gaf_optax.gradient_amplification(
      4, spe, factor=2.0, selection="random", ratio=1.0, start_epoch=2,
      end_epoch=4)
  stats = np.ones((6 * spe, 4), np.float32)
  got, _, _ = _run_controller(tx, stats)
  epoch = np.arange(len(got)) // spe
  inside = (epoch >= 2) & (epoch < 4)
  np.testing.assert_array_equal(got[inside], 2.0)
  np.testing.assert_array_equal(got[~inside], 1.0)


def test_random_selection_is_reproducible_and_seeded():
  def selections(seed):
    tx = gaf_optax.gradient_amplification(
        20, 2, selection="random", ratio=0.25, start_epoch=0, seed=seed)
    return _run_controller(tx, np.ones((10, 20), np.float32))[1]

  a, b, c = selections(0), selections(0), selections(1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert (a.sum(axis=1) == 5).all()  # round(0.25 * 20) layers
  # Reselected each epoch: not the same layers every epoch.
  assert len({tuple(s) for s in a[1::2]}) > 1


def test_a_typed_key_draws_what_its_seed_draws_and_can_be_injected():
  def selections(**kw):
    tx = gaf_optax.gradient_amplification(
        20, 2, selection="random", ratio=0.25, start_epoch=0, **kw)
    return _run_controller(tx, np.ones((6, 20), np.float32))[1]

  np.testing.assert_array_equal(selections(key=jax.random.key(3)),
                                selections(seed=3))
  assert not np.array_equal(selections(key=jax.random.key(3)),
                            selections(key=jax.random.key(4)))
  # Injected (the key becomes state): the same draws.
  injected = optax.inject_hyperparams(
      gaf_optax.gradient_amplification,
      static_args=gaf_optax.AMPLIFICATION_STATIC_ARGS)(
          20, 2, selection="random", ratio=0.25, start_epoch=0,
          key=jax.random.key(3))
  state = injected.init({})
  update = jax.jit(lambda s: injected.update({}, s,
                                             layer_stats=jnp.ones(20)))
  got = []
  for _ in range(6):
    _, state = update(state)
    got.append(np.asarray(state.inner_state.selected))
  np.testing.assert_array_equal(np.stack(got), selections(seed=3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(key=3), "key must be a scalar typed PRNG key"),
    (dict(key=jax.random.split(jax.random.key(0), 2)),
     "key must be a scalar typed PRNG key"),
    (dict(key=jax.random.key(0), seed=1), "give key or seed, not both"),
])
def test_bad_key_is_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gaf_optax.gradient_amplification(2, 1, selection="random",
                                     start_epoch=0, **kwargs)


def test_factors_are_read_from_an_nnx_optimizer():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optax.chain(
      gaf_optax.gradient_amplification(
          2, 1, factor=3.0, selection="random", ratio=0.5, start_epoch=0,
          labels=lambda p: jax.tree.map(lambda _: 0, p)),
      optax.sgd(0.1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  factors = gaf_optax.amplification_factors(optimizer.opt_state)
  assert isinstance(factors, jax.Array) and factors.shape == (2,)
  plain = gaf_optax.amplification_factors(tx.init(nnx.state(model,
                                                            nnx.Param)))
  np.testing.assert_array_equal(factors, plain)
  assert sorted(np.asarray(factors).tolist()) == [1.0, 3.0]


def test_reselect_once_keeps_the_first_random_draw():
  tx = gaf_optax.gradient_amplification(
      20, 2, selection="random", ratio=0.5, start_epoch=0, reselect="once")
  _, selected, _ = _run_controller(tx, np.ones((10, 20), np.float32))
  assert (selected == selected[0]).all()


def test_state_is_a_checkpointable_pytree_of_arrays():
  tx = gaf_optax.gradient_amplification(5, 4, selection="delta")
  rng = np.random.default_rng(3)
  stats = rng.uniform(0.5, 2.0, size=(14, 5)).astype(np.float32)
  _, _, state = _run_controller(tx, stats[:6])
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
  blob = flax.serialization.to_bytes(state)
  restored = flax.serialization.from_bytes(tx.init({}), blob)
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_dtypes(restored, state)

  def run(state):
    for r in stats[6:]:
      _, state = tx.update({}, state, layer_stats=r)
    return state

  chex.assert_trees_all_equal(run(restored), run(state))


@pytest.mark.parametrize("selection", ["random", "cv"])
def test_init_state_can_be_donated_to_a_jitted_step(selection):
  # Leaves sharing one buffer would make XLA refuse the donation.
  tx = gaf_optax.gradient_amplification(3, 2, selection=selection)
  state = tx.init(None)
  buffers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(set(buffers)) == len(buffers)
  step = jax.jit(lambda s, r: tx.update({}, s, layer_stats=r)[1],
                 donate_argnums=0)
  state = step(state, jnp.ones(3))
  assert int(state.count) == 1


def test_changing_factors_never_recompiles():
  spe = 2
  tx = gaf_optax.gradient_amplification(3, spe, selection="cv")
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, r):
    return tx.update({"w": jnp.ones(2)}, state, layer_stats=r)[1]

  state = tx.init(None)
  seen = set()
  for t in range(10):
    state = step(state, jnp.array([1.0, 1.0 + t % 2, 1.0]))
    seen.add(tuple(np.asarray(gaf_optax.amplification_factors(state))))
  assert len(seen) == 2  # factors changed value across epochs


def test_factor_schedule_and_inject_hyperparams():
  sched = lambda count: 1.0 + count.astype(jnp.float32)
  tx = gaf_optax.gradient_amplification(
      2, 1, factor=sched, selection="random", ratio=1.0, start_epoch=0)
  got, _, _ = _run_controller(tx, np.ones((3, 2), np.float32))
  np.testing.assert_array_equal(got[:, 0], [1.0, 2.0, 3.0, 4.0])

  injected = optax.inject_hyperparams(
      gaf_optax.gradient_amplification,
      static_args=("num_layers", "steps_per_epoch"))(
                       num_layers=2, steps_per_epoch=1, factor=2.0,
                       selection="random", ratio=1.0, start_epoch=0)
  state = injected.init({})
  _, state = injected.update({}, state, layer_stats=jnp.ones(2))
  np.testing.assert_array_equal(
      gaf_optax.amplification_factors(state), [2.0, 2.0])
  state.hyperparams["factor"] = jnp.float32(5.0)
  _, state = injected.update({}, state, layer_stats=jnp.ones(2))
  np.testing.assert_array_equal(
      gaf_optax.amplification_factors(state), [5.0, 5.0])


# ---------------------------------------------------------------------------
# Weight-gradient variant and composition


def test_weight_gradient_variant_scales_selected_layers_and_uses_their_norms():
  params = {"l0": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
            "l1": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
            "head": jnp.ones(2)}
  labels = {"l0": {"w": 0, "b": 0}, "l1": {"w": 1, "b": 1}, "head": -1}
  tx = gaf_optax.gradient_amplification(
      2, 2, factor=4.0, selection="cv", labels=labels)
  state = tx.init(params)
  rng = np.random.default_rng(0)

  def grads(scale_l1):
    g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                           jnp.float32), params)
    g["l1"] = jax.tree.map(lambda x: x * scale_l1, g["l1"])
    return g

  # Epoch 0: layer 1's gradient norm fluctuates, layer 0's much less.
  seq = [grads(1.0), grads(10.0)]
  norms = []
  for g in seq:
    out, state = tx.update(g, state, params)
    chex.assert_trees_all_equal(out, g)  # epoch 0 is not amplified
    norms.append([np.sqrt(sum(np.sum(np.square(x)) for x in
                              jax.tree.leaves(g[k]))) for k in ("l0", "l1")])
  np.testing.assert_allclose(state.previous, norms[-1], rtol=1e-6)
  np.testing.assert_array_equal(state.selected, [False, True])
  g = grads(1.0)
  out, state = tx.update(g, state, params)
  chex.assert_trees_all_equal(out["l0"], g["l0"])
  chex.assert_trees_all_equal(out["head"], g["head"])
  chex.assert_trees_all_close(out["l1"], jax.tree.map(lambda x: 4 * x,
                                                      g["l1"]))


def test_labels_may_be_a_function_of_the_params():
  tx = gaf_optax.gradient_amplification(
      2, 1, selection="random", ratio=1.0, start_epoch=0, factor=3.0,
      labels=lambda p: {"a": 0, "b": 1})
  g = {"a": jnp.ones(2), "b": jnp.ones(3)}
  out, _ = tx.update(g, tx.init(g), g)
  chex.assert_trees_all_equal(out, jax.tree.map(lambda x: 3 * x, g))


def test_composes_in_a_chain_before_sgd():
  tx = optax.chain(
      gaf_optax.gradient_amplification(2, 1, selection="random", ratio=1.0,
                                       start_epoch=0),
      optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  g = {"w": jnp.full(3, 0.5)}
  out, state = tx.update(g, state, params, layer_stats=jnp.ones(2))
  np.testing.assert_allclose(out["w"], -0.1 * (0.5 + 1e-2), rtol=1e-6)
  np.testing.assert_array_equal(gaf_optax.amplification_factors(state),
                                [2.0, 2.0])


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(factor=0.0), "factor must be > 0"),
    (dict(factor=-1.0), "factor must be > 0"),
    (dict(ratio=0.0), r"ratio must be a number in \(0, 1\]"),
    (dict(ratio=1.5), r"ratio must be a number in \(0, 1\]"),
    (dict(start_epoch=3, end_epoch=3), "end_epoch must be None or an int "
     "greater than start_epoch"),
    (dict(start_epoch=-1), "start_epoch must be a non-negative int"),
    (dict(selection="grad"), "selection must be one of"),
    (dict(threshold="max"), "threshold must be one of"),
    (dict(reselect="never"), "reselect must be one of"),
    (dict(selection="cv", start_epoch=0), "needs one epoch of statistics"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(steps_per_epoch=2.5), "steps_per_epoch must be a positive int"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
  base = dict(num_layers=3, steps_per_epoch=4)
  with pytest.raises(ValueError, match=match):
    gaf_optax.gradient_amplification(**{**base, **kwargs})


def test_bad_update_inputs_raise_at_trace_time():
  tx = gaf_optax.gradient_amplification(3, 4)
  state = tx.init(None)
  with pytest.raises(ValueError, match=r"shape \(3,\).*got \(4,\)"):
    jax.jit(lambda s: tx.update({}, s, layer_stats=jnp.ones(4)))(state)
  with pytest.raises(ValueError, match=r"needs layer_stats=float32\[3\]"):
    tx.update({}, state)
  bad = gaf_optax.gradient_amplification(2, 1, labels={"a": 5})
  with pytest.raises(ValueError, match=r"layer id in \[0, num_layers\)"):
    bad.update({"a": jnp.ones(1)}, bad.init(None))
  bad = gaf_optax.gradient_amplification(2, 1, labels={"a": 0})
  with pytest.raises(ValueError, match="structure of the updates"):
    bad.update({"b": jnp.ones(1)}, bad.init(None))
  with pytest.raises(ValueError, match="exactly one AmplificationState; "
                     "found several"):
    gaf_optax.amplification_factors((state, state))
  with pytest.raises(ValueError, match="exactly one AmplificationState; "
                     "found none"):
    gaf_optax.amplification_factors(optax.sgd(0.1).init({"w": jnp.ones(2)}))


# ---------------------------------------------------------------------------
# Training: a vanishing-gradient MLP on digits


def _digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)


def _train_mlp(amplified, *, depth=12, width=32, steps=300, lr=0.01, seed=0):
  """Full-batch SGD with momentum on a deep, BN-free tanh MLP, small init.

  Weights at 0.8x LeCun scale shrink the signal by about 0.8 per layer, so
  every layer's gradient is small and the baseline is slow at this learning
  rate. Points after every hidden layer, the "cv" selection with a median
  threshold (half the points from epoch 1) and factor 2 give the layers
  below the selected points a larger, compounding gradient. As docs/methods/amplification.md
  cautions, part of this is a larger effective learning rate; the
  experiments compare against SGD at a matched learning rate, this test
  only checks that the mechanism takes effect in training.
  """
  x, y = _digits()
  sizes = [64] + [width] * depth + [10]
  keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
  params = [
      (0.8 * jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
      for k, m, n in zip(keys, sizes[:-1], sizes[1:])]

  def loss_fn(params, factors):
    amp = AmplificationPoints(factors)
    h = x
    for w, b in params[:-1]:
      h = amp(jnp.tanh(h @ w + b))
    amp.check_used_all()
    logits = h @ params[-1][0] + params[-1][1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  tx = optax.chain(
      gaf_optax.gradient_amplification(
          depth, steps_per_epoch=10, factor=2.0 if amplified else 1.0,
          start_epoch=1, selection="cv", threshold="median"),
      optax.sgd(lr, momentum=0.9))
  state = tx.init(params)

  def step(carry, _):
    params, state = carry
    factors = gaf_optax.amplification_factors(state)
    loss, (g, fg) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params,
                                                                 factors)
    updates, state = tx.update(g, state, params, layer_stats=signal_norms(fg))
    return (optax.apply_updates(params, updates), state), loss

  (params, state), losses = jax.jit(
      lambda c: jax.lax.scan(step, c, None, length=steps))((params, state))
  return float(loss_fn(params, None)), np.asarray(losses)


def test_amplification_trains_a_vanishing_gradient_mlp_faster():
  # The selection is discrete, so one seed's outcome depends on float
  # rounding: seed 1 ended at 0.61 against a 0.76 baseline on jax 0.12.0.1
  # but at 0.20-0.28 on jax 0.5.3 and 0.10.2. Over seeds 0-4 (2026-12-04):
  # baselines 0.60-0.86 on all three; amplified 0.04-0.61 (0.12), 0.04-0.28
  # (0.10), 0.05-0.26 (0.5); means 0.21 / 0.15 / 0.13 against 0.74.
  base, amp = [], []
  for seed in range(5):
    b, base_curve = _train_mlp(False, seed=seed)
    a, amp_curve = _train_mlp(True, seed=seed)
    assert np.isfinite(base_curve).all() and np.isfinite(amp_curve).all()
    assert b > 0.5, (seed, b)
    assert a < b, (seed, a, b)  # amplified ahead on every seed
    base.append(b)
    amp.append(a)
  assert np.mean(amp) < 0.5 * np.mean(base), (amp, base)
