"""`GroundingConfig`: grounding's settings as one TrainingArguments subclass, parsed like any HF config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_grounding import tiny_gti, tokenizer_and_pairs  # noqa: F401  (the fixture)
from transformers import HfArgumentParser, TrainingArguments

from gti_peft import ground, new_token_rows
from gti_peft.training.grounding_config import TEMPLATE_NAMES, GroundingConfig
from gti_peft.training.templates import DEFAULT_TEMPLATES


def test_defaults_are_the_papers_and_every_training_argument_works():
    args = GroundingConfig(gradient_accumulation_steps=2)
    assert isinstance(args, TrainingArguments)
    assert (args.max_steps, args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (
        300,
        1e-3,
        0.0,
        16,
    )
    assert args.output_dir is None  # ground() trains in a temporary folder it removes
    assert args.gradient_accumulation_steps == 2
    assert args.use_cpu == (not torch.cuda.is_available())
    assert args.grounding_templates() == DEFAULT_TEMPLATES


def test_hf_argument_parser_reads_it_from_a_dict_and_a_command_line():
    parser = HfArgumentParser(GroundingConfig)
    (from_dict,) = parser.parse_dict({"max_steps": 80, "templates": ["title_to_tokens"], "prompt_style": "plain"})
    (from_cli,) = parser.parse_args_into_dataclasses(
        ["--max_steps", "80", "--templates", "title_to_tokens", "--prompt_style", "plain"]
    )
    for args in (from_dict, from_cli):
        assert (args.max_steps, args.templates, args.prompt_style) == (80, ["title_to_tokens"], "plain")
        assert [t.name for t in args.grounding_templates()] == ["title_to_tokens"]


@pytest.mark.parametrize(
    "bad, names",
    [
        ({"templates": ["title_to_token"]}, ["templates", "title_to_token", TEMPLATE_NAMES[0]]),
        ({"templates": []}, ["templates", "[]"]),
        ({"prompt_style": "chatty"}, ["prompt_style", "chatty", "plain"]),
        ({"max_length": 0}, ["max_length", "0"]),
        ({"learning_rate": 0.0}, ["learning_rate", "0.0"]),
        ({"max_steps": -2}, ["max_steps", "-2"]),
        ({"bf16": "sometimes"}, ["bf16", "sometimes", "auto"]),
    ],
)
def test_bad_settings_name_the_field_the_value_and_the_choices(bad, names):
    with pytest.raises(ValueError) as error:
        GroundingConfig(**bad)
    assert all(name in str(error.value) for name in names)


def test_bf16_auto_stays_a_setting_until_a_trainer_resolves_it(monkeypatch, tokenizer_and_pairs, tmp_path):  # noqa: F811
    from gti_peft.training import precision
    from gti_peft.training.trainer import AnswerOnlyTrainer

    args = GroundingConfig(bf16="auto", output_dir=str(tmp_path))
    assert args.bf16 == "auto"  # saved as written: another device resolves it for itself
    assert HfArgumentParser(GroundingConfig).parse_dict({"bf16": "auto"})[0].bf16 == "auto"
    tokenizer, tokens, _ = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    for faster in (True, False):
        monkeypatch.setattr(precision, "bf16_is_faster", lambda faster=faster: faster)
        trainer = AnswerOnlyTrainer(model=model, args=args)
        assert trainer.args.bf16 is faster  # Trainer gets a bool, never the string
    assert args.bf16 == "auto"  # the caller's config is left as it was


def test_a_config_and_the_same_keywords_ground_identically(tokenizer_and_pairs):  # noqa: F811
    tokenizer, tokens, pairs = tokenizer_and_pairs
    settings = {"max_steps": 3, "learning_rate": 2e-2, "per_device_train_batch_size": 4, "prompt_style": "plain"}
    rows = []
    for call in ({"args": GroundingConfig(**settings)}, settings):
        model = tiny_gti(tokenizer, tokens)
        report = ground(model, tokenizer, pairs, **call)
        rows.append(new_token_rows(model)[1].detach().clone())
        assert report.steps == 3 and report.settings["learning_rate"] == 2e-2
        assert report.settings["prompt_style"] == "plain" and "output_dir" not in report.settings
        assert model.peft_config["default"].grounding["prompt_style"] == "plain"
    assert torch.equal(rows[0], rows[1])
    assert not torch.equal(rows[0], new_token_rows(tiny_gti(tokenizer, tokens))[1])  # grounding moved the rows


def test_ambiguous_calls_are_refused_before_training(tokenizer_and_pairs):  # noqa: F811
    tokenizer, tokens, pairs = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    before = new_token_rows(model)[1].detach().clone()
    with pytest.raises(TypeError, match="both `args` and the settings"):
        ground(model, tokenizer, pairs, GroundingConfig(max_steps=1), learning_rate=1.0)
    with pytest.raises(ValueError, match="template objects and GroundingConfig.templates"):
        ground(model, tokenizer, pairs, GroundingConfig(templates=["title_to_tokens"]), templates=DEFAULT_TEMPLATES)
    with pytest.raises(TypeError, match="must be a GroundingConfig"):
        ground(model, tokenizer, pairs, {"max_steps": 1})
    assert torch.equal(new_token_rows(model)[1], before)


def test_replace_keeps_a_temporary_output_folder_temporary():
    args = dataclasses.replace(GroundingConfig(), max_steps=5)
    assert args.output_dir is None and args.max_steps == 5
