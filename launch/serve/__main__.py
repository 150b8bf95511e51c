"""python -m launch.serve --config configs/serve.py[:all] [--config.port=8080 ...]"""
import sys

from absl import app as absl_app
from absl import flags
from ml_collections import config_flags

from launch import xla_cpu
from launch.serve import app

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Serve config file, e.g. configs/serve.py[:all].", lock_config=True)
flags.mark_flag_as_required("config")

if __name__ == "__main__":
  xla_cpu.apply()   # the launcher's XLA:CPU options (launch/xla_cpu.py), before JAX starts
  absl_app.run(lambda argv: sys.exit(app.main(argv, _CONFIG.value)))
