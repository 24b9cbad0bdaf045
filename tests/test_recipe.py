"""The recipe: YAML parsing and its errors, and a whole run on a tiny model and a small synthetic catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_yaml

from gti_peft.recipe import RecipeConfig, load_recipe_config, run_recipe
from gti_peft.recipe.recommendation import grounding_label

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "gti_peft" / "configs").glob("*/*.yaml"))  # recipes/<model> link to these


def test_the_shipped_recipes_are_found():
    assert len(RECIPES) >= 5, "no recipe YAMLs found: the parametrized test below would run on nothing"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_parses_and_opens_with_its_command(path):
    from gti_peft.cli.train import load_config
    from gti_peft.recipe.vocabulary_config import VocabularyConfig

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
        ("adapter:\n  init: zeros\n", r"bad.yaml.adapter: `init` must be one of"),
        ("adapter:\n  new_token_ids: [1]\n", r"adapter.new_token_ids is set by the recipe"),
        ("adapter:\n  description_items_per_token: 4\n", r"is now semantic_ids.description_items_per_token"),
        ("evaluation:\n  num_beams: 5\n  top_k: 10\n", r"top_k=10 exceeds evaluation.num_beams=5"),
        ("output:\n  stages: [ground, train]\n", r"unknown stage\(s\) \['train'\]"),
        ("data:\n  dataset: files\n", r"needs data.interactions_path"),
        (
            "grounding:\n  templates: [title_to_tokens, nope]\n",
            r"bad.yaml.grounding: GroundingConfig refuses.*unknown template\(s\) \['nope'\]",
        ),
        ("finetune:\n  learning_rate: -1\n", r"finetune: FinetuneConfig refuses.*learning_rate > 0, got .*-1"),
        ("grounding:\n  prompt_style: plain\n", r"grounding.prompt_style is set by the recipe: use data.prompt_style"),
        ("finetune:\n  batch_size: 4\n", r"finetune.batch_size is now per_device_train_batch_size"),
        ("finetune:\n  max_stepz: 4\n", r"Unknown key\(s\) \['max_stepz'\] in bad.yaml.finetune.*mean \['max_steps'"),
        ("finetune:\n  output_dir: x\n", r"finetune.output_dir is set by the recipe: use output.output_dir"),
        ("finetune:\n  lr_scheduler_type: bogus\n", r"finetune: FinetuneConfig refuses these settings: .*bogus"),
        (
            "finetune:\n  grounding_mix: 1.5\n",
            r"finetune: FinetuneConfig refuses.*grounding_mix must lie in \[0, 1\].*got 1.5",
        ),
        ("finetune:\n  grounding_mix: -0.1\n", r"grounding_mix must lie in \[0, 1\]"),
        ("grounding:\n  grounding_mix: 0.5\n", r"grounding.grounding_mix is a fine-tuning key"),
        ("finetune:\n  templates: [title_to_tokens]\n", r"finetune.templates is not used: grounding.templates"),
        (
            "finetune:\n  bf16: maybe\n",
            r"finetune: FinetuneConfig refuses.*bf16 must be true, false or 'auto', got 'maybe'",
        ),
        ("data:\n  prompt_style: fancy\n", r"data.prompt_style must be one of"),
        ("data:\n  examples: sequence\n", r"data.examples must be one of \['windows', 'sequences'\], got 'sequence'"),
        ("data:\n  examples: sequences\n  max_history: 1\n", r"max_history=1 .*history of 0 items.*>= 2"),
        ("data:\n  examples: windows\n  max_history: 0\n", r"max_history=0 .*history of 0 items.*>= 1"),
        (
            "data:\n  examples: windows\n  max_chunks_per_user: 1\n",
            r"data.max_chunks_per_user=1 applies to sequence chunks, but data.examples='windows'",
        ),
        ("data:\n  max_chunks_per_user: 0\n", r"data.max_chunks_per_user=0 keeps no chunk: set it to 1 or more"),
        (
            "semantic_ids:\n  embedding: graph\n",
            r"semantic_ids.embedding must be one of \['text', 'collaborative', 'text\+collaborative'\], got 'graph'",
        ),
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
    assert config.grounding.max_steps == 7 and config.grounding.learning_rate == 1e-3  # GroundingConfig's default
    assert config.finetune.adam_beta2 == 0.999  # any TrainingArguments field, at its default
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe_config(path, ["init=mean"])


def test_the_results_table_says_whether_the_rows_were_grounded(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"grounding:\n  max_steps: 7\noutput:\n  output_dir: {tmp_path / 'run'}\n")
    config = load_recipe_config(path, ["output.stages=[evaluate]"])
    assert grounding_label(config) == ", no grounding"  # a mean start: no grounded/ folder in the run
    (tmp_path / "run" / "grounded").mkdir(parents=True)
    assert grounding_label(config) == " + GTI (7 grounding steps)"  # grounded by an earlier call of this run


def test_recipe_runs_end_to_end_and_resumes(tiny_run_files, tmp_path):
    out = tmp_path / "run"
    config_path = tiny_yaml(tiny_run_files, out)
    results = run_recipe(load_recipe_config(config_path))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["model"]["n_users"] == 6
    assert 0.0 <= metrics["metrics"]["model"]["recall@5"] <= 1.0
    assert "popularity" in results["table"] and "recall@5" in results["table"]
    assert "mean init + GTI (3 grounding steps)" in results["table"]
    assert metrics["grounding"]["steps"] == 3 and metrics["finetune"]["steps"] == 3
    assert metrics["geometry"]["start"]["effective_rank"] < metrics["geometry"]["grounded"]["effective_rank"]
    # RSA against the codebooks although these IDs carry a disambiguation level (24 items on 4 x 4 codes collide)
    assert "rsa_spearman" in metrics["geometry"]["grounded"] and "rsa_spearman" in metrics["geometry"]["finetuned"]
    card = (out / "adapter" / "README.md").read_text()
    assert "recall@5" in card  # the card shows the metrics, added after evaluation without re-saving the weights
    for folder in ("grounded", "adapter"):
        names = {p.name for p in (out / folder).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "semantic_ids.safetensors"} <= names
        assert "tokenizer.json" in names
    assert (out / "diagnostics" / "spectrum.png").stat().st_size > 0
    # evaluate-only rerun loads the saved adapter and reproduces the rankings; its geometry says what it loaded
    weights = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_recipe(load_recipe_config(config_path, ["output.stages=[evaluate]"]))
    assert again["metrics"]["model"] == results["metrics"]["model"]
    assert again["table"] == results["table"]  # still labelled grounded: the loaded adapter was
    assert list(again["geometry"]) == ["loaded from adapter/"]
    assert again["geometry"]["loaded from adapter/"] == metrics["geometry"]["finetuned"]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == weights
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
    from conftest import llama_config, smollm2_tokenizer
    from transformers import LlamaForCausalLM

    from gti_peft import add_new_tokens
    from gti_peft.recipe.config import EvalArgs
    from gti_peft.recipe.evaluation import evaluate_next_item

    tokenizer = smollm2_tokenizer()
    add_new_tokens(tokenizer, ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tied=True, vocab=len(tokenizer)))
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    sids = {f"m{i}": [f"<a_{i // 2}>", f"<b_{i % 2}>"] for i in range(6)}
    examples = [{"user": "u0", "history": ["m0", "m2"], "target": "m1"}]
    args = EvalArgs(num_beams=6, top_k=5, max_users=None, batch_size=1, bf16=bf16, exclude_history=False)
    prompts = [tokenizer("The user watched <a_0><b_0><a_1><b_0>.")["input_ids"]]
    result = evaluate_next_item(model, tokenizer, prompts, examples, sids, {"u0": ["m0", "m2"]}, args, 6)
    assert len(set(result["rankings"]["u0"])) == 5 and set(result["rankings"]["u0"]) <= set(sids)
    assert seen and set(seen) == {bf16}
    assert not torch.is_autocast_enabled("cpu")


def test_grounding_mix_makes_that_fraction_of_the_fine_tuning_data(tiny_run_files, tmp_path):
    from accelerate import PartialState

    from gti_peft.recipe.data import finetune_dataset, load_data, semantic_ids_stage
    from gti_peft.recipe.model import build_model
    from gti_peft.recipe.outputs import prepare_output_dir

    sizes = {}
    for mix in (0.0, 0.25, 1.0):
        overrides = ["data.examples=windows", f"finetune.grounding_mix={mix}"]  # sequences: the test below
        config = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / "mix"), overrides)
        config.output.overwrite = True
        out = prepare_output_dir(config, PartialState())
        data = load_data(config)
        sids = semantic_ids_stage(config, data, out, PartialState())
        tokenizer, _ = build_model(config, sids, data, None)
        dataset = finetune_dataset(config, tokenizer, sids, data)
        recommendation = "Predict the next item"
        texts = [tokenizer.decode(ids) for ids in dataset["input_ids"]]
        sizes[mix] = (len(texts), sum(recommendation in t for t in texts))
    n_task = sizes[0.0][0]
    assert sizes[0.0][1] == n_task  # no mix: only next-item examples
    total, task = sizes[0.25]
    assert task == n_task and abs((total - task) / total - 0.25) < 1 / total + 1e-9
    assert sizes[1.0][1] == 0 and sizes[1.0][0] > 0


def test_a_mix_without_grounding_examples_is_refused_before_training(tiny_run_files, tmp_path):
    overrides = ["finetune.grounding_mix=0.3", "grounding.templates=[text_to_tokens]"]  # items have no `text`
    out = tmp_path / "nomix"
    config = load_recipe_config(tiny_yaml(tiny_run_files, out), overrides)
    with pytest.raises(ValueError, match=r"finetune.grounding_mix=0.3 asks for grounding examples.*text_to_tokens"):
        run_recipe(config)
    assert not (out / "semantic_ids.safetensors").exists() and not (out / "grounded").exists()


def test_stage_sections_are_the_training_arguments_the_trainers_get(tmp_path):
    from transformers import TrainingArguments

    from gti_peft.training.grounding_config import GroundingConfig

    path = tmp_path / "r.yaml"
    path.write_text(
        "finetune:\n  adam_beta1: 0.5\n  train_sampling_strategy: group_by_length\n  bf16: false\n"
        "data:\n  prompt_style: plain\n  max_length: 99\n"
    )
    config = load_recipe_config(path, [f"output.output_dir={tmp_path / 'run'}", "output.seed=3"])
    args = config.finetune
    assert isinstance(args, TrainingArguments) and isinstance(config.grounding, GroundingConfig)
    assert args.adam_beta1 == 0.5 and args.train_sampling_strategy == "group_by_length" and args.bf16 is False
    assert args.seed == 3 and args.output_dir == str(tmp_path / "run" / "checkpoints-finetune")
    assert args.learning_rate == 5e-4 and args.save_total_limit == 2  # FinetuneConfig's / the recipe's defaults
    grounding = config.grounding  # the data section's prompt settings reach grounding; the seed and folder too
    assert (grounding.prompt_style, grounding.max_length, grounding.seed) == ("plain", 99, 3)
    assert grounding.output_dir == str(tmp_path / "run" / "checkpoints-ground")


def test_the_saved_recipe_reads_back_to_the_same_settings(tmp_path):
    import yaml

    from gti_peft.recipe.config import recipe_to_dict

    path = tmp_path / "r.yaml"
    path.write_text(
        "adapter:\n  init: random\n  r: 4\n  target_modules: [q_proj, v_proj]\n"
        "grounding:\n  max_steps: 7\n  templates: [title_to_tokens]\n  lr_scheduler_type: cosine\n"
        "finetune:\n  grounding_mix: 0.25\n  adam_beta2: 0.99\n  learning_rate: 1e-3\n  bf16: false\n"
        "  save_strategy: steps\n"  # bf16: false is TrainingArguments' default but not the recipe's
    )
    config = load_recipe_config(path)
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(recipe_to_dict(config)))
    again = load_recipe_config(saved)
    assert recipe_to_dict(again) == recipe_to_dict(config)
    assert (
        again.finetune.to_dict() == config.finetune.to_dict()
        and again.grounding.to_dict() == config.grounding.to_dict()
    )
    assert again.adapter.target_modules == {"q_proj", "v_proj"} and again.adapter.r == 4
    assert again.finetune.bf16 is False and again.grounding.bf16 == "auto"
    assert (again.finetune.grounding_mix, again.finetune.adam_beta2, again.grounding.templates) == (
        0.25,
        0.99,
        ["title_to_tokens"],
    )


def _tiny_sequence_setup(tiny_run_files, tmp_path, *overrides):
    from accelerate import PartialState

    from gti_peft.recipe.data import load_data, semantic_ids_stage
    from gti_peft.recipe.model import build_model
    from gti_peft.recipe.outputs import prepare_output_dir

    config = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / "seq"), ["data.examples=sequences", *overrides])
    out = prepare_output_dir(config, PartialState())
    data = load_data(config)
    sids = semantic_ids_stage(config, data, out, PartialState())
    tokenizer, _ = build_model(config, sids, data, None)
    return config, data, sids, tokenizer


@pytest.mark.parametrize("separator", ["", ", "])
def test_a_sequence_example_labels_exactly_the_id_tokens_of_items_two_to_n(tiny_run_files, tmp_path, separator):
    from gti_peft.recipe.data import prompt_ids, sequence_ids

    config, data, sids, tokenizer = _tiny_sequence_setup(
        tiny_run_files, tmp_path, f"data.history_separator='{separator}'"
    )
    tokens = sids.token_lists()
    items = ["m3", "m7", "m1", "m20"]
    ids, labels = sequence_ids(config, tokenizer, tokens, items)
    labelled = [label for label in labels if label != -100]
    assert labelled == [t for item in items[1:] for t in tokenizer.convert_tokens_to_ids(tokens[item])]
    assert len(ids) == len(labels)
    # evaluation's prompt for history items[:3] is the training example up to item 4's ID: the same positions
    prompt = prompt_ids(config, tokenizer, tokens, items[:3])
    first_target = len(ids) - len(tokens["m20"])
    assert prompt == ids[:first_target]
    assert labels[first_target:] == ids[first_target:]


def test_sequence_examples_train_every_target_and_evaluate_with_trainings_history(tiny_run_files, tmp_path):
    from gti_peft.recipe.data import finetune_dataset

    config, data, sids, tokenizer = _tiny_sequence_setup(tiny_run_files, tmp_path)
    per_item = len(next(iter(sids.token_lists().values())))
    dataset = finetune_dataset(config, tokenizer, sids, data)
    labelled = sum(sum(label != -100 for label in row) for row in dataset["labels"])
    targets = sum(len(items) - 1 for items in data.split.train.values())  # every item after each user's first
    assert labelled == targets * per_item
    assert len(dataset) == len(data.split.train) * 2  # 4 training items per user, chunks of 3 overlapping by one
    # max_history=3 items per chunk: at most 2 items of history before a target, in training and in evaluation
    assert {len(ex["history"]) for ex in data.split.test} == {2}


def test_latest_chunks_per_user_train_each_users_most_recent_items(tiny_run_files, tmp_path):
    from gti_peft.recipe.data import finetune_dataset, sequence_ids

    config, data, sids, tokenizer = _tiny_sequence_setup(tiny_run_files, tmp_path, "data.max_chunks_per_user=1")
    dataset = finetune_dataset(config, tokenizer, sids, data)
    tokens, size = sids.token_lists(), config.data.max_history
    latest = [sequence_ids(config, tokenizer, tokens, items[-size:])[0] for items in data.split.train.values()]
    assert sorted(dataset["input_ids"]) == sorted(latest)  # one chunk per user: its latest max_history items


def test_sequence_examples_run_with_continual_grounding(tiny_run_files, tmp_path):
    out = tmp_path / "seqmix"
    overrides = ["data.examples=sequences", "finetune.grounding_mix=0.25"]
    results = run_recipe(load_recipe_config(tiny_yaml(tiny_run_files, out), overrides))
    assert results["finetune"]["steps"] == 3 and results["finetune"]["grounding_mix"] == 0.25
    assert results["metrics"]["model"]["n_users"] == 6


def test_a_history_that_cannot_fit_max_length_is_refused_before_training(tiny_run_files, tmp_path):
    out = tmp_path / "long"
    overrides = ["data.examples=sequences", "data.max_history=40", "data.max_length=64"]
    config = load_recipe_config(tiny_yaml(tiny_run_files, out), overrides)
    with pytest.raises(
        ValueError, match=r"data.max_history=40 \(sequences: 39 items.*needs \d+ tokens.*max_length=64"
    ):
        run_recipe(config)
    assert not (out / "grounded").exists() and not (out / "checkpoints-ground").exists()
    overrides = ["data.examples=windows", "data.max_length=20"]
    windows = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / "long2"), overrides)
    with pytest.raises(ValueError, match=r"data.max_history=3 \(windows: 3 items.*needs \d+ tokens"):
        run_recipe(windows)


def test_a_folder_holding_another_runs_settings_is_refused_and_its_own_resumes(tmp_path):
    import yaml
    from accelerate import PartialState

    from gti_peft.recipe.outputs import prepare_output_dir

    path = tmp_path / "r.yaml"
    path.write_text(f"output:\n  output_dir: {tmp_path / 'run'}\nfinetune:\n  bf16: auto\n  adam_beta2: 0.99\n")
    prepare_output_dir(load_recipe_config(path), PartialState())
    prepare_output_dir(load_recipe_config(path, ["evaluation.top_k=5"]), PartialState())  # output/evaluation differ
    with pytest.raises(FileExistsError, match=r"holds a run with different \['finetune'\] settings"):
        prepare_output_dir(load_recipe_config(path, ["finetune.learning_rate=1e-2"]), PartialState())
    saved = tmp_path / "run" / "recipe.yaml"  # a run saved before the stages resolved bf16 recorded 'auto'
    settings = yaml.safe_load(saved.read_text())
    saved.write_text(yaml.safe_dump(settings | {"finetune": settings["finetune"] | {"bf16": "auto"}}))
    prepare_output_dir(load_recipe_config(path), PartialState())
    assert yaml.safe_load(saved.read_text())["task"] == "recommendation"


def test_a_recipe_yaml_of_the_previous_release_resumes_with_the_same_settings_only():
    import yaml

    from gti_peft.recipe.outputs import changed_sections

    # written by the release before the stage sections became GroundingConfig / FinetuneConfig (full sections,
    # `bf16: auto`, adapter.description_items_per_token): make demo's YAML with these overrides (the demo has since
    # moved to each user's latest chunk and a cosine lr)
    previous = yaml.safe_load((ROOT / "tests" / "data" / "recipe-0.1-movielens.yaml").read_text())
    same = ["finetune.max_steps=3", "finetune.logging_steps=1", "finetune.bf16=false", "output.stages=[finetune]"]
    same += ["finetune.lr_scheduler_type=constant_with_warmup", "data.max_chunks_per_user=null"]
    config = load_recipe_config(ROOT / "recipes" / "smollm2-135m" / "movielens.yaml", same)
    assert changed_sections(previous, config, "recommendation") == []
    changed = load_recipe_config(ROOT / "recipes" / "smollm2-135m" / "movielens.yaml", [*same, "adapter.r=4"])
    assert changed_sections(previous, changed, "recommendation") == ["adapter"]
    assert changed_sections(previous, config, "vocabulary") == ["task"]
