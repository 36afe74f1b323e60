"""Default training config; other configs override it.

Every field used by ``gaf_optax.training`` is listed here with its default,
and this is the only place a default lives: ``Trainer.from_config`` reads
the fields without defaulting them. The config is locked, so setting a
misspelled field is an error (``model_kwargs`` alone stays open: it is the
model constructor's keyword arguments).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data: "digits" (embedded), "cifar10", "cifar100", "imagenet2012",
  # "tfds:<name>" or "folder:PATH" (see gaf_optax.data).
  c.dataset = "digits"
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Class-balanced subsets and downsampling (gaf_optax.data.subset); None
  # keeps the split / the stored size.
  c.train_size = ml_collections.FieldReference(None, field_type=int)
  c.test_size = ml_collections.FieldReference(None, field_type=int)
  c.image_size = ml_collections.FieldReference(None, field_type=int)
  # Grain worker processes that read, decode and crop training and test
  # batches ahead of the step (lazy sets: ImageNet, large image folders);
  # 0 reads in the training process. The batches do not depend on it.
  c.data_workers = 0
  # Hold an in-memory training set on the devices; steps get row indices.
  c.device_data = False
  c.augment = True  # random crop with padding + horizontal flip
  c.crop_padding = 4
  c.flip = True

  # Model: a gaf_optax.models name, its keyword overrides (e.g. the MLP's
  # "dropout_rate"; masks are keyed by seed and step), the activation by
  # name (gaf_optax.training.ACTIVATIONS) and GAAF's amplitude.
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict({"features": (64, 64)})
  c.act = "relu"
  c.gaaf_amplitude = ml_collections.FieldReference(None, field_type=float)
  c.half_precision = False  # bf16 compute, f32 parameters

  # Optimizer by name: sgd, adam, sgd_gaf, adam_gaf, clip_norm, clip_value.
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.clip = 1.0  # clip_norm: global norm; clip_value: per element
  # GAF's arguments of sgd_gaf (all) and adam_gaf (alpha, beta, fn); shrink
  # and gamma are fn="adaptive"'s (None: the preset's defaults).
  c.gaf = ml_collections.ConfigDict({
      "alpha": 0.3, "beta": 4.5, "fn": "arctan", "position": "momentum",
      "shrink": ml_collections.FieldReference(None, field_type=float),
      "gamma": ml_collections.FieldReference(None, field_type=float)})
  c.weight_decay = 5e-4  # coupled (L2 added to the gradient), as the papers
  c.decay_bn_and_bias = True  # False: decay kernels only
  c.schedule = "cosine"  # cosine | step | constant
  c.warmup_epochs = 0.0
  c.decay_epochs = ()
  c.decay_factor = 0.1

  # Gradient amplification (gaf_optax.gradient_amplification).
  c.amplification = ml_collections.ConfigDict({
      "enabled": False,
      "mode": "points",  # points (the papers') | weights (ours)
      "factor": 2.0,
      "start_epoch": 1,
      "end_epoch": ml_collections.FieldReference(None, field_type=int),
      "selection": "cv",
      "threshold": "mean",
      "ratio": 0.25,
      "reselect": "epoch",
      "seed": 0,
  })

  # Per-step telemetry (gaf_optax.training.Telemetry): every `every` steps,
  # to WORKDIR/telemetry.jsonl and TensorBoard: loss, gradient norms (global
  # and per layer), GAF's saturated share (GAF optimizers), amplification
  # factors, ANAct lambdas and, with `signals`, the amplification points'
  # signal norms.
  c.telemetry = ml_collections.ConfigDict({
      "enabled": False, "every": 10, "layers": True, "signals": False})

  # Loop.
  c.num_epochs = 10
  c.batch_size = 128  # global, across devices and processes
  c.eval_batch_size = 256
  c.seed = 0
  c.num_devices = ml_collections.FieldReference(None, field_type=int)
  # The state's layout over the devices: "replicated" (data parallel) or
  # "fsdp" (parameters and optimizer buffers of at least fsdp_min_bytes
  # split over the devices, ZeRO-3; gaf_optax.training.state_shardings).
  c.sharding = "replicated"
  c.fsdp_min_bytes = 1 << 20
  # A hard kill loses at most this many steps (a minute or two of a CIFAR
  # ResNet on one GPU); SIGTERM/SIGINT checkpoint the current step first.
  c.checkpoint_every_steps = 1000  # 0: at the end (and on SIGTERM) only
  c.checkpoint_at_end = True
  c.keep_checkpoints = 3
  c.restore_step = ml_collections.FieldReference(None, field_type=int)
  # Divergence: up to this many consecutive steps with a non-finite loss or
  # gradient are skipped (optax.apply_if_finite); one more stops the run
  # with NonFiniteError. 0: the first one stops it. Checked on the host
  # every `check_every` steps, before each checkpoint and at epoch ends.
  c.skip_nonfinite_steps = 0
  c.check_every = 100
  c.tensorboard = True
  c.progress = True
  c.log_to_stdout = True

  # Multi-host: jax.distributed.initialize() with `auto` where JAX detects
  # the cluster (Cloud TPU, SLURM, Open MPI), or with coordinator_address
  # (and the fields below) given explicitly.
  c.distributed = ml_collections.ConfigDict({
      "auto": False,
      "coordinator_address": ml_collections.FieldReference(None,
                                                           field_type=str),
      "num_processes": ml_collections.FieldReference(None, field_type=int),
      "process_id": ml_collections.FieldReference(None, field_type=int),
      "local_device_ids": ml_collections.FieldReference(None,
                                                        field_type=list),
  })
  c.lock()
  c.model_kwargs.unlock()
  return c
