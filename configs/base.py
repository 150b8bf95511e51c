"""Shared base config. Experiment files start from `get_base()` and override.

Sections, by concern (every experiment has all of them, so a key typed on the
command line is checked against one schema):

  task      "ddpm" | "denoiser" | "ebm" | "classifier"
  seed      one integer; every random stream is derived from it
  data      dataset name and preprocessing
  model     network name and its fields (the task turns them into typed
            module fields; the network never sees the ConfigDict)
  diffusion DDPM noise schedule, objective, conditioning
  distill   consistency distillation of a trained DDPM into a few-step student
  ebm       Langevin dynamics, replay buffer, contrastive-divergence loss
  optim     optimiser, learning-rate schedule, clipping, EMA
  train     budgets and the cadence of logs, checkpoints and samples
  guard     divergence guard (restore the last good checkpoint, lower the
            learning rate, reseed) used by tasks that can blow up
  sample    defaults of `--mode sample` and of the periodic sample grids
  eval      evaluation protocol of `--mode evaluate`
  bench     `--mode bench` sizes
  mesh      device mesh
  serve     `--mode serve`: host, port, limits, warm-up (as configs/serve.py)
"""
from __future__ import annotations

import ml_collections

from configs import serve


def get_base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "ddpm"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"        # fashion_mnist | mnist | cifar10
  c.data.split = "train"
  c.data.eval_split = "test"
  c.data.pad_to_32 = False             # MNIST family: 28x28 -> 32x32 (pad with -1, black)
  c.data.random_flip = False           # horizontal flips (the DDPM paper's CIFAR-10)
  c.data.random_shift = 0              # classifier task: random translations of up to N pixels
  c.data.data_dir = ""                 # tfds data_dir; "" = tfds default (~/tensorflow_datasets)
  c.data.manual_dir = ""               # IDX files of Fashion-MNIST/MNIST; "" = Debian's path
  c.data.num_examples = -1             # >0: use only the first N examples (smoke runs)

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet_small"
  c.model.ch = 16                      # base width
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.0
  c.model.num_groups = 8
  c.model.conditional = False          # class-conditional (label embedding)
  c.model.num_heads = 4                # attention heads (unet_small: 4; unet_ho: 1 in the paper)
  c.model.bottleneck_dim = 256         # denoiser: width of the dense bottleneck
  c.model.gelu_approximate = False     # unet_small: tanh GELU (faster on CPU, changes the model)
  c.model.dtype = "float32"            # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.activation = "swish"         # EBM energy nets: swish | leaky_relu
  c.model.spectral_norm = False        # EBM ResNet: spectral normalisation of every kernel
  c.model.num_classes = 0              # EBM energy nets: K per-class energies E(x, y) (JEM; K = the
                                       # dataset's classes), 0 = one scalar energy
  c.model.depth = 4                    # mixer (independent classifier): Mixer blocks
  c.model.patch_size = 7               # mixer: side of its square patches
  c.model.token_mlp_dim = 32           # mixer: hidden width of the token-mixing MLPs
  c.model.channel_mlp_dim = 256        # mixer: hidden width of the channel-mixing MLPs

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"      # linear | cosine
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  # linear: beta_start/beta_end are for T = this; another T scales both by
  # this / T (Improved DDPM), so that x_T ends near N(0, I) for any T (betas
  # clipped at 0.999). 0 = use beta_start/beta_end as given for every T.
  c.diffusion.beta_reference_timesteps = 1000
  c.diffusion.cosine_s = 0.008         # cosine schedule offset s (Nichol & Dhariwal)
  c.diffusion.objective = "eps"        # eps | x0 | v
  c.diffusion.min_snr_gamma = 0.0      # > 0: min-SNR-gamma loss weights (Hang et al. 2023); 0 = simple loss
  c.diffusion.t_sampling = "uniform"   # uniform | importance: t drawn in proportion to the loss weights (same loss)
  c.diffusion.class_dropout = 0.0      # label dropout for classifier-free guidance
  c.diffusion.denoise_mix = 0.5        # denoiser task: x_in = (1-m) x0 + m eps

  # Consistency distillation of a trained DDPM (task "ddpm", ddpm/distill.py):
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""       # a trained DDPM workdir; "" = ordinary DDPM training
  c.distill.num_intervals = 40         # N: the grid of the teacher's DDIM steps (trailing spacing)
  c.distill.distance = "l2"            # l2 | huber (pseudo-Huber, Song & Dhariwal 2023)
  c.distill.target = "ema"             # ema (the student's EMA) | online (stop-gradient of the student)
  c.distill.solver = "ddim"            # the teacher's ODE step: ddim (Euler, 1 call) | heun (2 calls)

  c.ebm = ml_collections.ConfigDict()
  c.ebm.langevin_steps = 60
  c.ebm.step_size = 10.0
  c.ebm.noise_scale = 0.005
  c.ebm.grad_clip = 0.03
  c.ebm.buffer_size = 8192
  c.ebm.reinit_fraction = 0.05
  c.ebm.reg_alpha = 0.1
  c.ebm.data_noise = 0.005
  c.ebm.noise_first = False            # Langevin: True = tutorial's order (noise, then gradient)
  c.ebm.sample_steps = 256             # Langevin steps of sample() from noise when sample.steps = 0
  c.ebm.conditional_sampling = False   # JEM (model.num_classes > 0): chains on E(x, y) with a
                                       # per-class replay buffer, else on the marginal E(x)
  c.ebm.ce_weight = 0.0                # JEM: weight of the cross-entropy -log p(y | x) (0 = off)
  # IGEBM / Improved CD options against mode collapse (ebm/cd.py), all off by default:
  c.ebm.num_chains = 0                 # negative chains per step; 0 = train.batch_size
  c.ebm.anneal = "constant"            # Langevin step size and noise over a chain: constant | linear | geometric
  c.ebm.step_size_final_factor = 1.0   # last step's step_size / step_size (annealed chains)
  c.ebm.noise_final_factor = 1.0       # last step's noise_scale / noise_scale (annealed chains)
  c.ebm.augment_shift = 0              # ICD augmentation of buffer states: random shift by <= N px
  c.ebm.augment_flip = False           # ... random horizontal flip
  c.ebm.augment_noise = 0.0            # ... Gaussian pixel noise of this std
  c.ebm.kl_weight = 0.0                # ICD's KL term through the last Langevin step (ICD: 1.0)
  c.ebm.entropy_weight = 0.0           # ICD's nearest-neighbour entropy term (ICD: 0.3)
  c.ebm.entropy_reference = 100        # buffer states the entropy term compares with (ICD: 100)
  c.ebm.kl_chains = 0                  # chains in the KL/entropy terms; 0 = all (ICD MNIST: 32)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"                # adam | adamw
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 0
  c.optim.decay = "constant"           # after warm-up: constant | cosine (to final_lr_factor*lr at train.steps)
  c.optim.final_lr_factor = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0              # global-norm clip; 0 = off
  c.optim.ema_decay = 0.9999
  c.optim.ema_warmup = True            # decay_t = min(decay, (1 + t) / (10 + t))
  c.optim.power_ema_stds = ()          # post-hoc EMA: sigma_rel of the power-function EMAs to
                                       # track, e.g. (0.05, 0.10) (launch/posthoc_ema.py)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 10_000
  c.train.batch_size = 128             # global batch, over all devices and hosts
  c.train.log_every = 50
  c.train.ckpt_every = 1000
  c.train.keep_ckpts = 3
  c.train.restore_step = -1            # checkpoint to resume from / load (-1 = the newest); an
                                       # older N (after a damaged checkpoint) deletes the newer ones
  c.train.sample_every = 0             # 0 = only at the end
  c.train.num_samples = 64
  c.train.steps_per_dispatch = 1       # >1: that many train steps in one compiled scan
  c.train.ema_snapshot_every = 0       # >0: save the power EMAs every that many steps
  c.train.time_budget_s = 0.0          # >0: stop (and save) after this much wall time of the
                                       # loop in this invocation (equal-CPU-time comparisons)

  c.guard = ml_collections.ConfigDict()
  c.guard.enabled = False
  c.guard.bound = 1e4                  # |metric| above this (or non-finite) = diverged
  c.guard.metrics = ("loss",)
  c.guard.lr_factor = 0.5
  c.guard.max_restarts = 3

  c.sample = ml_collections.ConfigDict()
  c.sample.num = 64
  c.sample.sampler = "ancestral"       # task-specific names (see the task)
  c.sample.steps = 0                   # 0 = the task's default
  c.sample.eta = 0.0
  c.sample.spacing = "uniform"         # ddim timestep spacing: uniform | quadratic
  c.sample.variance = "beta"           # beta | beta_tilde
  c.sample.clip_x0 = True
  c.sample.label = -1                  # -1 = all classes in turn (conditional DDPM and EBM)
  c.sample.guidance = 1.0
  c.sample.batch_size = 256
  c.sample.use_ema = True
  c.sample.ema_sigma_rel = 0.0         # >0: sample with the post-hoc EMA of that width (needs snapshots)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 1000
  c.eval.classifier_workdir = ""
  # Refuse to score FD-fmnist with a feature network whose test accuracy is
  # lower (a weak one can put samples below the real-data floor); the trained
  # classifier_fashion_mnist has 0.906. 0 = score anyway (with a warning).
  c.eval.min_classifier_accuracy = 0.85
  # The independent check (launch/eval/evaluate.py, docs/evaluation.md): FD, class histogram and
  # class accuracy in a differently-built network, configs/classifier_fashion_mnist.py:independent;
  # "" = skip (logged). Its own accuracy bar, as min_classifier_accuracy.
  c.eval.independent_workdir = ""
  c.eval.min_independent_accuracy = 0.85
  # Mean L2 distance (pixels in [0, 1]) from each sample, and from as many test
  # images, to its nearest among the first N training images; 0 = skip.
  c.eval.nearest_train_images = 10_000
  c.eval.inception_weights = ""       # FID/IS Inception .npz (python -m launch.eval.inception convert)
  c.eval.ddpm_workdir = ""            # denoiser figures: DDPM samples from the same noise
  c.eval.nll_images = 256             # DDPM: test images scored by the variational bound
                                      # (nll_bpd, bits/dim); 0 = skip
  c.eval.restore_num = 256            # EBM: test images inpainted and denoised (MSE/PSNR); 0 = skip
  c.eval.inpaint_box = ()             # EBM: (top, left, height, width); () = centred, half the side
  c.eval.inpaint_steps = 60           # EBM: Langevin steps filling the box from U[-1, 1]
  c.eval.denoise_sigma = 0.3          # EBM: std of the Gaussian noise to remove (as the OOD set)
  c.eval.denoise_steps = 10           # EBM: noise-free Langevin steps from the noisy image

  c.bench = ml_collections.ConfigDict()
  c.bench.batch_size = 0               # train / CD / Langevin batch; 0 = train.batch_size
  c.bench.repeats = 10                 # timed runs of each program (median, min, max)
  c.bench.warmup = 2                   # untimed runs after compiling (whole chains: at most 1)
  c.bench.matmul_size = 2048           # N of the N x N matmul that measures the FLOP/s peak
  c.bench.dtypes = "float32,bfloat16"  # train-step compute dtypes (bf16 where the task has one)
  c.bench.sample_batch = 16            # sampling batch (the peer's default for its MNIST UNet)
  c.bench.sample_steps = 0             # ancestral chain length; 0 = diffusion.num_timesteps
  c.bench.ddim_steps = 50              # DDIM chain length (capped at T); 0 = no DDIM
  c.bench.ebm_peer_shape = True        # EBM (tutorial CNN): also at the peer's 32x32x3
  c.bench.peer = ""                    # path of the PyTorch peer torch_peer.py; "" = none
  c.bench.peer_modes = "eager"         # the peer's modes: eager, compile (comma-separated)
  c.bench.peer_threads = 0             # the peer's torch threads; 0 = this process's cores
  c.bench.serve_images = 0             # >0: also time POST /generate of N images (trained workdir)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data_axis = "data"

  # `--mode serve` of this run: the server's settings (all of configs/serve.py but `models`).
  c.serve = serve.server()
  return c


def smoke_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks the run (not the model) to seconds: 64 examples, 2 steps of 8, 16 eval samples.

  Experiment files call it in their `smoke` variant and then shrink their
  own model; the values are the same for every generative smoke test.
  """
  c.data.num_examples = 64
  c.optim.warmup_steps = 0
  c.optim.decay = "constant"           # after warm-up: constant | cosine (to final_lr_factor*lr at train.steps)
  c.optim.final_lr_factor = 0.0
  c.train.steps = 2
  c.train.batch_size = 8
  c.train.log_every = 1
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.train.num_samples = 4
  c.sample.num = 4
  c.sample.batch_size = 4
  c.eval.num_samples = 16              # seconds, not minutes (FD of 16 is only a smoke check)
  c.bench.repeats = 2
  c.bench.warmup = 1
  c.bench.matmul_size = 128
  c.bench.sample_batch = 4
  c.bench.ddim_steps = 5
  return c
