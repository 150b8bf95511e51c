"""EBM on CIFAR-10 32×32×3: IGEBM-style ResNet energy, tutorial Langevin settings.

    python -m launch --config configs/ebm_cifar10.py --workdir runs/ebm_cifar10

Tutorial-8 / IGEBM sampler and loss: replay buffer of 10000 with 5%
restarts, 60 Langevin steps of size 10, noise 0.005, gradient clamp 0.03, in
the tutorial's order (noise, then the gradient step), data noise 0.005,
L = CD + 0.1·(E⁺² + E⁻²), Adam lr 1e-4 with β1 = 0, batch 128. The energy is
the IGEBM CIFAR-10 ResNet layout (width 128, stages ×1, ×2, ×2 with two
residual blocks each, Swish, spectral normalisation).

Budget: an accelerator run (50k steps; each step is 60 forward+backward
passes of the ResNet on 128 images). Not a CPU config: use
`configs/ebm_fashion_mnist.py` there.

Variants (`--config configs/ebm_cifar10.py:ARG`):
  cnn    the tutorial/peer `CNNModel` (c_hid 32, 164,001 parameters) instead
         of the ResNet: the configuration the PyTorch peer benchmarks.
  smoke  seconds: a tiny ResNet (width 8, one stage), batch 8, buffer 32,
         5 Langevin steps, 64 examples.

Commands:
  python -m launch --config configs/ebm_cifar10.py:cnn --workdir /tmp/ebm_cifar10_cnn
  python -m launch --config configs/ebm_cifar10.py:smoke --workdir /tmp/ebm_cifar10_smoke
"""
from __future__ import annotations

import ml_collections

from configs.base import get_base
_VARIANTS = ("cnn", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config; arg None (the full run), "cnn" or "smoke"."""
  c = get_base()
  c.task = "ebm"

  c.data.name = "cifar10"
  c.data.random_flip = False

  c.model.name = "resnet_igebm"
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.activation = "swish"
  c.model.spectral_norm = True

  c.ebm.langevin_steps = 60
  c.ebm.step_size = 10.0
  c.ebm.noise_scale = 0.005
  c.ebm.grad_clip = 0.03
  c.ebm.noise_first = True             # the tutorial's order: runs compare with the peer
  c.ebm.buffer_size = 10000
  c.ebm.reinit_fraction = 0.05
  c.ebm.reg_alpha = 0.1
  c.ebm.data_noise = 0.005
  c.ebm.sample_steps = 256

  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.b1 = 0.0                     # the tutorial's Adam(betas=(0.0, 0.999))
  c.optim.b2 = 0.999
  c.optim.grad_clip = 0.1              # the tutorial's gradient_clip_val
  c.optim.ema_decay = 0.999

  c.train.steps = 50_000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.ckpt_every = 2000
  c.train.sample_every = 5000
  c.train.num_samples = 64

  c.guard.enabled = True
  c.guard.bound = 1e3
  c.guard.metrics = ("loss", "energy_pos", "energy_neg")

  c.sample.num = 64
  c.sample.sampler = "langevin"
  c.sample.steps = 0                   # 0 = ebm.sample_steps
  c.sample.use_ema = False             # the tutorial samples with the current weights

  if arg is None or arg == "":
    return c
  if arg not in _VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of ebm_cifar10 "
                     f"(allowed: {', '.join(_VARIANTS)})")
  if arg == "cnn":
    c.model.name = "cnn_tutorial"
    c.model.ch = 32
    c.ebm.buffer_size = 8192           # the tutorial's and the peer's max_len
    return c
  # smoke: seconds on CPU, for tests and a first check of the loop.
  c.data.num_examples = 64
  c.model.ch = 8
  c.model.ch_mult = (1,)
  c.model.num_res_blocks = 1
  c.ebm.langevin_steps = 5
  c.ebm.buffer_size = 32
  c.ebm.sample_steps = 8
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every = 1
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.train.num_samples = 8
  c.sample.num = 8
  c.sample.batch_size = 8
  c.eval.num_samples = 16
  c.eval.restore_num = 4
  c.eval.inpaint_steps = 3
  c.eval.denoise_steps = 2
  c.bench.repeats = 2
  return c
