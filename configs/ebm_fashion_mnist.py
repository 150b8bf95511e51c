"""EBM on Fashion-MNIST 28×28: the tutorial's CNN energy, the CPU default.

    python -m launch --config configs/ebm_fashion_mnist.py --workdir runs/ebm_fashion_mnist

The UvA tutorial-8 network and optimiser (CNN energy with c_hid 32, Swish;
60 Langevin steps of size 10, noise 0.005, gradient clamp 0.03; data noise
0.005; L = CD + 0.1·(E⁺² + E⁻²); Adam lr 1e-4 with β1 = 0; gradient clipping
0.1), on Fashion-MNIST at its own 28×28 (the first convolution pads by 4, as
the tutorial's MNIST model), trained with non-persistent short-run chains
(Nijkamp et al. 2019): every chain starts from U[-1, 1] noise
(ebm.reinit_fraction = 1.0, so the replay buffer is never read), and
sampling from noise runs 80 steps of the same dynamics (ebm.sample_steps).
The tutorial's persistent buffer (5% restarts, samples of 256 steps from
noise) drifted to a few classes; short-run chains cover them all.

Budget: 1600 steps of batch 128 (~3.4 epochs; nearly all of the time is
the 60-step chain), plus checkpoints and four sample grids. The divergence
guard is on: the tutorial's energies stay within a few units, so |loss| or
|E| above 1e3 means the run blew up.

Measured (docs/ebm.md): 1600 steps in 929 s of training loop on 2 CPU cores,
FD-fmnist 10.85 / class entropy 0.897; 30 minutes (3175 steps) 5.97 / 0.935.

Variants (`--config configs/ebm_fashion_mnist.py:ARG`):
  smoke              seconds: c_hid 8, batch 8, buffer 32, 5 Langevin steps, 64 examples.
  conditional        JEM (Grathwohl et al. 2020): the same CNN with 10 outputs, E(x, y) =
                     -f(x)[y] and E(x) = -logsumexp_y f(x)[y]; short-run chains on E(x, y)
                     (ebm.conditional_sampling; each chain's label from its buffer slot)
                     and the hybrid loss CD + 1.0 · cross-entropy (ebm.ce_weight).
                     Samples classes in turn (sample.label = -1; K for class K), and is a
                     classifier too. Measured at 30 minutes (docs/ebm.md, row jem_short_run):
                     88.9% of class-cycling samples are the requested class (94.8% for
                     the independent network). Its marginal E(x) is not a sampler.
  conditional_smoke  the conditional model at the smoke size (tests).

Commands:
  python -m launch --config configs/ebm_fashion_mnist.py:smoke --workdir /tmp/ebm_fashion_mnist_smoke
  python -m launch --config configs/ebm_fashion_mnist.py:conditional --workdir runs/ebm_fashion_mnist_conditional
  python -m launch --config configs/ebm_fashion_mnist.py:conditional --workdir runs/ebm_fashion_mnist_conditional --mode sample --config.sample.label=3
"""
from __future__ import annotations

import ml_collections

from configs.base import get_base
_VARIANTS = ("smoke", "conditional", "conditional_smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config; arg None (the full CPU run) or one of `_VARIANTS`."""
  c = get_base()
  c.task = "ebm"

  c.data.name = "fashion_mnist"
  c.data.pad_to_32 = False

  c.model.name = "cnn_tutorial"
  c.model.ch = 32                      # the tutorial's hidden_features (c_hid)
  c.model.activation = "swish"

  c.ebm.langevin_steps = 60
  c.ebm.step_size = 10.0
  c.ebm.noise_scale = 0.005
  c.ebm.grad_clip = 0.03
  c.ebm.buffer_size = 8192
  c.ebm.reinit_fraction = 1.0          # short-run: every chain from noise (the tutorial: 0.05)
  c.ebm.reg_alpha = 0.1
  c.ebm.data_noise = 0.005
  c.ebm.sample_steps = 80              # from noise (the tutorial's buffer recipe: 256)

  c.optim.name = "adam"
  c.optim.lr = 1e-4
  c.optim.b1 = 0.0                     # the tutorial's Adam(betas=(0.0, 0.999))
  c.optim.b2 = 0.999
  c.optim.grad_clip = 0.1              # the tutorial's gradient_clip_val
  c.optim.ema_decay = 0.999

  c.train.steps = 1600
  c.train.batch_size = 128
  c.train.log_every = 25
  c.train.ckpt_every = 200
  c.train.sample_every = 400
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
    raise ValueError(f"unknown variant {arg!r} of ebm_fashion_mnist "
                     f"(allowed: {', '.join(_VARIANTS)})")
  if arg in ("conditional", "conditional_smoke"):
    c.model.num_classes = 10
    c.ebm.conditional_sampling = True
    c.ebm.ce_weight = 1.0
    c.sample.label = -1                # classes in turn
  if arg == "conditional":
    return c
  # smoke: seconds on CPU, for tests and a first check of the loop.
  c.data.num_examples = 64
  c.model.ch = 8
  c.ebm.langevin_steps = 5
  c.ebm.buffer_size = 32
  c.ebm.reinit_fraction = 0.5          # chains read the buffer too (resume tests check it)
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
  c.bench.warmup = 1
  c.bench.matmul_size = 128
  return c
