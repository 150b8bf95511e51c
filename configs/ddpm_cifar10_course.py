"""DDPM on CIFAR-10 with the course notebook's SimpleUNet (7,719,747 parameters).

64 -> 128 -> 256 channels, two stride-2 downsamplings, transposed-conv
upsampling, one single-head attention in the middle, time MLP 128 -> 512 ->
512, GroupNorm 8, ReLU, dropout 0.1. Linear schedule, T = 1000, eps
objective, Adam 2e-4, batch 128, random flips, EMA 0.9999 with warm-up.

Train:
  python -m launch --config configs/ddpm_cifar10_course.py --workdir runs/ddpm_cifar10_course

Smoke variant (seconds, for tests):
  python -m launch --config configs/ddpm_cifar10_course.py:smoke --workdir /tmp/ddpm_cifar10_course
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "ddpm"
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.model.name = "simple_unet"
  c.model.ch = 64
  c.model.ch_mult = (2, 4)
  c.model.num_groups = 8
  c.model.dropout = 0.1
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.objective = "eps"
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 1000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = True
  c.train.steps = 100_000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.ckpt_every = 5000
  c.train.sample_every = 20_000
  if arg == "smoke":
    base.smoke_run(c)
    c.model.ch = 8
    c.diffusion.num_timesteps = 20
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of ddpm_cifar10_course (allowed: smoke)")
  return c
