"""The installed ``gti-peft`` command: subcommands, shipped recipe names, and a wheel that carries the YAMLs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gti_peft.cli import SUBCOMMANDS, build_parser
from gti_peft.cli.train import load_config, resolve_config, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


def test_every_subcommand_module_has_the_interface():
    import importlib

    for module_name in SUBCOMMANDS.values():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run)
    args = build_parser().parse_args(["train", "--config", "smollm2-135m/movielens", "--set", "adapter.r=4"])
    assert args.config == "smollm2-135m/movielens" and args.overrides == ["adapter.r=4"]
    args = build_parser().parse_args(["diagnostics", "some/adapter", "--out", "d"])
    assert args.adapter_dir == "some/adapter" and args.out == "d"


def test_shipped_names_resolve_and_dispatch_by_task():
    names = shipped_recipes()
    assert {"smollm2-135m/movielens", "smollm2-135m/wordnet", "llama-3.1-8b-instruct/wordnet_qlora"} <= set(names)
    assert resolve_config("smollm2-135m/movielens") == resolve_config("smollm2-135m/movielens.yaml")
    task, config = load_config("smollm2-135m/movielens", ["adapter.init=random"])
    assert task == "recommendation" and config.adapter.init == "random"
    task, config = load_config("smollm2-135m/wordnet", ["data.wordnet_words=12"])
    assert task == "vocabulary" and config.data.wordnet_words == 12
    with pytest.raises(FileNotFoundError, match="smollm2-135m/movielens"):  # the message lists what ships
        resolve_config("smollm2/movielns")


def test_an_explicit_task_key_is_read_and_an_unknown_task_fails_naming_it(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("task: recommendation\nadapter:\n  init: random\n")
    task, config = load_config(str(path), ["adapter.r=4"])
    assert task == "recommendation" and config.adapter.init == "random" and config.adapter.r == 4
    path.write_text("task: translation\n")
    with pytest.raises(ValueError, match=r"task: 'translation' in t.yaml is not a recipe"):
        load_config(str(path))
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['rank'\] in t.yaml.adapter"):
        path.write_text("task: vocabulary\ndata: {source: wordnet}\nadapter: {rank: 3}\n")
        load_config(str(path))


def test_a_wheel_carries_the_recipes_and_runs_them_without_the_checkout(tmp_path):
    # the PEP 517 build `pip wheel --no-deps .` runs, on a copy of the sources (no build/ left in the checkout)
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gti_peft", source / "gti_peft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", build, str(tmp_path / "wheel")], cwd=source, check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("gti_peft-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        archive.extractall(tmp_path / "site")  # what `pip install --target` does with a pure-Python wheel
    for name in ("smollm2-135m/movielens", "smollm2-135m/wordnet", "llama-3.1-8b-instruct/wordnet_qlora"):
        assert f"gti_peft/configs/{name}.yaml" in names
    assert "gti-peft = gti_peft.cli:console" in entry_points
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = (
        "import gti_peft; from gti_peft.cli.train import load_config, resolve_config;"
        "print(gti_peft.__file__); print(resolve_config('smollm2-135m/movielens'));"
        "task, config = load_config('smollm2-135m/movielens'); print(task, config.model.name_or_path)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    module_file, yaml_path, summary = out.stdout.strip().splitlines()[-3:]
    assert module_file.startswith(str(tmp_path / "site")) and yaml_path.startswith(str(tmp_path / "site"))
    assert summary == "recommendation offline:smollm2-135m-instruct"


def test_recommend_takes_its_options_and_checks_the_input_before_the_run(tmp_path):
    argv = ["recommend", "run", "--input", "h.csv", "--output", "r.jsonl", "--k", "5", "--batch-size", "16"]
    args = build_parser().parse_args([*argv, "--user-column", "uid", "--history-column", "items"])
    assert (args.run, args.k, args.batch_size, args.user_column, args.history_column) == ("run", 5, 16, "uid", "items")
    assert not args.keep_history and args.unknown_items == "error"
    with pytest.raises(ValueError, match="--input 'h.csv' must be an existing .jsonl, .csv or .parquet file"):
        args.handler(args)
