"""The DDPM paper's released models (Ho et al. 2020), as configs of `unet_ho`.

Variants, one per checkpoint the authors released (converted to the
diffusers format on the Hugging Face hub as google/ddpm-*):

  :cifar10   google/ddpm-cifar10-32     35,746,307 parameters, 32x32
  :celebahq  google/ddpm-celebahq-256  113,673,219 parameters, 256x256
  :church    google/ddpm-church-256    (same architecture as celebahq)
  :bedroom   google/ddpm-bedroom-256   (same)
  :cat       google/ddpm-cat-256       (same)

The 256x256 models: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 residual blocks per
level, attention at 16x16 (the fifth level), GroupNorm(32, eps 1e-6), one
attention head, dropout 0 (the paper used dropout only on CIFAR-10), Adam
2e-5 with batch 64 (Appendix B). The network is the same `unet_ho` as
configs/ddpm_cifar10.py; GroupNorm eps 1e-6, the sinusoid with freq_shift 1
and TF-'SAME' downsampling are those of the released weights already.

The sampler defaults follow the released scheduler configs (`launch.convert`
overwrites them from the checkpoint's own scheduler_config.json when it
converts one): linear betas 1e-4 -> 0.02 over T = 1000, clipping of x0.

Convert a downloaded checkpoint, then use any mode on the workdir:
  python -m launch.convert diffusers ~/hf/ddpm-church-256 --workdir runs/ddpm_church
  python -m launch --config configs/ddpm_released.py:church --workdir runs/ddpm_church \\
      --mode sample --config.sample.num=16

The default variant is :cifar10. Smoke variant (the 256x256 models' six-level
structure at 32x32 and width 16, seconds, for tests):
  python -m launch --config configs/ddpm_released.py:smoke --workdir /tmp/ddpm_released

The 256x256 datasets (CelebA-HQ, LSUN) have no reader in launch/data.py:
sample, serve, bench and the sample figures work without them; training and
FID against the data need a tfds dataset prepared under the data name.
"""
from configs import base
from configs import ddpm_cifar10

# variant -> data.name of the 256x256 checkpoints.
_VARIANTS = {
    "celebahq": "celebahq_256",
    "church": "lsun_church_256",
    "bedroom": "lsun_bedroom_256",
    "cat": "lsun_cat_256",
}


def get_config(arg=None):
  if arg == "smoke":
    c = get_config("church")
    base.smoke_run(c)
    c.data.name = "cifar10"            # 32x32x3: the six levels go down to 1x1
    c.model.ch = 16
    c.model.num_res_blocks = 1
    c.model.num_groups = 8
    c.model.attn_resolutions = (2,)    # the fifth level, as 16x16 is at 256x256
    c.diffusion.num_timesteps = 20
    c.eval.num_samples = 16
    return c
  if arg in (None, "cifar10"):
    c = ddpm_cifar10.get_config()
    # The released CIFAR-10 scheduler (fixed_large, as the paper's CIFAR-10 FID).
    c.sample.variance = "beta"
    return c
  if arg not in _VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of ddpm_released "
                     f"(allowed: cifar10, {', '.join(_VARIANTS)}, smoke)")
  # The 256x256 models: the CIFAR-10 config with the LSUN / CelebA-HQ settings.
  c = ddpm_cifar10.get_config()
  c.data.name = _VARIANTS[arg]
  c.model.ch_mult = (1, 1, 2, 2, 4, 4)
  c.model.dropout = 0.0
  c.optim.lr = 2e-5
  c.train.batch_size = 64
  c.train.steps = 500_000
  c.train.num_samples = 16
  c.sample.num = 16
  c.sample.batch_size = 16
  c.sample.variance = "beta_tilde"     # the released 256x256 schedulers: fixed_small
  c.eval.num_samples = 50_000
  c.bench.sample_batch = 4
  return c
