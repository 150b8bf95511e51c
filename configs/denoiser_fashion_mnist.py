"""One-step 50/50 denoiser on Fashion-MNIST (padded to 32x32): the "ink blot" baseline.

Predicts x0 from 0.5 x0 + 0.5 eps with a small UNet (channels 16/32/64, dense
bottleneck, no time input). Fed pure noise it makes blurry "ink blots": the
baseline that shows why DDPM takes many small steps. A few minutes on CPU.

Train:
  python -m launch --config configs/denoiser_fashion_mnist.py --workdir runs/denoiser_fashion_mnist

Smoke variant (seconds, for tests):
  python -m launch --config configs/denoiser_fashion_mnist.py:smoke --workdir /tmp/denoiser_fashion_mnist
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "denoiser"
  c.data.name = "fashion_mnist"
  c.data.pad_to_32 = True
  c.model.name = "denoiser"
  c.model.ch = 16
  c.model.ch_mult = (1, 2, 4)
  c.model.bottleneck_dim = 256
  c.model.num_groups = 8
  c.model.dropout = 0.0
  c.diffusion.denoise_mix = 0.5
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  c.train.steps = 2000
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.ckpt_every = 500
  if arg == "smoke":
    base.smoke_run(c)
    c.model.ch = 8
    c.model.bottleneck_dim = 32
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of denoiser_fashion_mnist (allowed: smoke)")
  return c
