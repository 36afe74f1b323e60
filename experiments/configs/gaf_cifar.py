"""GAF on CIFAR-10/100, the official code's setup (Liu et al., TNNLS).

    python -m experiments.main \
        --config=experiments/configs/gaf_cifar.py:resnet18,cifar10,0.1,20 \
        --workdir=runs/gaf_cifar/resnet18_cifar10_a0.1_b20

Config string ``MODEL,DATASET,VARIANT``:

- MODEL: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
  ``preact_resnet18``, ``vgg16``, ``densenet121``, ``mobilenet_v2``
  (the CIFAR models of kuangliu's pytorch-cifar, which the official code
  uses).
- DATASET: ``cifar10`` or ``cifar100``.
- VARIANT: ``ALPHA,BETA`` for GAF (``sgd_gaf`` = SGD_atanMom: arctan on the
  momentum output); the papers' pairs are ``0.1,20`` and ``0.2,10``. Or a
  baseline: ``sgd`` (lr 0.1), ``sgd_matched`` (lr 0.2 = 0.1 * alpha * beta,
  the fair baseline), ``clip_norm`` (0.1*pi/2) or ``clip_value``
  (0.01*pi/2).

Setup (from the official code, docs/methods/gaf.md): SGD momentum 0.9,
batch 256, lr 0.1, coupled weight decay 5e-4 on all parameters, 1 warm-up
epoch then cosine annealing to 0 over 200 epochs, random crop 32 with
padding 4 + horizontal flip. The paper's metric is the best test top-1
(``best_test_accuracy`` in ``metrics.jsonl``). Ours: the warm-up is linear
from 0 (optax), as is evaluating the full test set every epoch.
"""

from experiments.configs import _common
from experiments.configs import default

MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "preact_resnet18",
          "vgg16", "densenet121", "mobilenet_v2")
DATASETS = ("cifar10", "cifar100")
USAGE = ("Use gaf_cifar.py:MODEL,DATASET,ALPHA,BETA or "
         "gaf_cifar.py:MODEL,DATASET,{sgd,sgd_matched,clip_norm,clip_value}.")
DEFAULT = "resnet18,cifar10,0.1,20"


def get_config(arg: str | None = None):
  fields = _common.split_arg(arg, DEFAULT, USAGE)
  if len(fields) < 3:
    raise ValueError(f"config argument {arg!r} has too few fields. {USAGE}")
  model, dataset, variant = fields[0], fields[1], fields[2:]
  c = default.get_config()
  c.model = _common.check(model, MODELS, "model", USAGE)
  c.model_kwargs = {}
  c.act = "relu"
  c.dataset = _common.check(dataset, DATASETS, "dataset", USAGE)
  c.augment = True
  c.crop_padding = 4
  c.flip = True

  c.num_epochs = 200
  c.batch_size = 256  # global: 8 devices x 32, or 1 x 256
  c.eval_batch_size = 1024  # any multiple of the device count (ours)
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 5e-4
  c.decay_bn_and_bias = True  # PyTorch SGD(weight_decay=...) decays all
  c.schedule = "cosine"
  c.warmup_epochs = 1.0
  c.half_precision = False  # the official runs are float32
  _common.set_gaf_variant(c, variant, USAGE)
  return c
