"""DDPM on MNIST (padded to 32x32) with the course MNIST UNet (width 16).

torch_peer.UNet(c_in=1, c_out=1, width=16): 810,561 parameters. Linear
schedule, T = 1000, eps objective.

Train:
  python -m launch --config configs/ddpm_mnist.py --workdir runs/ddpm_mnist

Smoke variant (seconds, for tests):
  python -m launch --config configs/ddpm_mnist.py:smoke --workdir /tmp/ddpm_mnist
"""
from configs import base


def get_config(arg=None):
  c = base.get_base()
  c.task = "ddpm"
  c.data.name = "mnist"
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
  c.train.steps = 5000
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.ckpt_every = 500
  if arg == "smoke":
    base.smoke_run(c)
    c.model.ch = 8
    c.diffusion.num_timesteps = 20
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of ddpm_mnist (allowed: smoke)")
  return c
