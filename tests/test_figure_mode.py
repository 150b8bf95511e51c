"""`--mode figures` on smoke workdirs of every task (and `--mode evaluate` of the denoiser).

Everything runs on `tfds.testing.mock_data`. The classifier is the session's
smoke classifier (tests/conftest.py); the generative workdirs hold their initial state (figures do not
need a trained model, and compiling their train steps would triple the time).
"""
import json
import math
import pathlib

import pytest
from PIL import Image

from launch import config as config_lib
from launch.eval import evaluate
from launch import figure_mode
from helpers import ROOT, untrained as _untrained


pytestmark = pytest.mark.usefixtures("mock_data")   # tests/conftest.py


@pytest.fixture
def classifier(smoke_classifier):
  return smoke_classifier[:2]   # (config, workdir)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
  return _untrained(tmp_path_factory, "ddpm_mnist_conditional.py:smoke", {"loss": 1.0})


def _check_pngs(written, workdir, names):
  assert [p.name for p in written] == [f"{n}.png" for n in names]
  for path in written:
    path = pathlib.Path(path)
    assert path.parent == workdir / "figures" and path.stat().st_size > 1000
    with Image.open(path) as im:
      im.verify()
    with Image.open(path) as im:
      assert im.format == "PNG" and im.width >= 100 and im.height >= 70


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_ddpm_figures(ddpm, capsys):
  config, workdir = ddpm
  written = figure_mode.figures_workdir(config, str(workdir))
  _check_pngs(written, workdir, ("forward_process", "noisy_batch", "trajectories", "fixed_init",
                                 "class_grid", "progressive", "shared_latent", "interpolation",
                                 "rate_distortion", "training_curve"))
  out = capsys.readouterr().out
  assert all(str(p) in out for p in written)


@pytest.mark.slow  # 20-60 s on 2 cores; .ci/run runs it after the default suite
def test_denoiser_ink_blots_with_and_without_ddpm(tmp_path_factory, ddpm, classifier):
  config, workdir = _untrained(tmp_path_factory, "denoiser_fashion_mnist.py:smoke",
                               {"loss": 0.5}, **{"eval.ddpm_workdir": str(ddpm[1]),
                                                 "eval.classifier_workdir": str(classifier[1]),
                                                 "eval.num_samples": 8,
                                                 # the smoke classifier is a weak feature network
                                                 "eval.min_classifier_accuracy": 0.0})
  written = figure_mode.figures_workdir(config, str(workdir))
  _check_pngs(written, workdir, ("ink_blots", "training_curve"))
  size_with_ddpm = Image.open(written[0]).height
  alone = config_lib.load(f"{ROOT}/configs/denoiser_fashion_mnist.py:smoke")
  written = figure_mode.figures_workdir(alone, str(workdir))
  _check_pngs(written, workdir, ("ink_blots", "training_curve"))
  assert Image.open(written[0]).height < size_with_ddpm   # one row fewer
  # --mode evaluate of the one-step samples.
  records = evaluate.evaluate_workdir(config, str(workdir))
  assert [r["metric"] for r in records] == ["fd_fmnist", "class_histogram"]
  assert all(math.isfinite(r["value"]) and r["sampler"] == "one_step" and r["num_samples"] == 8
             for r in records)
  assert json.loads((workdir / "eval.json").read_text()) == records


def test_ebm_figures(tmp_path_factory):
  config, workdir = _untrained(tmp_path_factory, "ebm_fashion_mnist.py:smoke",
                               {"loss": 0.1, "energy_pos": -1.0, "energy_neg": 1.0})
  written = figure_mode.figures_workdir(config, str(workdir))
  _check_pngs(written, workdir, ("langevin_chain", "inpainting", "denoising", "energy_histogram",
                                 "buffer", "energies", "training_curve"))


def test_classifier_figures(classifier):
  config, workdir = classifier
  written = figure_mode.figures_workdir(config, str(workdir))
  _check_pngs(written, workdir, ("training_curve", "confusion_matrix"))


def test_docs_name_the_fixed_init_samplers_the_code_uses():
  # figure_mode's fixed_init: the config's stochastic sampler (else ancestral)
  # against DDIM eta = 0, not the ancestral chain with z = 0.
  assert "DDIM eta = 0" in " ".join(figure_mode.__doc__.split())
  text = " ".join((ROOT / "docs" / "results.md").read_text().split())
  sentence = text[text.index("fixed x_T with"):][:250]
  assert "DDIM η = 0" in sentence and "z = 0" not in sentence, sentence
