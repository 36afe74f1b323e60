"""A short, runnable tour of gaf_optax's GAF transformations (CPU, ~30 s).

    python -m experiments.demo

1. What GAF does to an update: tiny components are enlarged (slope
   alpha*beta at 0), large ones are bounded (alpha*pi/2 for arctan).
2. A small Flax MLP on two interleaved spirals (synthetic, no download),
   trained with optax baselines and the gaf_optax presets for the same number
   of steps and seeds. As METHODS.md cautions, near 0 GAF acts like SGD at
   lr*alpha*beta, so that baseline is printed too.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gaf_optax

STEPS = 300
SEEDS = (0, 1, 2)


def show_shaping() -> None:
  u = jnp.array([1e-6, 1e-3, 0.1, 1.0, 100.0])
  print("1. GAF on an update u, alpha=0.3, beta=4.5 (slope 1.35, bound 0.471)")
  print(f"   u               = {np.asarray(u)}")
  for fn in ("arctan", "tanh", "log"):
    out, _ = gaf_optax.gaf(0.3, 4.5, fn).update(u, None)
    print(f"   gaf({fn!r:8s})  = {np.asarray(out).round(7)}")


def spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  t = rng.uniform(0.25, 3.0, size=n) * np.pi
  label = rng.integers(0, 2, size=n)
  r = t / (3 * np.pi)
  angle = t + np.pi * label
  x = np.stack([r * np.cos(angle), r * np.sin(angle)], 1)
  x += 0.02 * rng.normal(size=x.shape)
  return x.astype(np.float32), label.astype(np.int32)


class MLP(nn.Module):
  width: int = 32
  depth: int = 4

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      x = nn.tanh(nn.Dense(self.width)(x))
    return nn.Dense(2)(x)


def train(opt: optax.GradientTransformation, seed: int) -> tuple[float, float]:
  x, y = map(jnp.asarray, spirals(1024, seed=100))
  xt, yt = spirals(1024, seed=101)
  model = MLP()
  params = model.init(jax.random.key(seed), x[:1])
  state = opt.init(params)

  def loss_fn(p, xb, yb):
    logits = model.apply(p, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, key):
    params, state = carry
    idx = jax.random.choice(key, x.shape[0], (128,), replace=False)
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.key(seed + 1000), STEPS)
  (params, state), _ = jax.jit(lambda c, k: jax.lax.scan(step, c, k))(
      (params, state), keys)
  acc = float(jnp.mean(jnp.argmax(model.apply(params, xt), -1) == yt))
  return float(loss_fn(params, x, y)), acc


def main() -> None:
  t0 = time.time()
  show_shaping()
  lr, alpha, beta = 0.05, 0.3, 4.5
  optimizers = {
      f"optax.sgd(lr={lr}, momentum=0.9)": optax.sgd(lr, 0.9),
      f"optax.sgd(lr={lr * alpha * beta:.4g}) [= lr*alpha*beta]":
          optax.sgd(lr * alpha * beta, 0.9),
      f"gaf_optax.sgd_gaf(lr={lr})  [SGD_atanMom]": gaf_optax.sgd_gaf(lr, 0.9),
      f"gaf_optax.sgd_gaf(lr={lr}, position='gradient') [SGD_atan]":
          gaf_optax.sgd_gaf(lr, 0.9, position="gradient"),
      "optax.adam(3e-3)": optax.adam(3e-3),
      "gaf_optax.adam_gaf(3e-3)  [Adam_atan]": gaf_optax.adam_gaf(3e-3),
      "optax.chain(gaf_optax.gaf(), optax.adam(3e-3))":
          optax.chain(gaf_optax.gaf(), optax.adam(3e-3)),
  }
  print(f"\n2. Two spirals, tanh MLP 4x32, {STEPS} steps of batch 128, "
        f"seeds {SEEDS}: train loss and test accuracy, mean +- std")
  for name, opt in optimizers.items():
    res = np.array([train(opt, s) for s in SEEDS])
    print(f"   {name:58s} loss {res[:, 0].mean():.3f} +- {res[:, 0].std():.3f}"
          f"   acc {100 * res[:, 1].mean():5.1f} +- {100 * res[:, 1].std():.1f}%")
  print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
