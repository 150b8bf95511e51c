#!/usr/bin/env python3
"""The course's PyTorch DDPM on Fashion-MNIST: the baseline of docs/results.md.

The "course code" rows of docs/results.md: the Radboud course's MNIST DDPM
U-Net, `UNet(c_in=1, c_out=1, width=16)` (810,561 parameters, imported from
tests/torch_reference.py, a verbatim copy of the PyTorch peer's network),
trained with the course recipe of the peer's `ddpm_train_step`: linear betas
1e-4..0.02 over T = 1000 steps, t ~ U{0..T-1}, eps-MSE, Adam 1e-3, batch
128, constant rate, raw weights (no EMA), no gradient clipping. Data: the
Fashion-MNIST training IDX files, scaled to [-1, 1] and padded with black to
32x32, reshuffled every epoch. Training stops after `--budget_s` seconds of
wall-clock training loop or `--steps` steps, whichever comes first.

Samplers (each writes OUT/samples_<name>.npz, "images": uint8 [N, 28, 28, 1],
the centre 28x28 of the 32x32 output):

  ancestral  the course's sampler: Ho et al.'s Algorithm 2 (the peer's
             `ddpm_sample_step`), sigma_t = sqrt(beta_t), T steps, no x0
             clipping; the output is clamped to [-1, 1] only for uint8.
  ddim<S>    the project's pinned protocol: DDIM eta = 0 over S uniformly
             spaced timesteps, x0 clipped to [-1, 1] (`ddim100` in the docs).
  dpmpp_2m_sde<S>
             the project's default sampler, SDE-DPM-Solver++(2M) over S
             steps (`dpmpp_2m_sde20`), run by diffusers'
             DPMSolverMultistepScheduler (algorithm_type="sde-dpmsolver++",
             linspace timesteps, x0 clipped to [-1, 1]): the reference that
             tests/test_reference_samplers.py proves the project's solver
             equal to, so the course model gets the same sampler without
             sharing its code. Needs diffusers (the [test] extra).

Independent of the project: it imports only torch, numpy, the standard
library, tests/torch_reference.py (and diffusers for dpmpp_2m_sde<S>), so
it runs in any environment with torch (the [torch] extra) and cannot share
a bug with the JAX code. Its DDIM
timesteps re-implement `ddpm.samplers.ddim_timesteps` (tested equal in
tests/test_course_ddpm.py).

Reproduce docs/results.md's course rows (the scoring needs the project's
classifiers, docs/evaluation.md):

```bash
# 15 minutes, alone on the machine, 2 torch threads:
python scripts/course_ddpm.py --out runs/course_15min --budget_s 900 --samplers ddim100
# 60 minutes pinned to core 1 with one torch thread (ours ran on core 0 at the same time):
taskset -c 1 python scripts/course_ddpm.py --out runs/course_60min --budget_s 3600 \
  --threads 1 --samplers ddim100
# the ancestral column (1000 samples, 1000 steps each), from the saved model.pt:
python scripts/course_ddpm.py --out runs/course_15min --sample_only --samplers ancestral
# FD-fmnist, the class histogram and the independent check:
python -m launch.eval.evaluate --npz runs/course_15min/samples_ddim100.npz \
  --classifier_workdir runs/classifier_fashion_mnist \
  --independent_workdir runs/classifier_independent \
  --out runs/course_15min/eval_ddim100.json
```

(and the same evaluate command for samples_ancestral.npz). OUT holds
train_log.jsonl (steps, loss, steps/s every 50 steps), model.pt (the
state_dict), run.json (arguments, steps, training seconds, final loss, torch
version, threads, and a record per sampler run) and the samples. Sampling
noise comes from its own generators seeded by --seed, so `--sample_only`
with the same seed, --num_samples and --sample_batch reproduces the samples
of the training run, and both samplers start from the same x_T.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import pathlib
import re
import struct
import sys
import time
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
import torch_reference  # noqa: E402  (the course network, verbatim; needs the path above)

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
IDX_IMAGES_MAGIC = 2051   # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049   # 0x00000801: unsigned bytes, 1 dimension
LOG_EVERY = 50

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ data --

def read_idx(path: str | pathlib.Path, magic: int) -> np.ndarray:
  """uint8 array of a gzipped IDX file, its header checked against `magic`."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = magic & 0xFF
  got = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
  if got != magic:
    raise ValueError(f"{path}: IDX magic {got}, expected {magic}")
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  body = data[4 + 4 * ndim:]
  if len(body) != math.prod(shape):
    raise ValueError(f"{path}: {len(body)} bytes of data for shape {shape}")
  return np.frombuffer(body, np.uint8).reshape(shape)


def load_fashion_mnist(data_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """The training split: images float32 [N, 1, 32, 32] in [-1, 1], labels uint8 [N].

  x / 127.5 - 1 of the 28x28 images padded by 2 pixels of 0 (-1, black) on
  every side, as the course pads MNIST for its 32x32 U-Net.
  """
  data_dir = pathlib.Path(data_dir)
  images = read_idx(data_dir / IDX_FILES[0], IDX_IMAGES_MAGIC)
  labels = read_idx(data_dir / IDX_FILES[1], IDX_LABELS_MAGIC)
  if images.shape[1:] != (28, 28) or len(labels) != len(images):
    raise ValueError(f"{data_dir}: images {images.shape}, labels {labels.shape}")
  images = np.pad(images, ((0, 0), (2, 2), (2, 2)), constant_values=0)[:, None]
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0), labels


def epoch_batches(x: np.ndarray, batch_size: int, rng: np.random.Generator
                  ) -> Iterator[np.ndarray]:
  """Batches of x forever, reshuffled every epoch; the last batch of an epoch
  may be smaller (a DataLoader's shuffle=True, drop_last=False)."""
  while True:
    order = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
      yield x[order[start:start + batch_size]]


# -------------------------------------------------------------- schedule --

class Schedule:
  """The peer's `Schedule`: linear betas beta1..betaT over T steps, float32."""

  def __init__(self, T: int = 1000, beta1: float = 1e-4, betaT: float = 0.02):
    self.T = T
    self.beta = torch.linspace(beta1, betaT, T)
    self.alpha = 1.0 - self.beta
    self.alpha_bar = torch.cumprod(self.alpha, dim=0)


# -------------------------------------------------------------- training --

def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Schedule,
               x0: torch.Tensor) -> torch.Tensor:
  """The peer's `ddpm_train_step`: one Adam step on the eps-MSE of x0 [B, 1, 32, 32]."""
  b = x0.shape[0]
  t = torch.randint(0, sched.T, (b,))
  noise = torch.randn_like(x0)
  ab = sched.alpha_bar[t][:, None, None, None]
  x_t = ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise
  loss = F.mse_loss(model(x_t, t.float()), noise)
  opt.zero_grad(set_to_none=True)
  loss.backward()
  opt.step()
  return loss.detach()


def train(model: torch.nn.Module, images: np.ndarray, sched: Schedule, *, lr: float,
          batch_size: int, budget_s: float, steps: int, seed: int,
          log_path: pathlib.Path) -> dict:
  """Trains until `budget_s` seconds of loop or `steps` steps (0 = no step limit).

  Logs {step, loss (mean since the last line), steps_per_s, elapsed_s} every
  LOG_EVERY steps and at the last one to stdout and `log_path` (overwritten).

  Returns:
    {"steps", "train_seconds", "final_loss"} (final_loss: the last line's mean).
  """
  opt = torch.optim.Adam(model.parameters(), lr=lr)
  batches = epoch_batches(images, batch_size, np.random.default_rng(seed))
  model.train()
  step, losses, final_loss = 0, [], float("nan")
  with open(log_path, "w") as log:
    start = last_time = time.perf_counter()
    last_step = 0
    while True:
      elapsed = time.perf_counter() - start
      done = elapsed >= budget_s or (steps and step >= steps)
      if step > 0 and (done or step % LOG_EVERY == 0) and losses:
        now = time.perf_counter()
        final_loss = float(np.mean(losses))
        line = dict(step=step, loss=final_loss,
                    steps_per_s=(step - last_step) / max(now - last_time, 1e-9),
                    elapsed_s=now - start)
        print(json.dumps(line), flush=True)
        log.write(json.dumps(line) + "\n")
        log.flush()
        losses, last_step, last_time = [], step, now
      if done:
        break
      loss = float(train_step(model, opt, sched, torch.from_numpy(next(batches))))
      step += 1
      if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss} at step {step}")
      losses.append(loss)
  return dict(steps=step, train_seconds=elapsed, final_loss=final_loss)


# -------------------------------------------------------------- samplers --

def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The increasing 0-based timesteps DDIM visits: round(linspace(0, T - 1, S)).

  Mirrors `ddpm.samplers.ddim_timesteps(T, S, spacing="uniform")` of the
  project (re-implemented, not imported; tests/test_course_ddpm.py checks
  they agree).

  Returns:
    int32 [S].
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64).astype(np.int32)


@torch.no_grad()
def ancestral_step(model: EpsModel, sched: Schedule, x: torch.Tensor, i: int,
                   z: torch.Tensor) -> torch.Tensor:
  """One step of Algorithm 2 at 0-based t = i (the peer's `ddpm_sample_step`).

  x_{t-1} = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat)
  + sqrt(beta_t) z, with z = 0 at i = 0 (the given z is then ignored).
  """
  eps = model(x, torch.full((x.shape[0],), float(i)))
  if i == 0:
    z = torch.zeros_like(x)
  a, ab, b = sched.alpha[i], sched.alpha_bar[i], sched.beta[i]
  return (1.0 / a.sqrt()) * (x - ((1.0 - a) / (1.0 - ab).sqrt()) * eps) + b.sqrt() * z


@torch.no_grad()
def ancestral_sample(model: EpsModel, sched: Schedule, x_T: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
  """Algorithm 2 over all T steps from x_T [B, 1, 32, 32]; z drawn from `generator`."""
  x = x_T
  for i in reversed(range(sched.T)):
    z = torch.randn(x.shape, generator=generator) if i > 0 else torch.zeros_like(x)
    x = ancestral_step(model, sched, x, i, z)
  return x


@torch.no_grad()
def ddim_step(model: EpsModel, sched: Schedule, x: torch.Tensor, t: int,
              t_prev: int) -> torch.Tensor:
  """DDIM eta = 0 from t to t_prev (-1: alpha_bar_prev = 1, the last step),
  x0_hat clipped to [-1, 1] and eps_hat recomputed from it, as the project's
  `ddpm.samplers.ddim_sample(..., eta=0, clip_x0=True)`."""
  a = sched.alpha_bar[t]
  a_prev = sched.alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0)
  eps = model(x, torch.full((x.shape[0],), float(t)))
  x0 = ((x - (1.0 - a).sqrt() * eps) / a.sqrt()).clamp(-1.0, 1.0)
  eps = (x - a.sqrt() * x0) / (1.0 - a).sqrt()
  return a_prev.sqrt() * x0 + (1.0 - a_prev).clamp(min=0.0).sqrt() * eps


@torch.no_grad()
def ddim_sample(model: EpsModel, sched: Schedule, x_T: torch.Tensor,
                num_steps: int) -> torch.Tensor:
  """DDIM eta = 0 over `ddim_timesteps(T, num_steps)`, from the last to the first."""
  seq = ddim_timesteps(sched.T, num_steps).tolist()
  x = x_T
  for t, t_prev in zip(reversed(seq), reversed([-1] + seq[:-1])):
    x = ddim_step(model, sched, x, t, t_prev)
  return x


def dpm_solver_scheduler(sched: Schedule, num_steps: int):
  """diffusers' SDE-DPM-Solver++(2M) on the course schedule (its betas passed as
  trained_betas), x0 clipped to [-1, 1] (thresholding with sample_max_value 1),
  set to `num_steps` linspace timesteps."""
  try:
    from diffusers import DPMSolverMultistepScheduler  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError("the dpmpp_2m_sde<S> samplers need diffusers "
                     "(pip install -e \".[test]\")") from e
  if not 1 <= num_steps < sched.T:
    raise ValueError(f"num_steps must be in [1, {sched.T - 1}], got {num_steps}")
  scheduler = DPMSolverMultistepScheduler(
      num_train_timesteps=sched.T, trained_betas=sched.beta.double().numpy(), solver_order=2,
      algorithm_type="sde-dpmsolver++", prediction_type="epsilon", thresholding=True,
      sample_max_value=1.0, timestep_spacing="linspace")
  scheduler.set_timesteps(num_steps)
  return scheduler


@torch.no_grad()
def dpm_solver_sde_sample(model: EpsModel, sched: Schedule, x_T: torch.Tensor,
                          generator: torch.Generator, num_steps: int) -> torch.Tensor:
  """SDE-DPM-Solver++(2M) over `num_steps` steps by diffusers' scheduler, its
  per-step noise drawn from `generator`."""
  scheduler = dpm_solver_scheduler(sched, num_steps)
  x = x_T
  for t in scheduler.timesteps:
    eps = model(x, torch.full((x.shape[0],), float(t)))
    x = scheduler.step(eps, t, x, generator=generator).prev_sample
  return x


def sampler_fn(name: str, num_timesteps: int
               ) -> Callable[[EpsModel, Schedule, torch.Tensor, torch.Generator], torch.Tensor]:
  """The sampler called `name` for a T = `num_timesteps` model: "ancestral",
  "ddim<S>" (e.g. "ddim100") or "dpmpp_2m_sde<S>"; a bad name or step count
  (or a missing diffusers) raises ValueError here, before any training."""
  if name == "ancestral":
    return ancestral_sample
  match = re.fullmatch(r"(ddim|dpmpp_2m_sde)([1-9][0-9]*)", name)
  if not match:
    raise ValueError(f"unknown sampler {name!r}; allowed: ancestral, ddim<S> (e.g. ddim100), "
                     "dpmpp_2m_sde<S> (e.g. dpmpp_2m_sde20)")
  num_steps = int(match.group(2))
  if match.group(1) == "ddim":
    ddim_timesteps(num_timesteps, num_steps)   # checks the step count
    return lambda model, sched, x_T, generator: ddim_sample(model, sched, x_T, num_steps)
  dpm_solver_scheduler(Schedule(num_timesteps), num_steps)   # checks steps and diffusers
  return lambda model, sched, x_T, generator: dpm_solver_sde_sample(
      model, sched, x_T, generator, num_steps)


def to_uint8(x: torch.Tensor) -> np.ndarray:
  """[B, 1, 32, 32] in [-1, 1] -> uint8 [B, 28, 28, 1]: the centre crop,
  round((x + 1) * 127.5), clipped to 0..255 (x outside [-1, 1] is clamped)."""
  x = x[:, :, 2:30, 2:30].clamp(-1.0, 1.0).double().numpy()
  x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return np.transpose(x, (0, 2, 3, 1))


def sample(model: EpsModel, sched: Schedule, name: str, *, num_samples: int, batch_size: int,
           seed: int) -> np.ndarray:
  """uint8 [num_samples, 28, 28, 1] from sampler `name`.

  x_T comes from a generator seeded `seed` (all samples at once, so every
  sampler starts from the same x_T), the ancestral noise from one seeded
  `seed + 1`, batch after batch.
  """
  fn = sampler_fn(name, sched.T)
  x_T = torch.randn((num_samples, 1, 32, 32), generator=torch.Generator().manual_seed(seed))
  noise = torch.Generator().manual_seed(seed + 1)
  out = []
  for start in range(0, num_samples, batch_size):
    out.append(to_uint8(fn(model, sched, x_T[start:start + batch_size], noise)))
  return np.concatenate(out)


# ------------------------------------------------------------------ main --

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python scripts/course_ddpm.py",
      description="The course's PyTorch DDPM (width-16 UNet) on Fashion-MNIST: train, sample.")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--data_dir", default=DEFAULT_DATA_DIR,
                      help=f"directory of {IDX_FILES[0]} and {IDX_FILES[1]}")
  parser.add_argument("--budget_s", type=float, default=900.0,
                      help="wall-clock seconds of training loop")
  parser.add_argument("--steps", type=int, default=0, help="step limit (0 = none)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--samplers", default="ddim100,ancestral",
                      help="comma list of ancestral, ddim<S>, dpmpp_2m_sde<S>")
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--sample_batch", type=int, default=250)
  parser.add_argument("--sample_only", action="store_true",
                      help="load OUT/model.pt and only sample")
  parser.add_argument("--num_timesteps", type=int, default=1000,
                      help="T (1000 is the course's; smaller only for tests)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  """Trains (unless --sample_only) and samples; returns the run.json record."""
  args = parse_args(argv)
  names = [n for n in args.samplers.split(",") if n]
  for name in names:   # fail before training, not after it
    sampler_fn(name, args.num_timesteps)
  images = None if args.sample_only else load_fashion_mnist(args.data_dir)[0]
  torch.set_num_threads(args.threads)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  sched = Schedule(args.num_timesteps)
  torch.manual_seed(args.seed)
  model = torch_reference.UNet(c_in=1, c_out=1, width=16)
  if args.sample_only:
    record = json.loads((out / "run.json").read_text())
    trained_T = record["args"]["num_timesteps"]
    if trained_T != args.num_timesteps:
      raise ValueError(f"{out} was trained with --num_timesteps {trained_T}, "
                       f"not {args.num_timesteps}")
    model.load_state_dict(torch.load(out / "model.pt", map_location="cpu"))
  else:
    result = train(model, images, sched, lr=args.lr, batch_size=args.batch_size,
                   budget_s=args.budget_s, steps=args.steps, seed=args.seed,
                   log_path=out / "train_log.jsonl")
    torch.save(model.state_dict(), out / "model.pt")
    record = dict(args=vars(args), **result, torch_version=torch.__version__,
                  threads=torch.get_num_threads(), samples={})
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
  model.eval()
  for name in names:
    start = time.perf_counter()
    samples = sample(model, sched, name, num_samples=args.num_samples,
                     batch_size=args.sample_batch, seed=args.seed)
    np.savez(out / f"samples_{name}.npz", images=samples)
    seconds = time.perf_counter() - start
    record.setdefault("samples", {})[name] = dict(
        num_samples=args.num_samples, seed=args.seed, sample_batch=args.sample_batch,
        seconds=seconds, threads=torch.get_num_threads())
    print(f"wrote {out / f'samples_{name}.npz'} ({seconds:.1f} s)", flush=True)
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
  return record


if __name__ == "__main__":
  try:
    main()
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
