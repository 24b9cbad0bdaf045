"""The vocabulary recipe: its inputs' errors (before any model loads), WordNet data, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json

import pytest

from gti_peft.cli.train import load_config
from gti_peft.recipe.vocabulary import run_vocabulary
from gti_peft.recipe.vocabulary_config import build_vocabulary_config
from gti_peft.recipe.vocabulary_data import load_vocabulary_data

PAIRS = [
    ("<obdurate>", "stubbornly persistent in wrongdoing"),
    ("<pneumatic>", "of or relating to air"),
    ("<trichromatic>", "having or involving three colors"),
    ("<grapo>", "an armed wing of a party"),
]
SENTENCES = [
    "he is <obdurate> in refusing",
    "a <pneumatic> drill",
    "<trichromatic> vision",
    "a <pneumatic> tire",
    "the <grapo> is opposed to it",
    "an <obdurate> child",
    "a <trichromatic> printing process",
    "he was <obdurate> again",
    "a <pneumatic> hammer",
    "<trichromatic> staining",
]


def write_inputs(folder, pairs=PAIRS, sentences=SENTENCES):
    with open(folder / "tokens.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["token", "text"])
        writer.writerows(pairs)
    (folder / "corpus.txt").write_text("\n".join(sentences) + "\n")
    return folder / "tokens.csv", folder / "corpus.txt"


def config_for(tmp_path, model_dir, **data):
    tokens, corpus = write_inputs(tmp_path)
    values = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": "files", "tokens": str(tokens), "corpus": str(corpus), "heldout_fraction": 0.3, **data},
        "adapter": {"init": "mean", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0},
        "grounding": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "bf16": False,
            "learning_rate": 0.05,
            "logging_steps": 1,
        },
        "finetune": {
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "bf16": False,
            "learning_rate": 0.01,
            "logging_steps": 1,
        },
        "evaluation": {"batch_size": 4, "bootstrap_samples": 200},
        "output": {"output_dir": str(tmp_path / "run")},
    }
    return build_vocabulary_config(values, "test.yaml")


@pytest.mark.parametrize(
    "pairs, sentences, match",
    [
        ([("<a>", "first meaning"), ("<b>", "")], SENTENCES[:1] + ["<a> x", "<b> y"], r"data.text_column: rows \[1\]"),
        ([("<a>", "same text"), ("<b>", "same text")], ["<a> x", "<b> y", "<a> z"], r"\['same text'\] appear more"),
        ([("<a>", "one"), ("<a>", "two")], ["<a> x", "<a> y"], r"data.token_column: \['<a>'\] appear more"),
        (PAIRS, ["no new token here", "nor here"], r"data.corpus .* contains none of the new tokens"),
    ],
)
def test_bad_tables_and_corpora_fail_naming_the_setting(tmp_path, pairs, sentences, match):
    tokens, corpus = write_inputs(tmp_path, pairs, sentences)
    config = build_vocabulary_config({"data": {"tokens": str(tokens), "corpus": str(corpus)}}, "t.yaml")
    with pytest.raises(ValueError, match=match):
        load_vocabulary_data(config.data)


def test_tokens_the_tokenizer_has_fail_before_the_model_loads(tmp_path, tiny_run_files):
    config = config_for(tmp_path, tiny_run_files / "model")
    write_inputs(tmp_path, [("hello", "a greeting"), ("<new>", "something new")], ["hello <new>", "<new> again"])
    with pytest.raises(ValueError, match=r"data.tokens: \['hello'\] already exist in the tokenizer"):
        run_vocabulary(config)
    assert not (tmp_path / "run").exists()  # nothing written


def test_an_unreachable_dataset_id_offline_names_the_setting_and_why(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    tokens, _ = write_inputs(tmp_path)
    config = build_vocabulary_config({"data": {"tokens": str(tokens), "corpus": "nobody/no-such-corpus"}}, "t.yaml")
    with pytest.raises(ValueError, match=r"data.corpus='nobody/no-such-corpus' .* HF_HUB_OFFLINE"):
        load_vocabulary_data(config.data)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"data": {"source": "files", "tokens": "t.csv"}}, "needs data.tokens .* and data.corpus"),
        ({"data": {"source": "web"}}, "data.source must be one of"),
        ({"data": {"source": "wordnet", "heldout_fraction": 1.5}}, r"heldout_fraction must lie in \(0, 1\)"),
        ({"data": {"source": "wordnet"}, "grounding": {"templates": ["title_to_tokens"]}}, r"\['title_to_tokens'\]"),
        ({"data": {"source": "wordnet", "tokenz": 3}}, r"Unknown key\(s\) \['tokenz'\]"),
    ],
)
def test_bad_vocabulary_yaml_fails_naming_the_key(values, match):
    with pytest.raises(ValueError, match=match):
        build_vocabulary_config(values, "t.yaml")


def test_wordnet_rare_words_become_tokens_with_glosses_and_examples():
    from gti_peft.assets.offline import wordnet_dir
    from gti_peft.assets.wordnet import rare_word_vocabulary

    table, corpus = rare_word_vocabulary(wordnet_dir(), 30, seed=0)
    assert len(table) == 30 and len({row["token"] for row in table}) == 30
    assert all(row["token"].startswith("<") and row["text"] for row in table)
    assert all(any(row["token"] in sentence for sentence in corpus) for row in table)  # every token is used
    assert rare_word_vocabulary(wordnet_dir(), 30, seed=0) == (table, corpus)
    with pytest.raises(ValueError, match="data.wordnet_words=0"):
        rare_word_vocabulary(wordnet_dir(), 0)


def test_recipe_runs_gti_and_the_mean_start_at_equal_steps(tmp_path, tiny_run_files, capsys):
    results = run_vocabulary(config_for(tmp_path, tiny_run_files / "model"))
    assert capsys.readouterr().out.count("expected peak") == 2  # the memory check, once per arm, before loading
    arms = results["arms"]
    assert list(arms) == ["mean start + GTI", "mean start"]
    gti, mean = arms["mean start + GTI"], arms["mean start"]
    assert gti["finetune"]["steps"] == mean["finetune"]["steps"] == 2 and gti["grounding"]["steps"] == 2
    assert gti["grounding_steps"] == 2 and mean["grounding_steps"] == 0 and "grounding" not in mean
    assert gti["geometry"]["start"]["effective_rank"] < gti["geometry"]["grounded"]["effective_rank"]
    # each arm is a whole pipeline run: its own recipe.yaml, metrics and stage folders, with the memory check
    for folder in ("gti", "no_grounding"):
        assert (tmp_path / "run" / folder / "recipe.yaml").is_file()
        assert (tmp_path / "run" / folder / "metrics.json").is_file()
    assert (tmp_path / "run" / "gti" / "grounded").is_dir() and not (
        tmp_path / "run" / "no_grounding" / "grounded"
    ).exists()
    for arm in (gti, mean):
        m = arm["metrics"]
        assert m["heldout_texts"] == 3 and m["heldout_new_token_positions"] >= 3
        assert 0 <= m["text_to_token_accuracy"] <= 1 and m["heldout_new_token_loss"] > 0
    assert results["paired_bootstrap_new_token_loss"]["n_users"] >= 1
    assert "held-out loss @ new tokens" in results["table"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["arms"]["mean start"]["metrics"]["heldout_loss"] == mean["metrics"]["heldout_loss"]
    assert (tmp_path / "run" / "gti" / "adapter" / "adapter_model.safetensors").is_file()
    # evaluate-only rerun loads the saved adapters and reproduces the metrics
    config = load_config(str(tmp_path / "run" / "recipe.yaml"), ["output.stages=[evaluate]"])[1]
    again = run_vocabulary(config)
    assert again["arms"]["mean start"]["metrics"]["heldout_loss"] == pytest.approx(mean["metrics"]["heldout_loss"])
