"""The recipe: YAML parsing and its errors, and a whole run on a tiny model and a small synthetic catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_yaml

from gti_peft.recipe import RecipeConfig, load_recipe_config, run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "gti_peft" / "recipes").glob("*/*.yaml"))  # recipes/<model> link to these


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_parses_and_opens_with_its_command(path):
    from gti_peft.recipe.vocabulary_config import VocabularyConfig
    from gti_peft.train_cli import load_config

    task, config = load_config(str(path))
    assert isinstance(config, {"recommendation": RecipeConfig, "vocabulary": VocabularyConfig}[task])
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and any(c in first for c in ("recipes/gti.py", "make demo", "gti-peft train"))
    assert (ROOT / "recipes" / path.parent.name / path.name).is_file()  # the checkout's path still works


def test_accelerate_configs_open_with_their_command():
    configs = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2"}
    for path in configs:
        assert path.read_text().startswith(f"# accelerate launch --config_file recipes/accelerate_configs/{path.name}")


@pytest.mark.parametrize(
    "text, match",
    [
        ("adapter:\n  rank: 8\n", r"Unknown key\(s\) \['rank'\] in bad.yaml.adapter"),
        ("modle:\n  name_or_path: x\n", r"Unknown key\(s\) \['modle'\]"),
        ("adapter:\n  r: eight\n", r"bad.yaml.adapter.r must be int, got 'eight'"),
        ("adapter:\n  init: zeros\n", r"adapter.init must be one of"),
        ("evaluation:\n  num_beams: 5\n  top_k: 10\n", r"top_k=10 exceeds evaluation.num_beams=5"),
        ("output:\n  stages: [ground, train]\n", r"unknown stage\(s\) \['train'\]"),
        ("data:\n  dataset: files\n", r"needs data.interactions_path"),
        ("grounding:\n  templates: [title_to_tokens, nope]\n", r"unknown template\(s\) \['nope'\]"),
        ("finetune:\n  learning_rate: -1\n", r"learning_rate > 0"),
    ],
)
def test_bad_yaml_fails_naming_the_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_recipe_config(path)


def test_overrides_and_stage_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("grounding:\n  max_steps: 7\n")
    config = load_recipe_config(path, ["adapter.init=random", "finetune.learning_rate=2e-4"])
    assert config.adapter.init == "random" and config.finetune.learning_rate == 2e-4
    assert config.grounding.max_steps == 7 and config.grounding.learning_rate == 1e-3  # grounding's default kept
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe_config(path, ["init=mean"])


def test_recipe_runs_end_to_end_and_resumes(tiny_run_files, tmp_path):
    out = tmp_path / "run"
    config_path = tiny_yaml(tiny_run_files, out)
    results = run_recipe(load_recipe_config(config_path))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["model"]["n_users"] == 6
    assert 0.0 <= metrics["metrics"]["model"]["recall@5"] <= 1.0
    assert "popularity" in results["table"] and "recall@5" in results["table"]
    assert metrics["grounding"]["steps"] == 3 and metrics["finetune"]["steps"] == 3
    assert metrics["geometry"]["start"]["effective_rank"] < metrics["geometry"]["grounded"]["effective_rank"]
    for folder in ("grounded", "adapter"):
        names = {p.name for p in (out / folder).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "semantic_ids.safetensors"} <= names
        assert "tokenizer.json" in names
    assert (out / "diagnostics" / "spectrum.png").stat().st_size > 0
    # evaluate-only rerun loads the saved adapter and reproduces the rankings
    again = run_recipe(load_recipe_config(config_path, ["output.stages=[evaluate]"]))
    assert again["metrics"]["model"] == results["metrics"]["model"]
    assert "grounding" not in again and "finetune" not in again


def test_recipe_refuses_a_foreign_output_dir(tiny_run_files, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a GTI recipe run"):
        run_recipe(load_recipe_config(tiny_yaml(tiny_run_files, out)))
    assert (out / "notes.txt").read_text() == "precious"


def test_a_log_where_no_user_has_three_interactions_fails_clearly(tiny_run_files, tmp_path):
    log = tmp_path / "short.csv"
    log.write_text("user_id,item_id,timestamp\nu1,m1,1\nu1,m2,2\nu2,m3,5\n")
    config = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / "out"), [f"data.interactions_path={log}"])
    with pytest.raises(ValueError, match="No user has enough interactions"):
        run_recipe(config)


@pytest.mark.parametrize("bf16", [False, True])
def test_evaluation_runs_at_the_precision_evaluation_bf16_names(bf16):
    import torch
    from conftest import llama_config
    from transformers import LlamaForCausalLM

    from gti_peft import add_new_tokens
    from gti_peft.offline_assets import smollm2_tokenizer
    from gti_peft.recipe.config import EvalArgs
    from gti_peft.recipe.evaluation import evaluate_next_item

    tokenizer = smollm2_tokenizer()
    add_new_tokens(tokenizer, ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tied=True, vocab=len(tokenizer)))
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    sids = {f"m{i}": f"<a_{i // 2}><b_{i % 2}>" for i in range(6)}
    examples = [{"user": "u0", "history": ["m0", "m2"], "target": "m1"}]
    args = EvalArgs(num_beams=6, top_k=5, max_users=None, batch_size=1, bf16=bf16)
    result = evaluate_next_item(model, tokenizer, examples, sids, {"u0": ["m0", "m2"]}, args, catalog_size=6)
    assert len(set(result["rankings"]["u0"])) == 5 and set(result["rankings"]["u0"]) <= set(sids)
    assert seen and set(seen) == {bf16}
    assert not torch.is_autocast_enabled("cpu")
