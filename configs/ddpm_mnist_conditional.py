"""Class-conditional DDPM on MNIST (padded to 32x32), classifier-free guidance.

The course's UNetConditional (width 16): a label embedding added with the
time encoding after every level. Labels are dropped with probability 0.1
during training (the null label, index 10, adds 64 parameters to the course's
811,201), so samples can be guided: `--config.sample.guidance=3.0`
(1.0 = the plain conditional model). sample.label = -1 samples the classes in
turn.

Train:
  python -m launch --config configs/ddpm_mnist_conditional.py --workdir runs/ddpm_mnist_conditional

The course's exact setup (no label dropout, no guidance, 811,201 parameters):
  python -m launch --config configs/ddpm_mnist_conditional.py:course --workdir runs/ddpm_mnist_conditional_course

Smoke variant (seconds, for tests):
  python -m launch --config configs/ddpm_mnist_conditional.py:smoke --workdir /tmp/ddpm_mnist_conditional
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
  c.model.conditional = True
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.objective = "eps"
  c.diffusion.class_dropout = 0.1
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  c.train.steps = 5000
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.sample.label = -1
  c.sample.guidance = 1.0
  if arg == "course":
    c.diffusion.class_dropout = 0.0
  elif arg == "smoke":
    c.model.ch = 8
    c.data.num_examples = 64
    c.diffusion.num_timesteps = 20
    c.optim.warmup_steps = 0
    c.train.steps = 2
    c.train.batch_size = 8
    c.train.log_every = 1
    c.train.ckpt_every = 2
    c.train.num_samples = 4
    c.sample.num = 4
    c.sample.batch_size = 4
    c.sample.guidance = 2.0
    c.eval.num_samples = 16
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of ddpm_mnist_conditional "
                     "(allowed: course, smoke)")
  return c
