"""The README stays a short page; its and docs/'s links, configs and modes exist."""
from __future__ import annotations

import pathlib
import re

import pytest

from launch import __main__ as cli
from launch import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_short_page_that_links_the_docs():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 150
  for page in ("running", "evaluation", "results", "benchmarks", "serving", "scaling"):
    assert f"(docs/{page}.md)" in text, page
  assert "make demo" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_images_exist(page):
  text = page.read_text()
  targets = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text) + re.findall(r'<img src="([^"]+)"', text)
  assert targets or page.name == "serving.md"
  for target in targets:
    if "://" in target:
      continue
    assert (page.parent / target).exists(), f"{page.name}: {target}"


def _commands(text: str) -> list[str]:
  """`python -m launch ...` / `ddpm-ebm ...` command lines of the code blocks, joined."""
  lines = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    block = block.replace("\\\n", " ")
    lines += [l for l in block.splitlines() if "-m launch " in l or l.startswith("ddpm-ebm")]
  return lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_existing_configs_variants_and_modes(page):
  text = page.read_text()
  # Shell variables the README sets first: `R=runs/...; C=configs/...`.
  variables = dict(re.findall(r"^(?:\w+=\S+; )*?(\w+)=([^;\s]+)", text, re.M))
  checked = 0
  for command in _commands(text):
    for name, value in variables.items():
      command = command.replace(f"${name}", value)
    for spec in re.findall(r"--config[ =](configs/\S+)", command):
      if spec.startswith("configs/X.py"):   # the generic form of the command
        continue
      config_lib.load(str(ROOT / spec))   # raises on a missing file or an unknown variant
      checked += 1
    for mode in re.findall(r"--mode[ =](\w+)", command):
      assert mode in cli.MODES or mode == "MODE", command
  if page.name in ("README.md", "evaluation.md", "benchmarks.md", "scaling.md"):
    assert checked, "no command checked"   # the pattern still finds this page's commands
