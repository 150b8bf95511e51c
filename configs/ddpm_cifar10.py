"""DDPM on CIFAR-10 with the paper's setup (Ho et al. 2020, Appendix B).

UNet of 35,746,307 parameters (ch 128, ch_mult (1, 2, 2, 2), 2 residual
blocks per level, attention at 16x16, dropout 0.1, GroupNorm 32), linear
schedule 1e-4 -> 0.02 with T = 1000, eps objective, Adam 2e-4 with 5000
warm-up steps, batch 128, gradient clipping at 1, random horizontal flips,
EMA 0.9999 (no EMA warm-up, as in the paper's code), 800k steps. An
accelerator job.

Train:
  python -m launch --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10

Smoke variant (seconds, for tests):
  python -m launch --config configs/ddpm_cifar10.py:smoke --workdir /tmp/ddpm_cifar10
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "ddpm"
  c.data.name = "cifar10"
  c.data.random_flip = True
  c.model.name = "unet_ho"
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.model.num_heads = 1
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.objective = "eps"
  c.optim.name = "adam"
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = False
  c.train.steps = 800_000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.ckpt_every = 10_000
  c.train.sample_every = 50_000
  c.sample.sampler = "ancestral"
  c.sample.variance = "beta"
  c.sample.clip_x0 = True
  c.eval.num_samples = 50_000          # the FID protocol (docs/evaluation.md): 50k samples vs the train split
  if arg == "smoke":
    base.smoke_run(c)
    c.eval.num_samples = 16
    c.model.ch = 16
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.num_groups = 8
    c.diffusion.num_timesteps = 20
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of ddpm_cifar10 (allowed: smoke)")
  return c
