"""Deep-MLP training on digits with per-layer diagnostics, for the studies.

One jitted function trains every seed at once (``vmap`` over seeds, ``scan``
over epochs and steps: cheap for Dense layers on a CPU) and records, per
epoch and hidden layer:

- ``grad_abs``: mean ``|dL/dW|`` of the layer's kernel (average over the
  epoch's steps);
- ``grad_var``: variance of the kernel gradient's entries (same average);
- ``saturated``: share of the layer's pre-activations ``y`` on the training
  set (evaluation mode, end of epoch) with ``|y| > saturation``;
- ``rho``, ``rho_prime``: ANAct's forward and backward gains of the plain
  activation ``f`` at those pre-activations
  (:func:`gaf_optax.nn.anact_lambda`: ``E[f(y)^2] / Var[y]`` and
  ``E[f'(y)^2]``);
- ``lambda``: the running ANAct factor of the layer (1 without ANAct).
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.activations_digits import _xent
from experiments.activations_digits import digits
from gaf_optax import nn as gnn


def _hidden(params) -> list[str]:
  """The hidden Dense layers' names in forward order (fc1, fc2, ...)."""
  return sorted((n for n in params if re.fullmatch(r"fc\d+", n)),
                key=lambda n: int(n[2:]))


def _by_number(tree) -> list:
  """Leaves of a ``{Name_0: ..., Name_10: ...}`` dict in numeric order."""
  return [tree[k] for k in sorted(tree, key=lambda k: int(k.rsplit("_", 1)[1]))]


def _train_impl(model, tx, activation, saturation, init_scale, epochs,
                batch_size, seeds, xtr, ytr, xte, yte):
  steps = len(xtr) // batch_size

  def run(seed):
    key = jax.random.key(seed)
    variables = model.init(key, xtr[:2], train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    params = {n: {**p, "kernel": p["kernel"] * jnp.sqrt(init_scale)}
              for n, p in params.items()}
    names = _hidden(params)

    def loss_fn(params, stats, x, y, rng):
      logits, updates = model.apply(
          {"params": params, "batch_stats": stats}, x, train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      return _xent(logits, y), updates.get("batch_stats", {})

    def step(carry, inputs):
      params, stats, opt_state = carry
      idx, rng = inputs
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, stats, xtr[idx], ytr[idx], rng)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      kernels = [grads[n]["kernel"] for n in names]
      return (params, stats, opt_state), (
          loss, jnp.stack([jnp.mean(jnp.abs(g)) for g in kernels]),
          jnp.stack([jnp.var(g) for g in kernels]))

    def epoch(carry, e):
      ekey = jax.random.fold_in(key, e)
      order = jax.random.permutation(ekey, len(xtr))
      idx = order[:steps * batch_size].reshape(steps, -1)
      rngs = jax.random.split(jax.random.fold_in(ekey, 1), steps)
      carry, (loss, gabs, gvar) = jax.lax.scan(step, carry, (idx, rngs))
      params, stats, _ = carry
      variables = {"params": params, "batch_stats": stats}
      logits = model.apply(variables, xte, train=False)
      _, inter = model.apply(
          variables, xtr, train=False, mutable=["intermediates"],
          capture_intermediates=lambda m, _: isinstance(m, nn.Dense))
      pre = [inter["intermediates"][n]["__call__"][0] for n in names]
      gains = [gnn.anact_lambda(activation, y) for y in pre]
      lam = ([jnp.ones(())] * len(names) if not stats
             else [s["lambda"] for s in _by_number(stats)])
      return carry, {
          "train_loss": loss.mean(),
          "test_acc": jnp.mean(jnp.argmax(logits, -1) == yte),
          "grad_abs": gabs.mean(0), "grad_var": gvar.mean(0),
          "saturated": jnp.stack([jnp.mean(jnp.abs(y) > saturation)
                                  for y in pre]),
          "rho": jnp.stack([g[1] for g in gains]),
          "rho_prime": jnp.stack([g[2] for g in gains]),
          "lambda": jnp.stack(lam)}

    carry = (params, stats, tx.init(params))
    _, history = jax.lax.scan(epoch, carry, jnp.arange(epochs))
    return history

  return jax.vmap(run)(seeds)


def train(model: nn.Module, tx: optax.GradientTransformation, seeds, *,
          activation, saturation: float, init_scale: float = 1.0,
          epochs: int, batch_size: int = 64,
          fast_compile: bool = False) -> dict[str, np.ndarray]:
  """Trains ``model`` on digits for every seed; arrays ``[seeds, epochs, ...]``.

  Args:
    model: a ``gaf_optax.models.MLP`` (any activation, dropout allowed).
    tx: the optimizer.
    seeds: ints; seed s keys the initialization, batch order and dropout.
    activation: the plain activation ``f`` whose gains are measured.
    saturation: ``|y|`` above which a pre-activation counts as saturated.
    init_scale: multiplier of the kernels' initial variance.
    epochs: epochs to train.
    batch_size: batch size.
    fast_compile: compile with XLA's backend optimizations off (tests).
  """
  options = {"xla_backend_optimization_level": 0} if fast_compile else None
  fn = jax.jit(functools.partial(_train_impl, model, tx, activation,
                                 saturation, init_scale, epochs, batch_size),
               compiler_options=options)
  history = fn(jnp.asarray(seeds), *map(jnp.asarray, digits()))
  return jax.tree.map(np.asarray, history)


@functools.cache
def data_sizes() -> tuple[int, int]:
  """``(train, test)`` sizes of the digits split."""
  xtr, _, xte, _ = digits()
  return len(xtr), len(xte)
