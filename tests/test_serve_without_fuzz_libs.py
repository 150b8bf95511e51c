"""Without schemathesis, only the fuzz tests of tests/test_serve.py skip.

A module-level `importorskip` used to skip every serve test (and the browser
test that imports the module) in an environment without the [test] extra.
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# pytest in a child whose `import schemathesis` fails (as when it is not
# installed). Plugin autoload is off in the child: pytest would otherwise
# import schemathesis' plugin, and its assertion-rewriting import hook (ahead
# of this one) would import the package itself.
_CHILD = """
import sys

class NoSchemathesis:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] == "schemathesis":
      raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoSchemathesis())
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


def test_serve_tests_run_and_only_the_fuzz_test_skips_without_schemathesis():
  result = subprocess.run(
      [sys.executable, "-c", _CHILD, "-q", "-rs", "-p", "no:cacheprovider", "tests/test_serve.py",
       "-k", "test_serve_configs_are_valid or test_fuzz_openapi_no_server_errors"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"), capture_output=True, text=True,
      timeout=600)
  out = result.stdout + result.stderr
  assert result.returncode == 0, out[-3000:]
  assert "1 passed, 2 skipped" in out, out[-3000:]
  assert "could not import 'schemathesis'" in out, out[-3000:]
