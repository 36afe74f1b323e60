"""A small MLP on the embedded digits data set (seconds on a CPU)."""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "digits"
  c.model = "mlp"
  c.model_kwargs.features = (64, 64, 64)
  c.augment = False
  c.batch_size = 64
  c.num_epochs = 5
  c.learning_rate = 0.05
  c.weight_decay = 1e-4
  return c
