"""The HTTP server: which trained models it serves, where, and its limits.

Serve the Fashion-MNIST DDPM that `make demo` trains into runs/ddpm_fashion_mnist:
  python -m launch.serve --config configs/serve.py

Serve every default CPU run (each workdir needs a checkpoint):
  python -m launch.serve --config configs/serve.py:all

Any key can be overridden: `--config.port=8080`,
`--config.models.ddpm_fashion_mnist.workdir=/path/to/run`. The server
itself is `launch/serve/`; one trained workdir can also be served with
`python -m launch --mode serve --config configs/X.py --workdir DIR`, whose
`serve` section holds the same settings (`--config.serve.port=8080`).

Sections:
  host, port   where uvicorn listens (127.0.0.1: this machine only).
  models       name -> {config, workdir, use_ema}. `config` is the experiment
               config spec the workdir was trained with ("path.py[:variant]"),
               or "" to read WORKDIR/config.json; `use_ema` samples with the
               EMA parameters. Names are what requests use in "model".
  limits       what one request may ask for, the queue (launch/serve/queue.py)
               and the connection bounds (launch/serve/connections.py).
  warmup       programs compiled at start, before /health reports ready:
               "all" (every sampler at its default steps, every bucket; an
               EBM's /inpaint, /denoise and /energy in the smallest bucket),
               "default" (the config's sampler only) or "none" (on demand).
"""
from __future__ import annotations

import ml_collections

_MODELS = {
    "ddpm_fashion_mnist": ("configs/ddpm_fashion_mnist.py", "runs/ddpm_fashion_mnist"),
    "ebm_fashion_mnist": ("configs/ebm_fashion_mnist.py", "runs/ebm_fashion_mnist"),
    "ddpm_mnist_conditional": ("configs/ddpm_mnist_conditional.py",
                               "runs/ddpm_mnist_conditional"),
}
_VARIANTS = ("all",)


def model(config: str, workdir: str, use_ema: bool = True) -> ml_collections.ConfigDict:
  """One entry of `models`."""
  return ml_collections.ConfigDict({"config": config, "workdir": workdir, "use_ema": use_ema})


def server(c: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The server's settings (all but `models`) into `c` (a new ConfigDict if None).

  The same settings are the `serve` section of every experiment config
  (configs/base.py), so `python -m launch --mode serve --config X --workdir W`
  takes `--config.serve.port=8080` as `python -m launch.serve` takes
  `--config.port=8080`.
  """
  c = ml_collections.ConfigDict() if c is None else c
  c.host = "127.0.0.1"
  c.port = 8000
  c.log_level = "info"
  c.limits = ml_collections.ConfigDict()
  # Requests are padded to the smallest bucket that holds them (and batched up
  # to the largest): one compiled program per (model, sampler, steps, bucket).
  # A program computes `chunk` images at a time (a loop over bucket / chunk),
  # each request starting a chunk: an image's bytes depend only on (model,
  # options, seed, index), never on the bucket or the batch (launch/serve/programs.py).
  c.limits.buckets = (4, 16, 64)       # multiples of chunk; the largest: images per request
  c.limits.chunk = 4                   # images computed together (0: the smallest bucket)
  # A batch of several chunks is split across this many of the process's devices
  # (0: all; a batch of fewer chunks than devices runs on one): the same chunk
  # computation on each, so the images are the same bytes as on one device.
  c.limits.devices = 0
  c.limits.max_langevin_steps = 1024   # EBM chain length (DDPM: at most its T)
  # The chain lengths a request may ask for besides a sampler's default: each
  # compiles one program, so a client can cause at most len + 1 per sampler.
  c.limits.step_choices = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75,
                           100, 150, 200, 250, 300, 500, 750, 1000, 2000)
  c.limits.max_step_size = 100.0       # EBM Langevin step size
  c.limits.max_guidance = 20.0         # classifier-free guidance scale
  c.limits.queue_size = 32             # waiting requests; beyond: 429 + Retry-After
  c.limits.timeout_s = 120.0           # per request, queueing and sampling; then 503
  c.limits.max_body_bytes = 4096       # request bodies; beyond: 413
  c.limits.batch_wait_ms = 2.0         # how long a batch waits for same-settings requests
  c.limits.max_programs = 32           # compiled programs kept per model beyond the warm-up
  # Connections (launch/serve/connections.py): idle and slow clients cannot block the server.
  c.limits.max_connections = 2048      # open at most; beyond, the oldest idle one is closed
  c.limits.max_requests = 256          # HTTP requests in progress; beyond: 503 + Retry-After
  c.limits.header_timeout_s = 10.0     # to send a request's headers (from open / last answer)
  c.limits.keep_alive_s = 5.0          # an idle keep-alive connection is closed after this
  c.limits.request_timeout_s = 30.0    # headers + body, from the first byte; then 408
  c.limits.min_body_rate = 1024.0      # bytes/s a body must average after the grace; then 408
  c.limits.body_rate_grace_s = 5.0     # seconds before min_body_rate applies
  c.limits.max_header_bytes = 16384    # request line + headers; beyond: 400
  # Uploads of /inpaint, /denoise, /energy (EBMs; launch/serve/uploads.py): a PNG of the
  # model's own size. Bodies are counted as they arrive; a PNG's declared size is checked
  # from its header, before a byte is inflated (a decompression bomb is a 413).
  c.limits.max_upload_bytes = 262144   # a multipart upload body (image + mask); beyond: 413
  c.limits.max_image_pixels = 1048576  # width x height a PNG may declare; beyond: 413
  c.limits.max_examples = 16           # test images GET /examples offers (0: none)
  c.warmup = "all"                     # all | default | none
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The serve config; arg None (the Fashion-MNIST DDPM) or "all" (every default run)."""
  if arg and arg not in _VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of serve (allowed: {', '.join(_VARIANTS)})")
  c = server()
  c.models = ml_collections.ConfigDict()
  names = ("ddpm_fashion_mnist",) if not arg else tuple(_MODELS)
  for name in names:
    c.models[name] = model(*_MODELS[name])
  return c
