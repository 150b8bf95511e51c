"""Fashion-MNIST classifier: the feature network of FD-fmnist and class accuracy.

Train (2000 steps of batch 128, about 5 epochs; >= 90% test accuracy):
  python -m launch --config configs/classifier_fashion_mnist.py --workdir runs/classifier_fashion_mnist

Smoke variant (seconds, for tests):
  python -m launch --config configs/classifier_fashion_mnist.py:smoke --workdir /tmp/c

The independent check (launch/eval/evaluate.py; docs/evaluation.md): an
MLP-Mixer (core/mixer_classifier.py), built differently from the CNN on every
axis, trained on unpadded 28x28 images with random shifts of up to 1 pixel,
no flips, another seed; 4500 steps of batch 64 (4.8 epochs):
  python -m launch --config configs/classifier_fashion_mnist.py:independent --workdir runs/classifier_independent
(`independent_smoke`: the same network, tiny, for tests.)
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
  if arg in ("independent", "independent_smoke"):
    c.seed = 1
    c.data.pad_to_32 = False
    c.data.random_flip = False
    c.data.random_shift = 1
    c.model.name = "mixer"
    c.model.ch = 128
    c.model.depth = 4
    c.model.patch_size = 7
    c.model.token_mlp_dim = 32
    c.model.channel_mlp_dim = 256
    c.model.dropout = 0.0
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 200
    c.optim.decay = "cosine"
    c.optim.final_lr_factor = 0.05
    c.optim.weight_decay = 0.05
    c.train.batch_size = 64            # more updates for the same images: it underfits
    c.train.steps = 4500
  if arg == "independent_smoke":
    c.model.depth = 1
    c.model.token_mlp_dim = 8
    c.model.channel_mlp_dim = 16
    c.optim.warmup_steps = 0
  if arg in ("smoke", "independent_smoke"):
    c.model.ch = 8
    c.data.num_examples = 256
    c.train.steps = 6
    c.train.batch_size = 8
    c.train.log_every = 2
    c.train.ckpt_every = 2
  elif arg not in (None, "independent"):
    raise ValueError(f"unknown variant {arg!r} of classifier_fashion_mnist (allowed: smoke, "
                     f"independent, independent_smoke)")
  return c
