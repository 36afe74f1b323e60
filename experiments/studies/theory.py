"""Study: GAF's theory claims on an ill-conditioned quadratic and a saddle.

    python -m experiments.studies.theory [--smoke] [--seeds N] [--out DIR]

docs/methods/gaf.md: the GAF paper (Liu et al., arXiv:2107.04228) proves,
under assumptions, faster convergence than SGD and relief of
ill-conditioning and of saddle points; and near 0 ``alpha*atan(beta*g)`` is
linear with slope ``alpha*beta``, so GAF at ``lr`` acts like GD at
``lr*alpha*beta`` on small gradients. This study tests exactly those claims
with deterministic (full) gradients, where nothing but the update rule
differs between arms:

1. Ill-conditioning. ``f(x) = 0.5 * sum_i lam_i x_i**2`` in ``dim``
   dimensions, ``lam`` log-spaced from ``L = 1`` down to ``1/kappa``,
   ``x0 ~ N(0, I)`` (the seed). Measured: iterations until
   ``f(x_t) <= tol * f(x0)``.
2. Saddle escape. ``f(x, y) = 0.5 * sum_i lam_i x_i**2 - mu/2 * y**2 +
   y**4/4``: a strict saddle at 0 with negative curvature ``-mu`` along
   ``y``, minima at ``x = 0, y = +-sqrt(mu)``, ``f* = -mu**2/4``. With
   ``dim = 2, lam = 2, mu = 2`` it is ``x**2 - y**2 + y**4/4``. Start near the
   stable manifold: ``x0 ~ N(0, I)``, ``y0 = eps * N(0, 1)`` (the seed).
   Measured: steps until ``|y| > sqrt(mu)/2`` (escape), and steps until
   ``f - f* <= 1e-3 * |f*|`` (reaching a minimum).

Arms (every arm on the same grid of ``lr * L``; ``L`` is the largest
positive curvature, GD is stable for ``lr * L < 2``): GD at ``lr``, GAF-GD
``optax.chain(gaf_optax.gaf(alpha, beta), optax.sgd(lr))`` and GD at
``lr * alpha * beta`` (the matched-lr control), for GAF's default
``(alpha, beta) = (0.3, 4.5)`` (slope 1.35) and the authors' CIFAR setting
``(0.1, 20)`` (slope 2). Writes ``results.md`` (tables, mean +- std over
seeds, the command) and ``theory.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gaf_optax
from experiments import cli
from experiments import common
from experiments import studies

DEFAULT_OUT = common.results_dir("theory")

# (alpha, beta) settings of GAF: the default and the authors' CIFAR sweep.
GAF_SETTINGS = ((0.3, 4.5), (0.1, 20.0))


@dataclasses.dataclass(frozen=True)
class Arm:
  """GD (``alpha is None``), GAF-GD, or GD at ``lr * alpha * beta``."""

  kind: str  # "gd", "gaf" or "matched"
  alpha: float | None = None
  beta: float | None = None

  @property
  def name(self) -> str:
    if self.kind == "gd":
      return "GD(lr)"
    if self.kind == "gaf":
      return f"GAF({self.alpha:g},{self.beta:g}) + GD(lr)"
    return f"GD(lr*{self.alpha * self.beta:g})"

  def optimizer(self, lr) -> optax.GradientTransformation:
    if self.kind == "gd":
      return optax.sgd(lr)
    if self.kind == "gaf":
      return optax.chain(gaf_optax.gaf(self.alpha, self.beta), optax.sgd(lr))
    return optax.sgd(lr * self.alpha * self.beta)


ARMS = (Arm("gd"),) + tuple(
    arm for a, b in GAF_SETTINGS
    for arm in (Arm("gaf", a, b), Arm("matched", a, b)))


@dataclasses.dataclass(frozen=True)
class Config:
  """Problem grid and limits."""

  kappas: tuple[float, ...] = (10.0, 100.0, 1e3, 1e4)
  dim: int = 50
  lr_times_l: tuple[float, ...] = (0.5, 1.0, 1.4, 1.9)
  tol: float = 1e-6
  max_steps: int = 300_000
  # Saddle problems: (dim, mu); dim 2 is x**2 - y**2 + y**4/4.
  saddles: tuple[tuple[int, float], ...] = ((2, 2.0), (50, 0.1), (50, 0.01))
  eps: float = 1e-6
  saddle_max_steps: int = 20_000
  curve_steps: int = 3_000


SMOKE = Config(kappas=(10.0, 100.0), dim=10, lr_times_l=(0.5, 1.9),
               max_steps=3_000, saddles=((2, 2.0),), saddle_max_steps=2_000,
               curve_steps=300)


def quadratic_curvatures(kappa: float, dim: int) -> np.ndarray:
  """``lam`` log-spaced from 1 down to ``1/kappa``."""
  return np.logspace(0.0, -np.log10(kappa), dim).astype(np.float32)


def saddle_curvatures(dim: int, mu: float) -> tuple[np.ndarray, float]:
  """Curvatures of the ``x`` part, and ``L``.

  ``L`` is the largest curvature at the minima: ``max(lam)`` or ``2 * mu``
  (``f''(y) = -mu + 3 y**2 = 2 mu`` at ``y = +-sqrt(mu)``).
  """
  if dim == 2:
    lam = np.array([2.0], np.float32)  # x**2 - y**2 + y**4/4
  else:
    lam = np.logspace(0.0, -1.0, dim - 1).astype(np.float32)
  return lam, max(float(lam.max()), 2.0 * mu)


def _quadratic(lam, z):
  return 0.5 * jnp.sum(lam * z**2)


def _saddle(lam, mu, z):
  x, y = z[:-1], z[-1]
  return 0.5 * jnp.sum(lam * x**2) - 0.5 * mu * y**2 + 0.25 * y**4


@functools.partial(jax.jit, static_argnames=("arm", "max_steps"))
def quadratic_iterations(arm, lam, x0, lr, tol, *, max_steps):
  """Iterations until ``f <= tol * f(x0)``; ``max_steps + 1`` if never.

  Vectorized over leading axes of ``lam`` / ``x0`` / ``lr`` by the caller.
  """
  opt = arm.optimizer(lr)
  f0 = _quadratic(lam, x0)

  def cond(carry):
    x, _, t = carry
    f = _quadratic(lam, x)
    return (t < max_steps) & (f > tol * f0) & jnp.isfinite(f)

  def body(carry):
    x, state, t = carry
    updates, state = opt.update(lam * x, state)
    return optax.apply_updates(x, updates), state, t + 1

  x, _, t = jax.lax.while_loop(cond, body, (x0, opt.init(x0), 0))
  f = _quadratic(lam, x)
  return jnp.where(jnp.isfinite(f) & (f <= tol * f0), t, max_steps + 1)


@functools.partial(jax.jit, static_argnames=("arm", "max_steps"))
def saddle_steps(arm, lam, mu, z0, lr, *, max_steps):
  """``(escape step, convergence step)``; ``max_steps + 1``: never.

  Escape: the first step with ``|y| > sqrt(mu)/2``. Convergence: the step
  after which ``f - f* <= 1e-3 |f*|`` holds to the end of the run (a limit
  cycle that only passes through the tolerance does not count).
  """
  opt = arm.optimizer(lr)
  f_star = -0.25 * mu**2
  grad = jax.grad(_saddle, argnums=2)
  never = jnp.int32(max_steps + 1)

  def step(carry, t):
    z, state, escaped, last_out = carry
    updates, state = opt.update(grad(lam, mu, z), state)
    z = optax.apply_updates(z, updates)
    ok = jnp.all(jnp.isfinite(z))
    escaped = jnp.where((escaped == never) & ok
                        & (jnp.abs(z[-1]) > 0.5 * jnp.sqrt(mu)), t, escaped)
    inside = ok & (_saddle(lam, mu, z) - f_star <= 1e-3 * jnp.abs(f_star))
    last_out = jnp.where(inside, last_out, t)
    return (z, state, escaped, last_out), None

  carry = (z0, opt.init(z0), never, jnp.int32(0))
  (_, _, escaped, last_out), _ = jax.lax.scan(
      step, carry, jnp.arange(1, max_steps + 1, dtype=jnp.int32))
  converged = jnp.where(last_out == max_steps, never, last_out + 1)
  return escaped, converged


@functools.partial(jax.jit, static_argnames=("arm", "steps", "saddle"))
def curve(arm, lam, mu, z0, lr, *, steps, saddle):
  """Per-step objective (quadratic: ``f``; saddle: ``|y|``)."""
  opt = arm.optimizer(lr)

  def f(z):
    return _saddle(lam, mu, z) if saddle else _quadratic(lam, z)

  def step(carry, _):
    z, state = carry
    updates, state = opt.update(jax.grad(f)(z), state)
    z = optax.apply_updates(z, updates)
    return (z, state), (jnp.abs(z[-1]) if saddle else f(z))

  _, values = jax.lax.scan(step, (z0, opt.init(z0)), None, length=steps)
  return values


def _cell(values: np.ndarray, max_steps: int) -> str:
  """``mean +- std`` of iteration counts, or how many seeds never got there."""
  ok = values <= max_steps
  if ok.all():
    return f"{values.mean():.0f} +- {values.std():.0f}"
  if not ok.any():
    return f"never (> {max_steps})"
  return (f"{values[ok].mean():.0f} +- {values[ok].std():.0f} "
          f"({(~ok).sum()}/{values.size} never)")


def run_quadratic(cfg: Config, seeds) -> dict:
  """Iterations to tolerance, ``[arm][kappa, lr, seed]``."""
  keys = [jax.random.key(s) for s in seeds]
  x0 = jnp.stack([jax.random.normal(k, (cfg.dim,)) for k in keys])
  lams = jnp.asarray(np.stack([quadratic_curvatures(k, cfg.dim)
                               for k in cfg.kappas]))
  lrs = jnp.asarray(cfg.lr_times_l, jnp.float32)  # L = 1
  results = {}
  for arm in ARMS:
    fn = functools.partial(quadratic_iterations, arm, tol=cfg.tol,
                           max_steps=cfg.max_steps)
    per_seed = jax.vmap(fn, (None, 0, None))  # over x0
    per_lr = jax.vmap(per_seed, (None, None, 0))
    per_kappa = jax.vmap(per_lr, (0, None, None))
    results[arm] = np.asarray(per_kappa(lams, x0, lrs))
  return results


def run_saddle(cfg: Config, seeds) -> dict:
  """``(escape, reach)`` steps, ``[arm][problem][lr, seed]``."""
  results = {arm: [] for arm in ARMS}
  for dim, mu in cfg.saddles:
    lam, big_l = saddle_curvatures(dim, mu)
    z0 = []
    for s in seeds:
      kx, ky = jax.random.split(jax.random.key(s))
      z0.append(jnp.concatenate([jax.random.normal(kx, (dim - 1,)),
                                 cfg.eps * jax.random.normal(ky, (1,))]))
    z0 = jnp.stack(z0)
    lrs = jnp.asarray(cfg.lr_times_l, jnp.float32) / big_l
    for arm in ARMS:
      fn = functools.partial(saddle_steps, arm, jnp.asarray(lam),
                             jnp.float32(mu), max_steps=cfg.saddle_max_steps)
      out = jax.vmap(jax.vmap(fn, (0, None)), (None, 0))(z0, lrs)
      results[arm].append(tuple(np.asarray(o) for o in out))
  return results


def plot(cfg: Config, quad: dict, seeds, path: str) -> None:
  """Three panels: iterations vs kappa, a quadratic curve, a saddle escape."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  lr_index = cfg.lr_times_l.index(1.0) if 1.0 in cfg.lr_times_l else 0
  lr = cfg.lr_times_l[lr_index]
  styles = {"gd": "-", "gaf": "--", "matched": ":"}
  colors = {None: "k", 0.3: "tab:blue", 0.1: "tab:red"}

  ax = axes[0]
  for arm in ARMS:
    its = quad[arm][:, lr_index, :].astype(float)
    its[its > cfg.max_steps] = np.nan
    ax.errorbar(cfg.kappas, np.nanmean(its, -1), yerr=np.nanstd(its, -1),
                ls=styles[arm.kind], color=colors[arm.alpha], marker="o",
                label=arm.name, capsize=3)
  ax.set(xscale="log", yscale="log", xlabel="condition number kappa",
         ylabel=f"iterations to f <= {cfg.tol:g} f(x0)",
         title=f"Quadratic, dim {cfg.dim}, lr*L = {lr:g}")
  ax.legend(fontsize=7)

  kappa = cfg.kappas[min(2, len(cfg.kappas) - 1)]
  lam = jnp.asarray(quadratic_curvatures(kappa, cfg.dim))
  x0 = jax.random.normal(jax.random.key(seeds[0]), (cfg.dim,))
  ax = axes[1]
  for arm in ARMS:
    values = np.asarray(curve(arm, lam, 0.0, x0, jnp.float32(lr),
                              steps=cfg.curve_steps, saddle=False))
    ax.plot(values / float(_quadratic(lam, x0)), ls=styles[arm.kind],
            color=colors[arm.alpha], label=arm.name)
  ax.set(yscale="log", xlabel="iteration", ylabel="f / f(x0)",
         title=f"Quadratic, kappa {kappa:g}, lr*L = {lr:g}, seed {seeds[0]}")
  ax.set_ylim(bottom=1e-12)

  dim, mu = cfg.saddles[0]
  lam, big_l = saddle_curvatures(dim, mu)
  kx, ky = jax.random.split(jax.random.key(seeds[0]))
  z0 = jnp.concatenate([jax.random.normal(kx, (dim - 1,)),
                        cfg.eps * jax.random.normal(ky, (1,))])
  ax = axes[2]
  steps = min(cfg.curve_steps, 200)
  for arm in ARMS:
    values = np.asarray(curve(arm, jnp.asarray(lam), jnp.float32(mu), z0,
                              jnp.float32(lr / big_l), steps=steps,
                              saddle=True))
    ax.plot(values, ls=styles[arm.kind], color=colors[arm.alpha],
            label=arm.name)
  ax.axhline(0.5 * np.sqrt(mu), color="grey", lw=0.5)
  ax.set(yscale="log", xlabel="step", ylabel="|y|",
         title=f"Saddle x^2 - y^2 + y^4/4, lr*L = {lr:g}, seed {seeds[0]}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _ratio_summary(num: np.ndarray, den: np.ndarray, max_steps: int) -> str:
  """Median and range of per-seed ratios where both arms reached the goal."""
  ok = (num <= max_steps) & (den <= max_steps)
  if not ok.any():
    return "no cell where both reached it"
  r = num[ok] / np.maximum(den[ok], 1)
  return (f"median {np.median(r):.3f}, range [{r.min():.3f}, {r.max():.3f}] "
          f"over {ok.sum()} runs")


def report(cfg: Config, seeds, quad, saddle, command: str,
           seconds: float) -> str:
  """The markdown of results.md."""
  lines = [
      "# " + studies.title("theory"),
      "",
      f"Command: `{command}`  ",
      f"Seeds: {list(seeds)} (seed s: `jax.random.key(s)` draws the start)  ",
      f"Wall time: {seconds:.0f} s (CPU)",
      "",
      "Claims tested (docs/methods/gaf.md; Liu et al. arXiv:2107.04228): "
      "GAF converges faster than GD and relieves ill-conditioning and saddle "
      "points; and near 0 GAF with lr acts like GD with lr*alpha*beta. Full "
      "(deterministic) gradients; every arm uses the same grid of lr*L "
      "(L = largest positive curvature; GD is stable for lr*L < 2). "
      "Entries: mean +- std over seeds of the iteration count; "
      "`never (> N)`: not reached in N steps (or diverged); "
      "`(k/n never)`: the mean is over the other seeds.",
      "",
      f"## 1. Ill-conditioned quadratic (dim {cfg.dim})",
      "",
      "f(x) = 0.5 sum lam_i x_i^2, lam log-spaced in [1/kappa, 1], "
      f"x0 ~ N(0, I). Iterations until f <= {cfg.tol:g} f(x0); "
      f"at most {cfg.max_steps}.",
      "",
      "| kappa | lr*L | " + " | ".join(a.name for a in ARMS) + " |",
      "|---|---|" + "---|" * len(ARMS),
  ]
  for i, kappa in enumerate(cfg.kappas):
    for j, lr in enumerate(cfg.lr_times_l):
      cells = [_cell(quad[a][i, j], cfg.max_steps) for a in ARMS]
      lines.append(f"| {kappa:g} | {lr:g} | " + " | ".join(cells) + " |")
  lines += ["", "Best over the lr grid (per kappa, the lr*L with the fewest "
            "mean iterations among those where every seed converged; the "
            "matched arm's grid is the same lr*L values times alpha*beta):",
            "", "| kappa | " + " | ".join(a.name for a in ARMS) + " |",
            "|---|" + "---|" * len(ARMS)]
  for i, kappa in enumerate(cfg.kappas):
    cells = []
    for a in ARMS:
      best = None
      for j, lr in enumerate(cfg.lr_times_l):
        v = quad[a][i, j]
        if (v <= cfg.max_steps).all() and (best is None
                                           or v.mean() < best[1].mean()):
          best = (lr, v)
      cells.append("never" if best is None else
                   f"{_cell(best[1], cfg.max_steps)} (lr*L {best[0]:g})")
    lines.append(f"| {kappa:g} | " + " | ".join(cells) + " |")

  lines += ["", "Iteration ratios, GAF / GD at lr*alpha*beta and GAF / GD at "
            "lr (per seed and cell, where both converged):", ""]
  gd = quad[ARMS[0]]
  for a, b in GAF_SETTINGS:
    g = quad[Arm("gaf", a, b)]
    m = quad[Arm("matched", a, b)]
    lines.append(f"- ({a:g}, {b:g}): GAF / matched "
                 f"{_ratio_summary(g, m, cfg.max_steps)}; GAF / GD(lr) "
                 f"{_ratio_summary(g, gd, cfg.max_steps)}")

  lines += [
      "", "## 2. Saddle escape", "",
      "f = 0.5 sum lam_i x_i^2 - mu/2 y^2 + y^4/4; dim 2 is x^2 - y^2 + "
      "y^4/4 (lam = 2); dim 50 has lam log-spaced in [0.1, 1]. "
      "L = max(max lam, 2 mu), the largest curvature at the minima. Start "
      f"x0 ~ N(0, I), y0 = {cfg.eps:g} * N(0, 1). Escape: first step with "
      "|y| > sqrt(mu)/2; converged: the step after which f - f* <= 1e-3 |f*| "
      "holds to the end of the run (f* = -mu^2/4); at "
      f"most {cfg.saddle_max_steps} steps.", "",
      "| problem | lr*L | measure | " + " | ".join(a.name for a in ARMS)
      + " |", "|---|---|---|" + "---|" * len(ARMS)]
  for p, (dim, mu) in enumerate(cfg.saddles):
    for j, lr in enumerate(cfg.lr_times_l):
      for k, measure in enumerate(("escape", "converged")):
        cells = [_cell(saddle[a][p][k][j], cfg.saddle_max_steps)
                 for a in ARMS]
        lines.append(f"| dim {dim}, mu {mu:g} | {lr:g} | {measure} | "
                     + " | ".join(cells) + " |")
  lines += ["", "Escape-step ratios (per seed and cell):", ""]
  for a, b in GAF_SETTINGS:
    g = np.stack([saddle[Arm("gaf", a, b)][p][0] for p in
                  range(len(cfg.saddles))])
    m = np.stack([saddle[Arm("matched", a, b)][p][0] for p in
                  range(len(cfg.saddles))])
    d = np.stack([saddle[ARMS[0]][p][0] for p in range(len(cfg.saddles))])
    lines.append(f"- ({a:g}, {b:g}): GAF / matched "
                 f"{_ratio_summary(g, m, cfg.saddle_max_steps)}; GAF / GD(lr) "
                 f"{_ratio_summary(g, d, cfg.saddle_max_steps)}")
  lines += ["", "![theory](theory.png)", ""]
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = common.parser(__doc__, DEFAULT_OUT, seeds=10)
  args = parser.parse_args(argv)
  cfg = SMOKE if args.smoke else Config()
  seeds = tuple(range(3 if args.smoke else args.seeds))
  command = common.command("experiments.studies.theory", argv)
  t0 = time.time()
  quad = run_quadratic(cfg, seeds)
  saddle = run_saddle(cfg, seeds)
  os.makedirs(args.out, exist_ok=True)
  plot(cfg, quad, seeds, os.path.join(args.out, "theory.png"))
  seconds = time.time() - t0
  text = report(cfg, seeds, quad, saddle, command, seconds)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text)
  print(text)
  return {"quadratic": quad, "saddle": saddle, "config": cfg,
          "seeds": seeds}


if __name__ == "__main__":
  sys.exit(cli.run(main))
