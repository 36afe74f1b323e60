"""GAF on ImageNet, the official code's setup (Liu et al., TNNLS).

    python -m experiments.main \
        --config=experiments/configs/gaf_imagenet.py:resnet18,0.1,20 \
        --workdir=runs/gaf_imagenet/resnet18_a0.1_b20 \
        --config.data_dir=DATA_DIR

Config string ``MODEL,VARIANT``:

- MODEL: ``resnet18``, ``resnet34``, ``se_resnet18`` (the paper's GAF runs)
  or ``resnet50`` (the official code's clipping baselines); torchvision
  architectures (``imagenet_*`` in ``gaf_optax.models``).
- VARIANT: ``ALPHA,BETA`` for GAF (``sgd_gaf`` = SGD_atanMom); the papers'
  pairs are ``0.1,20`` and ``0.2,10``. Or a baseline: ``sgd`` (lr 0.2),
  ``sgd_matched`` (lr 0.4 = 0.2 * alpha * beta), ``clip_norm``,
  ``clip_value``.

Setup (from the official code, docs/methods/gaf.md): 150 epochs, 5 linear
warm-up epochs then cosine, lr 0.2 for a global batch of 1024 (8 x 128),
SGD momentum 0.9, weight decay 4e-5 on kernels only (no decay on BatchNorm
or biases); Inception random-resized crop 224 + flip for training, resize 256
+ centre crop 224 for the validation split; the metric is the last epoch's
top-1 (``last_test_accuracy``). Ours: bfloat16 compute with float32
parameters (``half_precision``; set ``--config.half_precision=False`` for
the official float32) and the eval batch. Checkpoints: the default's every
1,000 steps (under an epoch of 1,251), and on SIGTERM.
"""

from experiments.configs import _common
from experiments.configs import default

MODELS = {
    "resnet18": "imagenet_resnet18",
    "resnet34": "imagenet_resnet34",
    "se_resnet18": "imagenet_se_resnet18",
    "resnet50": "imagenet_resnet50",
}
USAGE = ("Use gaf_imagenet.py:MODEL,ALPHA,BETA or "
         "gaf_imagenet.py:MODEL,{sgd,sgd_matched,clip_norm,clip_value}.")
DEFAULT = "resnet18,0.1,20"


def get_config(arg: str | None = None):
  fields = _common.split_arg(arg, DEFAULT, USAGE)
  if len(fields) < 2:
    raise ValueError(f"config argument {arg!r} has too few fields. {USAGE}")
  model, variant = fields[0], fields[1:]
  c = default.get_config()
  c.model = MODELS[_common.check(model, tuple(MODELS), "model", USAGE)]
  c.model_kwargs = {}
  c.act = "relu"
  c.dataset = "imagenet2012"  # TFDS; the validation split is the test set
  c.augment = True
  c.crop_padding = 0  # the random-resized crop is done on the host
  c.flip = True

  c.num_epochs = 150
  c.batch_size = 1024  # global: 8 x 128 as in the official runs
  c.eval_batch_size = 1024
  c.learning_rate = 0.2
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 4e-5
  c.decay_bn_and_bias = False  # kernels only
  c.schedule = "cosine"
  c.warmup_epochs = 5.0
  c.half_precision = True  # ours: bf16 compute, f32 parameters
  _common.set_gaf_variant(c, variant, USAGE)
  return c
