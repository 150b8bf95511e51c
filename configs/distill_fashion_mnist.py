"""Consistency distillation of the Fashion-MNIST default into a 1-8 step sampler.

Takes the trained workdir of configs/ddpm_fashion_mnist.py (`make demo`'s
model) as the teacher and trains a student of the same network, started from
the teacher's weights, by consistency distillation (Song et al. 2023;
ddpm/distill.py): the student's x0 prediction at tau_n must match the target
network's at the end of one teacher Heun step to tau_{n-1}, on a grid of N = 20
timesteps. The student samples with `sampler=consistency`, 1 to 8 network
calls (`sample.steps`; 4 by default here).

Measured (2026-12-07, Heun, N = 20, 1700 steps, 14.4 min on 2 cores): 1000
samples score FD-fmnist 5.96 with 4 steps, 7.44 with 1 (independent network
4.37 / 5.91); the teacher's SDE-20 3.27 (docs/distillation.md: the table,
the ablation, ms/image, grids).

Distil, then sample (the teacher first: `make demo`, or its train line):
  python -m launch --mode distill --config configs/distill_fashion_mnist.py --workdir runs/distill_fashion_mnist
  python -m launch --config configs/distill_fashion_mnist.py --workdir runs/distill_fashion_mnist --mode sample --config.sample.steps=4
Another teacher: --config.distill.teacher_workdir=DIR (its network and
schedule must be this config's; the error names the first key that differs).

Variants (`--config configs/distill_fashion_mnist.py:ARG`):
  conditional  the student of configs/ddpm_fashion_mnist.py:conditional
               (teacher runs/ddpm_fashion_mnist_conditional).
  smoke        seconds, for tests: the student of the :smoke DDPM in
               /tmp/ddpm_fashion_mnist:
                 python -m launch --mode distill --config configs/distill_fashion_mnist.py:smoke --workdir /tmp/distill_fashion_mnist
"""
from configs import base
from configs import ddpm_fashion_mnist

_VARIANTS = ("conditional", "smoke")


def get_config(arg=None):
  if arg not in (None, "") and arg not in _VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of distill_fashion_mnist "
                     f"(allowed: {', '.join(_VARIANTS)})")
  c = ddpm_fashion_mnist.get_config(arg or None)
  c.distill.teacher_workdir = "runs/ddpm_fashion_mnist"
  c.distill.num_intervals = 20       # with Heun: 1 step 8.64 against 13.54 at N = 40 (600 steps)
  c.distill.solver = "heun"          # the teacher's second-order step (docs/distillation.md)
  c.distill.distance = "l2"
  c.distill.target = "ema"          # the EMA (0.995) as target network (docs/distillation.md)
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.optim.final_lr_factor = 0.0
  c.optim.ema_decay = 0.995
  c.train.steps = 1700               # ~14.5 minutes on 2 CPU cores
  c.train.batch_size = 64
  c.train.ckpt_every = 300
  c.sample.sampler = "consistency"
  c.sample.steps = 4                 # 1 to 8; 4 is the best of the measured (docs/distillation.md)
  c.sample.clip_x0 = True
  c.bench.sample_batch = 64           # the 64-image grid (bench: chains and POST /generate)
  c.bench.serve_images = 64
  c.bench.ddim_steps = 4             # the teacher's 4-step DDIM, timed beside the student
  if arg == "conditional":
    c.distill.teacher_workdir = "runs/ddpm_fashion_mnist_conditional"
    c.sample.guidance = 1.0          # the student learned the conditional teacher (no guidance)
  elif arg == "smoke":
    base.smoke_run(c)
    c.bench.serve_images = 4
    c.distill.teacher_workdir = "/tmp/ddpm_fashion_mnist"
    c.distill.num_intervals = 5
  return c
