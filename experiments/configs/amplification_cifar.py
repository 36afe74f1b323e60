"""Gradient amplification on CIFAR (Basodi et al. 2020 and 2023).

    python -m experiments.main \
    --config=experiments/configs/amplification_cifar.py:vgg19,cifar10,random \
    --workdir=runs/amplification/vgg19_cifar10_random

Config string ``MODEL,DATASET,VARIANT``:

- MODEL: ``vgg19``, ``resnet18``, ``resnet34`` (the 2020 paper's models).
- DATASET: ``cifar10`` (2020 and 2023) or ``cifar100`` (2023).
- VARIANT:
  - ``random``: the 2020 method: a random ``ratio`` of the amplification
    points after each BatchNorm (BN worked best for VGG-19) is amplified.
  - ``cv``, ``delta``, ``cv_median``, ``delta_median``: the 2023 method with
    our reconstruction of its two measures (coefficient of variation, mean
    relative step change of each point's signal norm) and two thresholds
    (mean, median across points); see ``gaf_optax.gradient_amplification``.
  - ``sgd``: the same run without amplification.
  - ``sgd_matched``: no amplification, lr multiplied by the factor (0.2):
    with BatchNorm, amplification acts mostly as a larger effective learning
    rate, so this is the fair baseline (docs/methods/amplification.md). Its lr is set
    when the config is built; with another ``--config.amplification.factor``
    set ``--config.learning_rate`` to match.

What the papers fix: the models, CIFAR-10 (and CIFAR-100 in 2023),
amplification after BN layers, a random subset (2020) or a measure-based
one (2023), amplification only during some epochs, SGD. Everything numeric
below is ours (the papers' text with the schedule, factor and ratio could
not be retrieved): SGD momentum 0.9, batch 128, lr 0.1 (the papers stress
"higher learning rates"), weight decay 5e-4, 150 epochs with the lr divided
by 10 at epochs 50 and 100, amplification factor 2 in epochs [1, 50) (the
high-lr phase; the measures need epoch 0's statistics), layers reselected
every epoch, ratio 0.25 for ``random``.
"""

from experiments.configs import _common
from experiments.configs import default

MODELS = ("vgg19", "resnet18", "resnet34")
DATASETS = ("cifar10", "cifar100")
VARIANTS = ("random", "cv", "delta", "cv_median", "delta_median", "sgd",
            "sgd_matched")
USAGE = ("Use amplification_cifar.py:MODEL,DATASET,VARIANT with VARIANT in "
         f"{{{','.join(VARIANTS)}}}.")
DEFAULT = "vgg19,cifar10,random"


def get_config(arg: str | None = None):
  fields = _common.split_arg(arg, DEFAULT, USAGE)
  if len(fields) != 3:
    raise ValueError(f"config argument {arg!r} needs 3 fields. {USAGE}")
  model, dataset, variant = fields
  c = default.get_config()
  c.model = _common.check(model, MODELS, "model", USAGE)
  c.model_kwargs = {}
  c.act = "relu"
  c.dataset = _common.check(dataset, DATASETS, "dataset", USAGE)
  _common.check(variant, VARIANTS, "variant", USAGE)
  c.augment = True
  c.crop_padding = 4
  c.flip = True

  c.optimizer = "sgd"
  c.num_epochs = 150  # ours
  c.batch_size = 128  # ours
  c.eval_batch_size = 1024
  c.learning_rate = 0.1  # ours
  c.momentum = 0.9
  c.weight_decay = 5e-4  # ours
  c.schedule = "step"  # ours
  c.decay_epochs = (50, 100)  # ours
  c.decay_factor = 0.1
  c.warmup_epochs = 0.0

  amp = c.amplification
  amp.mode = "points"  # after each BN of the main/residual branch
  amp.factor = 2.0  # ours
  amp.start_epoch = 1  # ours
  amp.end_epoch = 50  # ours: the lr-0.1 phase
  amp.reselect = "epoch"  # ours
  amp.ratio = 0.25  # ours (random only)
  amp.threshold = "mean"
  if variant == "sgd":
    amp.enabled = False
  elif variant == "sgd_matched":
    amp.enabled = False
    c.learning_rate = c.learning_rate * amp.factor
  else:
    amp.enabled = True
    selection, _, threshold = variant.partition("_")
    amp.selection = selection
    amp.threshold = threshold or "mean"
  return c
