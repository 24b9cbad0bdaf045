"""Run a recipe: a YAML shipped with the package (`smollm2-135m/movielens`) or any YAML file.

The YAML's `task:` key picks the recipe: `recommendation` (default: semantic IDs for a catalog) or
`vocabulary` (new tokens from a (token, text) table, fine-tuned on a corpus). Override keys with
`--set section.key=value`; every config error surfaces before anything is loaded.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

import yaml

TASKS = ("recommendation", "vocabulary")


def shipped_recipes() -> list[str]:
    """Names of the recipe YAMLs inside the installed package, e.g. `smollm2-135m/movielens`."""
    root = resources.files("gti_peft") / "configs"
    if not root.is_dir():
        return []
    return sorted(
        f"{model.name}/{path.name[: -len('.yaml')]}"
        for model in root.iterdir()
        if model.is_dir()
        for path in model.iterdir()
        if path.name.endswith(".yaml")
    )


def resolve_config(name_or_path: str) -> Path:
    """A YAML path as given, else the shipped recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    packaged = resources.files("gti_peft") / "configs" / f"{name}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise FileNotFoundError(
        f"--config {name_or_path!r} is neither a YAML file nor a recipe shipped with gti-peft; shipped: "
        f"{shipped_recipes()}."
    )


def load_config(name_or_path: str, overrides: list[str] | None = None):
    """`(task, config)` of a recipe name or YAML path plus overrides; errors name the key and the fix."""
    from ..recipe.config import apply_overrides

    path = resolve_config(name_or_path)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {name_or_path!r} must hold a mapping of sections, got {type(values).__name__}.")
    task = values.pop("task", "recommendation")
    if task not in TASKS:
        raise ValueError(f"task: {task!r} in {path.name} is not a recipe; choose one of {list(TASKS)}.")
    values = apply_overrides(values, overrides or [])
    if task == "vocabulary":
        from ..recipe.vocabulary_config import build_vocabulary_config

        return task, build_vocabulary_config(values, path.name)
    from ..recipe.config import RecipeConfig, build_config

    return task, build_config(RecipeConfig, values, path.name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Shipped recipe name (e.g. smollm2-135m/movielens) or YAML.")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="Override a key."
    )


def run(args: argparse.Namespace) -> dict:
    task, config = load_config(args.config, args.overrides)  # every config error surfaces before any loading
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if task == "vocabulary":
        from ..recipe.vocabulary import run_vocabulary

        return run_vocabulary(config)
    from ..recipe import run_recipe

    return run_recipe(config)
