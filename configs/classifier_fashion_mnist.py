"""Fashion-MNIST classifier: the feature network of FD-fmnist and class accuracy.

Train (2000 steps of batch 128, about 5 epochs; >= 90% test accuracy):
  python -m launch --config configs/classifier_fashion_mnist.py --workdir runs/classifier_fashion_mnist

Smoke variant (seconds, for tests):
  python -m launch --config configs/classifier_fashion_mnist.py:smoke --workdir /tmp/c
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "classifier"
  c.data.name = "fashion_mnist"
  c.model.name = "classifier_cnn"
  c.model.ch = 16
  c.model.dropout = 0.3
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  c.train.steps = 2000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.ckpt_every = 500
  if arg == "smoke":
    c.model.ch = 8
    c.data.num_examples = 256
    c.train.steps = 6
    c.train.batch_size = 8
    c.train.log_every = 2
    c.train.ckpt_every = 2
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of classifier_fashion_mnist (allowed: smoke)")
  return c
