"""ANAct: ResNet-50 with Swish vs normalized Swish (Peiwen et al.).

    python -m experiments.main \
        --config=experiments/configs/anact_resnet50.py:nswish,tiny_imagenet \
        --config.dataset=folder:/data/tiny-imagenet-200-folder \
        --workdir=runs/anact/resnet50_tiny_imagenet_nswish

Config string ``ACT,DATASET``:

- ACT: ``nswish`` (ANAct's normalized Swish) vs ``swish`` (the baseline);
  ``nrelu`` vs ``relu`` as the paper's other named variant.
- DATASET: ``tiny_imagenet`` (200 classes, 64x64; the paper reports NSwish
  +1.4 top-1 over Swish with ResNet-50) or ``cifar100`` (more than +1.2).

Tiny ImageNet is not in TFDS; it is read as an image folder
(``folder:PATH``, see experiments/README.md for converting the official
zip). ``tiny_imagenet`` sets the placeholder path below; pass the real one
with ``--config.dataset=folder:PATH``. Its ``val`` split (the test split's
labels are not public) serves as the test set.

The paper's training setup could not be retrieved; everything numeric is
ours: the CIFAR-style ResNet-50 (3x3 stem, no max-pool; at 64x64 its last
stage is 8x8), SGD momentum 0.9, batch 256, lr 0.1, weight decay 5e-4 on all
parameters, 1 warm-up epoch then cosine over 200 epochs, random crop with
padding 4 (CIFAR) or 8 (Tiny ImageNet) + flip. ANAct's running factor uses
the package defaults (geometric lambda, per layer). Metric: best test top-1.
"""

from experiments.configs import _common
from experiments.configs import default

ACTS = ("nswish", "swish", "nrelu", "relu")
DATASETS = {
    # Placeholder: the converted Tiny ImageNet folder (see the README).
    "tiny_imagenet": "folder:data/tiny-imagenet-200-folder",
    "cifar100": "cifar100",
}
CROP_PADDING = {"tiny_imagenet": 8, "cifar100": 4}  # ours
USAGE = ("Use anact_resnet50.py:ACT,DATASET with ACT in "
         f"{{{','.join(ACTS)}}} and DATASET in {{{','.join(DATASETS)}}}.")
DEFAULT = "nswish,tiny_imagenet"


def get_config(arg: str | None = None):
  fields = _common.split_arg(arg, DEFAULT, USAGE)
  if len(fields) != 2:
    raise ValueError(f"config argument {arg!r} needs 2 fields. {USAGE}")
  act, dataset = fields
  c = default.get_config()
  c.model = "resnet50"
  c.model_kwargs = {}
  c.act = _common.check(act, ACTS, "activation", USAGE)
  c.dataset = DATASETS[_common.check(dataset, tuple(DATASETS), "dataset",
                                     USAGE)]
  c.augment = True
  c.crop_padding = CROP_PADDING[dataset]
  c.flip = True

  c.optimizer = "sgd"
  c.num_epochs = 200  # ours
  c.batch_size = 256  # ours
  c.eval_batch_size = 1024  # ours
  c.learning_rate = 0.1  # ours
  c.momentum = 0.9
  c.weight_decay = 5e-4  # ours
  c.decay_bn_and_bias = True
  c.schedule = "cosine"  # ours
  c.warmup_epochs = 1.0  # ours
  return c
