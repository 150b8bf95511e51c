"""Runs `python -m launch ...` under `tfds.testing.mock_data` (for subprocess tests).

Usage: python tests/launch_with_mock_data.py NUM_EXAMPLES --config ... --workdir ...

With RECORD_BATCHES=PATH.npz in the environment, it also records what this
process's training loop read: the host index and count it passed to the data
pipeline, `jax.process_count()` at that moment, and each consumed (step,
local batch), written to PATH when the run ends (the multi-host test checks
that the processes really ran as one job, each reading its half of every batch).

With BLOCK_SAVE_AT_STEP=N and BLOCK_SAVE_MARKER=PATH, the checkpoint of step N
blocks in the middle of its save: its arrays are written into Orbax's
temporary directory, but it is neither marked complete nor renamed to its
final name. PATH is created when the save reaches that point, so a test can
kill -9 the process there, deterministically.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from launch import __main__ as cli  # noqa: E402
from launch import data as data_lib  # noqa: E402


def _record_batches(path: str):
  """Wraps `data.make_train_batches` to record what is read; returns a writer."""
  record = {"steps": [], "images": [], "labels": []}
  make = data_lib.make_train_batches

  def recording_make(*args, **kwargs):
    source = make(*args, **kwargs)
    record.update(process_index=kwargs["process_index"], process_count=kwargs["process_count"],
                  jax_process_count=jax.process_count())
    iterate = source.iterate

    def recording_iterate(*a, **kw):
      for step, batch in iterate(*a, **kw):
        record["steps"].append(step)
        record["images"].append(batch["image"])
        record["labels"].append(batch["label"])
        yield step, batch

    source.iterate = recording_iterate
    return source

  data_lib.make_train_batches = recording_make

  def write():
    np.savez(path, **{k: np.asarray(v) for k, v in record.items()})
  return write


def _block_save(step: int, marker: str):
  """Makes the save of checkpoint `step` block just before Orbax commits it."""
  import time

  from orbax.checkpoint._src.path import atomicity

  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def blocking_finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      open(marker, "w").close()
      while True:  # until killed; also blocks the next save, so the run never ends
        time.sleep(1.0)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = blocking_finalize


def _main(argv):
  if os.environ.get("BLOCK_SAVE_AT_STEP"):
    _block_save(int(os.environ["BLOCK_SAVE_AT_STEP"]), os.environ["BLOCK_SAVE_MARKER"])
  path = os.environ.get("RECORD_BATCHES")
  write = _record_batches(path) if path else None
  rc = cli.main(argv)
  if write is not None:
    write()
  sys.exit(rc)


if __name__ == "__main__":
  num_examples = int(sys.argv.pop(1))
  flags.mark_flag_as_required("config")
  with tfds.testing.mock_data(num_examples=num_examples):
    app.run(_main)
