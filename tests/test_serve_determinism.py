"""An image depends only on (model, options, seed, index): never on the bucket or the batch.

The worker packs requests into device calls of a bucket's size (each request
starting a chunk, `Batcher.layout`) and the program computes `limits.chunk`
images at a time (`launch.serve.models._chunked`). Here thousands of (seed,
index) images are made alone (one request of 16, bucket 16) and again inside
random mixes of requests of every size, in every bucket, and compared
bit for bit as float32 (so as PNG bytes too), on the smoke DDPM after its
smoke training (2 steps; its output layer starts at zero, so an untrained
model's network would not matter; slow), on the smoke DDPM with random
weights, and on the smoke EBM.
"""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from configs import serve as serve_configs
from core import images as image_lib
from launch import config as config_lib
from launch import train as train_lib
from launch.serve import models as serve_models
from launch.serve import queue as serve_queue
from launch.serve import schema as serve_schema
from helpers import SMOKE

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUCKETS = (4, 16)


def _limits() -> serve_schema.Limits:
  return serve_schema.Limits.from_config(ml_collections.ConfigDict(
      {"buckets": BUCKETS, "chunk": 4}))


@pytest.fixture(scope="module")
def trained_ddpm(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("determinism") / "ddpm"
  config = config_lib.load(SMOKE["ddpm"])
  train_lib.train_and_evaluate(config, str(workdir))
  return serve_models.load_model("ddpm", serve_configs.model(SMOKE["ddpm"], str(workdir)),
                                 _limits())


@pytest.fixture(scope="module")
def random_ddpm(smoke_workdir):
  """The smoke DDPM with random weights everywhere (its zero-initialised output layer too)."""
  workdir = smoke_workdir("ddpm")
  model = serve_models.load_model("ddpm", serve_configs.model(SMOKE["ddpm"], str(workdir)),
                                  _limits())
  leaves, treedef = jax.tree.flatten(model.params)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  model.params = jax.tree.unflatten(treedef, [
      x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
  return model


@pytest.fixture(scope="module")
def ebm(smoke_workdir):
  workdir = smoke_workdir("ebm")
  return serve_models.load_model("ebm", serve_configs.model(SMOKE["ebm"], str(workdir)),
                                 _limits())


def _job(model, options: serve_schema.Options) -> serve_queue.Job:
  return serve_queue.Job(model=model, plan=model.plan(options), seed=options.seed,
                         num=options.num_images, deadline=0.0, loop=None, future=None,
                         submitted=0.0)


def _run(batcher: serve_queue.Batcher, jobs: list[serve_queue.Job]) -> list[np.ndarray]:
  """Each job's images from one device call, laid out as the worker lays them out."""
  bucket, offsets, seeds, index, extras = batcher.layout(jobs)
  images = jobs[0].model.run(jobs[0].plan.static, bucket, seeds, index, extras)
  return [images[o:o + j.num] for j, o in zip(jobs, offsets)]


def _check_batch_independence(model, options: dict, seed_base: int, num_seeds: int) -> int:
  """Compares alone-made and batched images of num_seeds x 16 (seed, index); returns pairs."""
  limits = _limits()
  batcher = serve_queue.Batcher({model.name: model}, limits, warmup="none")
  seeds = [seed_base + s for s in range(num_seeds)]
  reference = {}
  for seed in seeds:
    (images,) = _run(batcher, [_job(model, serve_schema.Options(num_images=16, seed=seed,
                                                                **options))])
    for i, x in enumerate(images):
      reference[seed, i] = x
  rng = np.random.default_rng(seed_base)
  compared, mismatched, buckets_seen = 0, [], set()
  # Every (seed, index) again, in requests of random sizes mixed at random.
  pending = [(seed, n) for seed in seeds for n in (int(rng.integers(1, 17)),
                                                  int(rng.integers(1, 17)),
                                                  int(rng.integers(1, 5)))]
  rng.shuffle(pending)
  while pending:
    jobs, slots = [], 0
    while pending and slots + limits.slots(pending[-1][1]) <= limits.max_images:
      seed, n = pending.pop()
      jobs.append(_job(model, serve_schema.Options(num_images=n, seed=seed, **options)))
      slots += limits.slots(n)
      if rng.random() < 0.3:
        break  # some calls fill only the small bucket
    buckets_seen.add(limits.bucket(slots))
    for job, images in zip(jobs, _run(batcher, jobs)):
      for i, x in enumerate(images):
        compared += 1
        if not np.array_equal(x, reference[job.seed, i]):
          mismatched.append((job.seed, i, float(np.max(np.abs(x - reference[job.seed, i])))))
  assert buckets_seen == set(BUCKETS)
  assert not mismatched, f"{len(mismatched)} of {compared} differ, e.g. {mismatched[:5]}"
  u8 = image_lib.to_uint8(np.stack(list(reference.values())))
  assert len({x.tobytes() for x in u8}) == len(u8)  # the images do differ from each other
  print(f"\n{model.name} {options}: {compared} batched images == made alone, bit for bit")
  return compared


@pytest.mark.slow  # the smoke training and ~5,000 DDPM chains: minutes on 2 CPU cores
def test_ddpm_image_bytes_do_not_depend_on_bucket_or_batch(trained_ddpm):
  pairs = _check_batch_independence(trained_ddpm, {"sampler": "ddim", "steps": 3, "eta": 0.7},
                                    seed_base=1000, num_seeds=64)
  pairs += _check_batch_independence(trained_ddpm, {"sampler": "ancestral"}, seed_base=5000,
                                     num_seeds=32)
  assert pairs >= 1800


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_ddpm_with_random_weights_image_bytes_do_not_depend_on_bucket_or_batch(random_ddpm):
  """The fast version of the test above (the old whole-bucket vmap failed it: 7% differed)."""
  assert _check_batch_independence(random_ddpm, {"sampler": "ddim", "steps": 2, "eta": 0.7},
                                   seed_base=0, num_seeds=32) >= 600
  # The SDE solver draws fresh noise at every step, as the ancestral sampler does.
  assert _check_batch_independence(random_ddpm, {"sampler": "dpmpp_2m_sde", "steps": 3},
                                   seed_base=100, num_seeds=16) >= 250


def test_ebm_image_bytes_do_not_depend_on_bucket_or_batch(ebm):
  assert _check_batch_independence(ebm, {"steps": 4, "step_size": 3.0}, seed_base=0,
                                   num_seeds=48) >= 800


def test_a_batch_split_across_devices_is_the_same_bytes_as_on_one_device(ebm, smoke_workdir):
  """Bucket 16 (4 chunks) runs on both CPU devices (tests/conftest.py makes 2), bucket 4 on
  one; limits.devices = 1 keeps every bucket on one device, with the same bytes."""
  assert len(ebm.devices) == 2 and ebm.split(16) == 2 and ebm.split(4) == 1
  one = serve_models.load_model(
      "ebm", serve_configs.model(SMOKE["ebm"], str(smoke_workdir("ebm"))),
      serve_schema.Limits.from_config(ml_collections.ConfigDict(
          {"buckets": BUCKETS, "chunk": 4, "devices": 1})))
  assert len(one.devices) == 1 and one.split(16) == 1
  batcher = serve_queue.Batcher({"ebm": ebm}, _limits(), warmup="none")
  options = serve_schema.Options(num_images=16, seed=7, steps=4, step_size=3.0)
  (split,) = _run(batcher, [_job(ebm, options)])
  (alone,) = _run(batcher, [_job(one, options)])
  assert len(ebm.program(ebm.plan(options).static, 16).output_shardings.device_set) == 2
  np.testing.assert_array_equal(split, alone)
  with pytest.raises(Exception, match="limits.devices"):
    serve_schema.Limits.from_config(ml_collections.ConfigDict({"devices": -1}))
