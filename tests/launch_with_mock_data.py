"""Runs `python -m launch ...` under `tfds.testing.mock_data` (for subprocess tests).

Usage: python tests/launch_with_mock_data.py NUM_EXAMPLES --config ... --workdir ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from launch import __main__ as cli  # noqa: E402

if __name__ == "__main__":
  num_examples = int(sys.argv.pop(1))
  flags.mark_flag_as_required("config")
  with tfds.testing.mock_data(num_examples=num_examples):
    app.run(lambda argv: sys.exit(cli.main(argv)))
