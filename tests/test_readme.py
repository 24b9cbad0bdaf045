"""The README's commands name files that exist, and CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_path_in_a_readme_command_exists():
    blocks = re.findall(r"```(?:bash|yaml)\n(.*?)```", README, flags=re.S)
    paths = {p for block in blocks for p in re.findall(r"\b((?:recipes|benchmarks|tests|gti_peft)/[\w./-]+)", block)}
    assert paths, "the README shows no commands"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_ci_runs_the_readme_test_command():
    assert "make test" in README and "make demo" in README
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line and not line.startswith("#") and "set -" not in line][-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    assert "recipes/gti.py --config recipes/smollm2-135m/movielens.yaml" in makefile
