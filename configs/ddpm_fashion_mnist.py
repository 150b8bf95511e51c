"""DDPM on Fashion-MNIST (padded to 32x32): the CPU-friendly default.

The course MNIST UNet (unet_small, width 16, ~0.81M parameters), linear
schedule with T = 1000, eps objective, Adam 1e-3 with warm-up and clipping,
EMA 0.999 with warm-up. About 30 minutes on 2 CPU cores; a starting point to
be tuned.

Train:
  python -m launch --config configs/ddpm_fashion_mnist.py --workdir runs/ddpm_fashion_mnist

Smoke variant (seconds, for tests):
  python -m launch --config configs/ddpm_fashion_mnist.py:smoke --workdir /tmp/ddpm_fashion_mnist
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "ddpm"
  c.data.name = "fashion_mnist"
  c.data.pad_to_32 = True
  c.model.name = "unet_small"
  c.model.ch = 16
  c.model.num_heads = 4
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.objective = "eps"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  c.optim.ema_warmup = True
  c.train.steps = 2500
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.num_samples = 64
  c.sample.sampler = "ancestral"
  c.sample.variance = "beta"
  c.sample.clip_x0 = True
  if arg == "smoke":
    base.smoke_run(c)
    c.model.ch = 8
    c.diffusion.num_timesteps = 20
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of ddpm_fashion_mnist (allowed: smoke)")
  return c
