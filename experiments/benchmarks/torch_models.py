"""PyTorch twins of the CIFAR ResNets, and a per-convolution time profile.

Used by ``experiments.benchmarks.models --variants ...,torch`` (PyTorch is an
optional dependency of that variant only). The twins are our own PyTorch
code for the same architectures as ``gaf_optax.models`` (``resnet8``,
``resnet20``: He et al.'s CIFAR ResNets with option-A zero-padding
shortcuts; ``resnet18``: the pre-activation-free CIFAR ResNet-18 with 1x1
projection shortcuts), checked for equal parameter counts in
``tests/experiments/benchmarks/torch_models_test.py``.

:func:`conv_profile` answers "where does the time go": for every
convolution the Flax model runs (found by intercepting ``nn.Conv`` calls),
it times the forward convolution, its input gradient and its kernel
gradient in isolation, in JAX (jitted, NHWC/HWIO; optionally with XLA
compiler options) and in PyTorch (NCHW/OIHW), and sums them over the model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

ARCHS = {
    # name: (stage sizes, widths, block, shortcut)
    "resnet8": ((1, 1, 1), (16, 32, 64), "A"),
    "resnet20": ((3, 3, 3), (16, 32, 64), "A"),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), "B"),
}


def torch():
  try:
    import torch as t  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit(
        "the torch variant needs PyTorch (optional): pip install torch "
        "--index-url https://download.pytorch.org/whl/cpu") from e
  return t


def resnet(name: str, num_classes: int = 10):
  """The PyTorch twin of ``gaf_optax.models.get(name)``."""
  t = torch()
  tnn = t.nn
  stages, widths, shortcut = ARCHS[name]

  class Block(tnn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(cout)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(cout)
      self.pad = 0
      self.proj = None
      if stride != 1 or cin != cout:
        if shortcut == "A":
          self.pad = cout - cin
        else:
          self.proj = tnn.Sequential(
              tnn.Conv2d(cin, cout, 1, stride, bias=False),
              tnn.BatchNorm2d(cout))
      self.stride = stride

    def forward(self, x):
      out = t.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      if self.proj is not None:
        x = self.proj(x)
      elif self.pad:
        x = x[:, :, ::self.stride, ::self.stride]
        x = tnn.functional.pad(x, (0, 0, 0, 0, self.pad // 2,
                                   self.pad - self.pad // 2))
      return t.relu(out + x)

  class ResNet(tnn.Module):

    def __init__(self):
      super().__init__()
      self.stem = tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
      self.bn = tnn.BatchNorm2d(widths[0])
      layers, cin = [], widths[0]
      for i, (n, w) in enumerate(zip(stages, widths)):
        for j in range(n):
          layers.append(Block(cin, w, 2 if (i > 0 and j == 0) else 1))
          cin = w
      self.layers = tnn.Sequential(*layers)
      self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
      x = t.relu(self.bn(self.stem(x)))
      x = self.layers(x)
      return self.fc(x.mean((2, 3)))

  return ResNet()


def num_params(module) -> int:
  return sum(p.numel() for p in module.parameters())


def sgd_step(name: str, batch: int, seed: int = 0) -> Callable[[], float]:
  """One eager PyTorch training step (SGD momentum 0.9) on a fixed batch."""
  t = torch()
  t.manual_seed(seed)
  model = resnet(name).train()
  opt = t.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  x = t.randn(batch, 3, 32, 32)
  y = t.randint(0, 10, (batch,))

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    loss = t.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss)

  return step


def conv_shapes(model, image_shape) -> list[tuple]:
  """``(input NHWC shape, kernel HWIO shape, strides, padding)`` per conv."""
  found = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == "__call__":
      x = args[0]
      kernel = (*module.kernel_size, x.shape[-1], module.features)
      strides = module.strides or (1, 1)
      if isinstance(strides, int):
        strides = (strides, strides)
      found.append((tuple(x.shape), kernel, tuple(strides), module.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((1, *image_shape)),
                                      train=False))
  return found


def _median_time(fn, rounds: int) -> float:
  fn()  # warm-up (and compile)
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def conv_profile(model, batch: int, *, rounds: int = 5,
                 jax_variants: dict[str, dict | None] | None = None,
                 with_torch: bool = True) -> dict[str, dict[str, float]]:
  """Seconds per step spent in the model's convolutions, by kind.

  Args:
    model: a ``gaf_optax.models`` CIFAR model.
    batch: the batch size.
    rounds: timed calls per convolution (median).
    jax_variants: ``{name: XLA compiler options or None}``.
    with_torch: also time PyTorch's convolutions.

  Returns:
    ``{framework/variant: {"forward", "input_grad", "kernel_grad",
    "total"}}``, each summed over the model's convolutions.
  """
  jax_variants = jax_variants or {"jax": None}
  shapes = [((batch, *x[1:]), k, st, p)
            for x, k, st, p in conv_shapes(model, (32, 32, 3))]
  rng = np.random.default_rng(0)
  out = {}
  for variant, options in jax_variants.items():
    sums = dict(forward=0.0, input_grad=0.0, kernel_grad=0.0)
    for x_shape, k_shape, strides, padding in shapes:
      x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
      k = jnp.asarray(rng.standard_normal(k_shape, np.float32))
      pad = padding

      def conv(x, k, strides=strides, pad=pad):
        return jax.lax.conv_general_dilated(
            x, k, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

      g = jnp.ones(jax.eval_shape(conv, x, k).shape, jnp.float32)
      fns = {
          "forward": jax.jit(conv, compiler_options=options),
          "input_grad": jax.jit(lambda x, k, g, conv=conv: jax.vjp(
              lambda x: conv(x, k), x)[1](g)[0], compiler_options=options),
          "kernel_grad": jax.jit(lambda x, k, g, conv=conv: jax.vjp(
              lambda k: conv(x, k), k)[1](g)[0], compiler_options=options),
      }
      sums["forward"] += _median_time(
          lambda: fns["forward"](x, k).block_until_ready(), rounds)
      for kind in ("input_grad", "kernel_grad"):
        sums[kind] += _median_time(
            lambda kind=kind: fns[kind](x, k, g).block_until_ready(), rounds)
    sums["total"] = sum(sums.values())
    out[variant] = sums
  if with_torch:
    t = torch()
    f = t.nn.functional
    grad = t.nn.grad
    sums = dict(forward=0.0, input_grad=0.0, kernel_grad=0.0)
    with t.no_grad():
      for x_shape, k_shape, strides, padding in shapes:
        n, h, w, c = x_shape
        kh, kw, cin, cout = k_shape
        x = t.randn(n, c, h, w)
        k = t.randn(cout, cin, kh, kw)
        pad = ({"SAME": kh // 2, "VALID": 0}[padding]
               if isinstance(padding, str) else padding[0][0])
        y = f.conv2d(x, k, stride=strides, padding=pad)
        g = t.ones_like(y)
        sums["forward"] += _median_time(
            lambda: f.conv2d(x, k, stride=strides, padding=pad), rounds)
        sums["input_grad"] += _median_time(
            lambda: grad.conv2d_input(x.shape, k, g, stride=strides,
                                      padding=pad), rounds)
        sums["kernel_grad"] += _median_time(
            lambda: grad.conv2d_weight(x, k.shape, g, stride=strides,
                                       padding=pad), rounds)
    sums["total"] = sum(sums.values())
    out["torch"] = sums
  return out
