"""Benchmark: host input pipeline for ImageNet-sized JPEGs, vs PyTorch's.

    python -m experiments.benchmarks.input_pipeline [--images 2000]
        [--workers 0,1,2] [--batch 64] [--rounds 3] [--folder DIR]

Writes (once, into ``--folder``; a temporary folder by default) a folder in
the ImageNet / torchvision ImageFolder layout: ``--images`` training JPEGs
of about 500x375 (sizes vary from 400x300 to 600x450, smooth content plus
noise, quality 90) in 10 classes. Then times one epoch of training batches
(decode + random-resized crop to 224 + flip, batch ``--batch``) through:

- ``gaf_optax``: ``data.folder(DIR, lazy=True)`` read by ``data.batches``
  with ``num_workers`` Grain worker processes (0: in the calling process);
  what ``Trainer(data_workers=N)`` does. The flip runs in numpy on the host
  here (the trainer flips on the device, inside its step);
- ``torch``: a ``torch.utils.data.Dataset`` doing what torchvision's
  ``ImageFolder`` with ``RandomResizedCrop(224)``, ``RandomHorizontalFlip``
  and ``PILToTensor`` does (Pillow decode, ``convert("RGB")``, crop box,
  resize, flip), read by a ``DataLoader`` with the same worker count
  (optional: needs PyTorch; skipped without it). Both sides do the same
  decode and the same bicubic resize (``gaf_optax``'s crop; torchvision's
  default is bilinear), so the comparison is of the pipelines.

Rounds are interleaved (every pipeline once per round) and the medians
printed: images/s over the whole epoch (worker start-up included) and after
the first batch (steady state), the ratio to PyTorch at equal workers, and
the peak resident memory of the process and of its worker processes.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

from experiments import cli
from gaf_optax import data

NUM_CLASSES = 10


def make_folder(root: str, num_images: int, seed: int = 0) -> str:
  """ImageNet-like JPEGs in ``root/{train,test}/<class>/`` (kept if there)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  marker = os.path.join(root, f".complete-{num_images}")
  if os.path.exists(marker):
    return root
  rng = np.random.default_rng(seed)
  for split, count in (("train", num_images), ("test", NUM_CLASSES)):
    for k in range(count):
      cls = f"n{k % NUM_CLASSES:08d}"
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      w, h = int(rng.integers(400, 601)), int(rng.integers(300, 451))
      coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3),
                            dtype=np.uint8)
      smooth = np.asarray(Image.fromarray(coarse).resize(
          (w, h), Image.Resampling.BICUBIC), np.int16)
      noisy = smooth + rng.integers(-12, 13, smooth.shape, dtype=np.int16)
      Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
          os.path.join(root, split, cls, f"{k:06d}.JPEG"), quality=90)
  open(marker, "w").close()
  return root


def _flip(batch, rng):
  images = batch["image"]
  flip = rng.random(len(images)) < 0.5
  images[flip] = images[flip, :, ::-1]
  return images


def ours(ds, batch: int, workers: int) -> tuple[float, float]:
  """Seconds for one epoch, and for it after the first batch."""
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  it = data.batches(ds.train, batch, seed=0, epoch=0, num_workers=workers)
  t1 = None
  for b in it:
    _flip(b, rng)
    if t1 is None:
      t1 = time.perf_counter()
  return time.perf_counter() - t0, time.perf_counter() - t1


def torch_loader(root: str, batch: int, workers: int):
  """A DataLoader over the folder, torchvision-style (see module doc)."""
  import torch  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from gaf_optax.data import _augment  # pylint: disable=import-outside-toplevel

  files = []
  for cls in sorted(os.listdir(os.path.join(root, "train"))):
    for f in sorted(os.listdir(os.path.join(root, "train", cls))):
      files.append((os.path.join(root, "train", cls, f), int(cls[1:])))

  class Folder(torch.utils.data.Dataset):

    def __len__(self):
      return len(files)

    def __getitem__(self, i):
      path, label = files[i]
      with Image.open(path) as im:
        image = np.asarray(im.convert("RGB"))
      rng = np.random.default_rng([0, i, torch.randint(1 << 30, ()).item()])
      image = _augment.random_resized_crop(image, rng, size=224)
      if torch.rand(()) < 0.5:
        image = image[:, ::-1]
      return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), \
          label

  return torch.utils.data.DataLoader(
      Folder(), batch_size=batch, shuffle=True, num_workers=workers,
      drop_last=True, persistent_workers=False)


def torch_epoch(root: str, batch: int, workers: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  t1 = None
  for _ in torch_loader(root, batch, workers):
    if t1 is None:
      t1 = time.perf_counter()
  return time.perf_counter() - t0, time.perf_counter() - t1


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--folder", default=None,
                 help="where the JPEGs are written (kept between runs)")
  args = p.parse_args(argv)
  workers = [int(w) for w in args.workers.split(",")]
  root = args.folder or os.path.join(tempfile.gettempdir(),
                                     "gaf_optax_input_pipeline")
  t = time.perf_counter()
  make_folder(root, args.images)
  print(f"folder {root}: {args.images} JPEGs ready in "
        f"{time.perf_counter() - t:.1f} s")
  ds = data.folder(root, lazy=True)
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    have_torch = True
  except ImportError:
    have_torch = False
    print("PyTorch is not installed: the DataLoader column is skipped "
          "(pip install torch)")
  n = (args.images // args.batch) * args.batch
  times: dict[tuple[str, int], list[tuple[float, float]]] = {}
  for _ in range(args.rounds):
    for w in workers:
      times.setdefault(("gaf_optax", w), []).append(ours(ds, args.batch, w))
      if have_torch:
        times.setdefault(("torch", w), []).append(
            torch_epoch(root, args.batch, w))
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"CPUs; {n} images/epoch, batch {args.batch}, {args.rounds} rounds "
        "(medians)")
  print("| pipeline | workers | images/s (epoch) | images/s (after 1st "
        "batch) | vs torch (epoch) | vs torch (after 1st) |")
  print("|---|---|---|---|---|---|")
  rate = {}
  for (name, w), runs in times.items():
    whole = n / statistics.median(r[0] for r in runs)
    steady = (n - args.batch) / statistics.median(r[1] for r in runs)
    rate[name, w] = (whole, steady)
  for (name, w), (whole, steady) in rate.items():
    ref = rate.get(("torch", w))
    ratio = (f"{whole / ref[0]:.2f}x | {steady / ref[1]:.2f}x" if ref
             else "- | -")
    print(f"| {name} | {w} | {whole:.0f} | {steady:.0f} | {ratio} |")
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  print(f"peak RSS: this process {own:.0f} MiB, largest worker "
        f"{kids:.0f} MiB")
  return rate


if __name__ == "__main__":
  sys.exit(cli.run(main))
