"""Every code block of README.md and docs/*.md is checked, and CI runs exactly the README's test command.

Each fence names its language: `bash` and `yaml` blocks may only name files that exist (and `gti-peft` subcommands
and shipped recipes that exist), YAML parses, Python compiles and every `gti_peft` name it imports or uses resolves
at its current module path (not an old, deprecated one). Blocks that show something else (a layout, a diagram)
are marked `text` on purpose. Prose references to `gti_peft.*` names and to repository files resolve as well, every
relative link leads to a file, and every docs page is linked from the README.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from gti_peft import _deprecated
from gti_peft.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]
CHECKED_LANGUAGES = {"bash", "yaml", "python", "text"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.S | re.M)
REPO_PATH = re.compile(r"\b((?:recipes|benchmarks|tests|gti_peft|docs)/[\w./-]*\w)")
# pages this README must link to (more may exist); a missing one means content was lost in a move
EXPECTED_DOCS = {
    "adapters.md", "architecture.md", "catalogs.md", "compatibility.md", "diagnostics.md", "fault-log.md",
    "grounding.md", "memory.md", "recipes.md", "results.md", "sharing.md", "trl.md", "vocabulary.md",
}  # fmt: skip


RECIPE_SECTIONS = {"task", "model", "data", "semantic_ids", "adapter", "grounding", "finetune", "evaluation", "output"}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """`(language, body)` of every fenced block, in order."""
    return [(language.strip(), body) for language, body in FENCE.findall(text)]


def blocks(language: str) -> list[tuple[Path, str]]:
    return [(page, body) for page in PAGES for lang, body in code_blocks(page.read_text()) if lang == language]


def resolve(dotted: str):
    """The object `gti_peft.a.b.c` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        assert module_name not in _deprecated.MOVED, (
            f"`{dotted}` uses the old module path {module_name}: write {_deprecated.MOVED[module_name]}"
        )
        try:
            value = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name) and error.name != module_name:
                raise
            continue
        for attribute in parts[end:]:
            value = getattr(value, attribute)
        return value
    raise AssertionError(f"`{dotted}` names no module")


def gti_names_in_python(source: str) -> set[str]:
    """Dotted `gti_peft` names a Python block imports or uses (`gti_peft.save_for_hub`, `gti_peft.training.sft`...)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gti_peft":
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "gti_peft")
        elif isinstance(node, ast.Attribute):
            chain = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "gti_peft":
                names.add(".".join(["gti_peft", *reversed(chain)]))
    return names


def test_the_docs_pages_exist_and_the_readme_links_each_one():
    names = {page.name for page in DOCS}
    assert names >= EXPECTED_DOCS, f"docs pages missing: {sorted(EXPECTED_DOCS - names)}"
    linked = {Path(target).name for target in re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]*)?\)", README)}
    assert names <= linked, f"docs pages the README does not link to: {sorted(names - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_fence_names_a_checked_language(page):
    text = page.read_text()
    fences = [line for line in text.splitlines() if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{page_id(page)}: an unclosed code fence"
    found = code_blocks(text)
    assert 2 * len(found) == len(fences), f"{page_id(page)}: a fence the checks cannot parse"
    unchecked = [language for language, _ in found if language not in CHECKED_LANGUAGES]
    assert not unchecked, f"{page_id(page)}: fences {unchecked}; use one of {sorted(CHECKED_LANGUAGES)}"


def test_there_are_blocks_of_every_checked_kind():
    counts = {language: len(blocks(language)) for language in ("bash", "yaml", "python")}
    assert all(counts.values()), f"no blocks to check: {counts}"
    assert sum(counts.values()) >= 15, counts  # README + docs held 18 such blocks when the docs were split


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_path_in_a_command_exists(page):
    commands = [body for language, body in code_blocks(page.read_text()) if language in ("bash", "yaml")]
    paths = {p for body in commands for p in REPO_PATH.findall(body)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{page_id(page)}: {missing}"


def test_every_gti_peft_command_names_a_subcommand_and_shipped_recipe_that_exist():
    bash = "\n".join(body for _, body in blocks("bash"))
    subcommands = re.findall(r"(?:gti-peft|-m gti_peft\.cli) ([\w-]+)", bash)
    assert subcommands, "no `gti-peft` command in any bash block"
    assert set(subcommands) <= set(SUBCOMMANDS), sorted(set(subcommands) - set(SUBCOMMANDS))
    shipped = {c for c in re.findall(r"--config ([\w./-]+)", bash) if not c.endswith((".yaml", ".yml"))}
    assert shipped, "no shipped recipe named in any bash block"
    missing = sorted(c for c in shipped if not (ROOT / "gti_peft" / "configs" / f"{c}.yaml").is_file())
    assert not missing, missing


def test_every_yaml_block_parses_and_recipe_yaml_loads_as_a_recipe(tmp_path):
    """A block made of recipe sections must pass the recipe's own loader (unknown keys, types, contradictions)."""
    from gti_peft.cli.train import load_config

    found = blocks("yaml")
    recipes = 0
    for number, (page, body) in enumerate(found):
        values = yaml.safe_load(body)
        assert isinstance(values, dict), f"{page_id(page)}: a YAML block that is no mapping"
        if set(values) <= RECIPE_SECTIONS:
            path = tmp_path / f"block{number}.yaml"
            path.write_text(body)
            load_config(str(path))
            recipes += 1
    assert recipes >= 3, f"only {recipes} recipe YAML blocks found"


def test_every_python_block_compiles_and_its_gti_peft_names_resolve():
    found = blocks("python")
    assert found
    names: set[str] = set()
    for page, body in found:
        compile(body, page_id(page), "exec")
        names |= gti_names_in_python(body)
    assert names, "no Python block uses gti_peft"
    for name in sorted(names):
        resolve(name)


def test_every_gti_peft_name_and_file_in_the_prose_exists():
    names, paths = set(), set()
    for page in PAGES:
        for code in re.findall(r"`([^`\n]+)`", FENCE.sub("", page.read_text())):
            names.update(re.findall(r"\b(gti_peft(?:\.\w+)+)", code))
            paths.update(p for p in REPO_PATH.findall(code) if not p.startswith("benchmarks/results/"))
    assert names and paths
    for name in sorted(names):
        resolve(name)
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_leads_to_a_file(page):
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = sorted(t for t in local if not (page.parent / t).exists())
    assert not missing, f"{page_id(page)}: {missing}"


def test_the_module_map_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [p for p in (ROOT / "gti_peft").rglob("*.py") if not p.name.startswith("_")]
    assert len(modules) > 30, len(modules)
    unnamed = sorted(str(p.relative_to(ROOT)) for p in modules if not re.search(rf"\b{re.escape(p.name)}\b", text))
    assert not unnamed, f"docs/architecture.md does not say what these modules are for: {unnamed}"


def python_block(page: Path, first_line: str) -> str:
    """The Python block of `page` that opens with `first_line`."""
    found = [body for language, body in code_blocks(page.read_text()) if language == "python"]
    opening = [body for body in found if body.startswith(first_line)]
    assert len(opening) == 1, f"{page_id(page)}: {len(opening)} Python blocks open with {first_line!r}"
    return opening[0]


def substitute(block: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in block, f"the block no longer holds {old!r}: update this test's substitutions"
        block = block.replace(old, new)
    return block


def test_the_quick_start_runs_and_the_adapter_it_saves_loads_as_the_sharing_page_shows(
    tiny_run_files, tmp_path, monkeypatch
):
    """The README's quick start, run as written on a real (tiny, random) Llama saved with the real SmolLM2
    tokenizer instead of the Hub's Qwen3 (2 grounding steps instead of 300), then docs/sharing.md's loading block on
    the folder it saved."""
    import torch

    monkeypatch.chdir(tmp_path)
    model_dir = repr(str(tiny_run_files / "model"))
    quick_start = substitute(
        python_block(README_PATH, "import gti_peft"),
        {'"Qwen/Qwen3-0.6B"': model_dir, "max_steps=300": "max_steps=2, eval_examples_per_template=1"},
    )
    trained: dict = {}
    exec(compile(quick_start, "README.md", "exec"), trained)
    report = trained["report"]
    assert report.diagnostics_after["effective_rank"] > report.diagnostics_before["effective_rank"]
    saved = {p.name for p in (tmp_path / "my-adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved

    loading = substitute(
        python_block(ROOT / "docs" / "sharing.md", "import gti_peft"),
        {'"outputs/smollm2-135m-movielens/adapter"': '"my-adapter"'},
    )
    loaded: dict = {}
    exec(compile(loading, "docs/sharing.md", "exec"), loaded)
    new_ids = trained["new_ids"]
    assert loaded["tokenizer"].convert_tokens_to_ids(["<a_0>", "<b_1>"]) == [new_ids[0], new_ids[3]]
    ids = torch.tensor([[1, new_ids[0], new_ids[3], 2]])
    with torch.no_grad():
        expected = trained["model"].eval()(input_ids=ids).logits
        assert torch.allclose(loaded["model"].eval()(input_ids=ids).logits, expected, atol=1e-5)


def test_ci_runs_the_readme_test_command():
    assert "make test" in README and "make demo" in README
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line and not line.startswith("#") and "set -" not in line][-1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    assert "recipes/gti.py --config recipes/smollm2-135m/movielens.yaml" in makefile
