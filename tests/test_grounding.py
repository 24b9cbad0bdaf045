"""Grounding on a tiny Llama with the real SmolLM2 tokenizer: only the new rows learn, and they spread."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from conftest import llama_config, smollm2_tokenizer
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from gti_peft import GTIConfig, add_new_tokens, ground, new_token_parameters, new_token_rows
from gti_peft.training.templates import GroundingTemplate

TITLES = ["Toy Story", "Heat", "Casino", "Babe", "Clueless", "Apollo 13", "Braveheart", "Jumanji"]
GENRES = ["Animation", "Action", "Crime", "Family", "Comedy", "Drama", "War", "Adventure"]


@pytest.fixture(scope="module")
def tokenizer_and_pairs():
    tokenizer = smollm2_tokenizer()
    tokens = [f"<{level}_{code}>" for level in "abc" for code in range(4)]
    add_new_tokens(tokenizer, tokens)
    pairs = [
        {
            "tokens": f"<a_{i % 4}><b_{(i // 4) % 4}><c_{(i * 3) % 4}>",
            "title": title,
            "description": f"Genres: {genre}.",
        }
        for i, (title, genre) in enumerate(zip(TITLES, GENRES))
    ]
    return tokenizer, tokens, pairs


def tiny_gti(tokenizer, tokens, seed=0):
    torch.manual_seed(seed)
    base = LlamaForCausalLM(llama_config(tied=True, vocab=49152))
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return get_peft_model(base, GTIConfig(new_token_ids=ids, init="mean", r=4, target_modules="all-linear"))


def test_grounding_trains_only_new_rows_and_spreads_them(tokenizer_and_pairs, tmp_path):
    tokenizer, tokens, pairs = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "gti_rows" not in n}
    report = ground(
        model,
        tokenizer,
        pairs,
        max_steps=20,
        learning_rate=2e-2,
        logging_steps=5,
        per_device_train_batch_size=8,
        report_path=tmp_path / "r.json",
    )
    # every weight but the new rows, LoRA included, is bit-identical
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    # LoRA trainable again afterwards; rows too
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.requires_grad for p in new_token_parameters(model))
    # the loss fell where the new rows are written (text -> tokens), and on average
    assert report.steps == 20 and len(report.template_loss_before) == 6
    for name, before in report.template_loss_before.items():
        if name.endswith("_to_tokens"):
            assert report.template_loss_after[name] < before - 0.05, name
    mean = lambda losses: sum(losses.values()) / len(losses)  # noqa: E731
    assert mean(report.template_loss_after) < mean(report.template_loss_before)
    # mean init is rank ~1; grounding spreads the rows
    assert report.diagnostics_before["effective_rank"] < 1.01
    assert report.diagnostics_after["effective_rank"] > 3
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["steps"] == 20 and saved["loss_history"]
    assert model.peft_config["default"].grounding["steps"] == 20


def test_fine_tuning_after_grounding_moves_lora_again(tokenizer_and_pairs):
    tokenizer, tokens, pairs = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    ground(model, tokenizer, pairs, max_steps=3, learning_rate=1e-2)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(["Which item is called Heat? <a_1><b_0><c_3>"], return_tensors="pt")
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    assert all(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)


@pytest.mark.parametrize("ground_bf16", [True, False])
def test_each_trainer_gets_its_own_precision_after_grounding(tokenizer_and_pairs, ground_bf16):
    """accelerate wraps a prepared model's forward for good; ground() must not leak its bf16 setting."""
    from gti_peft.training.templates import encode_prompt_answer
    from gti_peft.training.trainer import AnswerOnlyTrainer, answer_collator

    tokenizer, tokens, pairs = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    seen = []
    model.base_model.model.model.layers[0].register_forward_pre_hook(
        lambda *_: seen.append(torch.is_autocast_enabled("cpu"))
    )
    ground(model, tokenizer, pairs, max_steps=1, bf16=ground_bf16, eval_examples_per_template=1)
    assert True in seen if ground_bf16 else True not in seen  # grounding itself ran at its precision
    assert "forward" not in model.__dict__ and not getattr(model, "_is_accelerate_prepared", False)

    seen.clear()
    rows = [encode_prompt_answer(tokenizer, "Which item is called Heat?", "<a_1><b_0><c_3>", 64)] * 4
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=1,
        per_device_train_batch_size=4,
        bf16=not ground_bf16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
    )
    trainer = AnswerOnlyTrainer(model=model, args=args, train_dataset=rows, data_collator=answer_collator(tokenizer))
    trainer.train()
    assert set(seen) == {not ground_bf16}


def test_answer_only_loss_matches_the_full_model_loss(tokenizer_and_pairs):
    from gti_peft.training.templates import encode_prompt_answer
    from gti_peft.training.trainer import answer_collator, answer_loss

    tokenizer, tokens, _ = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens).eval()
    rows = [encode_prompt_answer(tokenizer, "Which item is called Heat?", "<a_1><b_0><c_3>", 64)]
    rows.append(encode_prompt_answer(tokenizer, "Briefly describe item <a_2><b_1><c_0>.", "A long film.", 64))
    batch = answer_collator(tokenizer)(rows)
    with torch.no_grad():
        full = model(**batch).loss
        fast = answer_loss(model, batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    # the chat template is used and the loss covers the answer only
    assert batch["labels"][0].ne(-100).sum() < batch["attention_mask"][0].sum() / 2


@pytest.mark.parametrize(
    "pairs, templates, match",
    [
        ([], None, r"`pairs` is empty"),
        ([{"tokens": "hello", "title": "x"}], None, r"not new tokens of this adapter"),
        ([{"tokens": "<a_0><zz_1>", "title": "x"}], None, r"not new tokens"),
        ([{"tokens": "<a_0>", "title": "  "}], None, r"no non-empty text field"),
        ([{"title": "x"}], None, r"has no 'tokens' string"),
        (
            [{"tokens": "<a_0>", "title": "x"}],
            (GroundingTemplate("genre", "Genre of {tokens}?", "{genre}"),),
            r"template 'genre' uses field\(s\) \['genre'\]",
        ),
    ],
)
def test_bad_pairs_fail_before_training(tokenizer_and_pairs, pairs, templates, match):
    tokenizer, tokens, _ = tokenizer_and_pairs
    model = tiny_gti(tokenizer, tokens)
    rows = new_token_rows(model)[1].clone()
    with pytest.raises(ValueError, match=match):
        ground(model, tokenizer, pairs, templates=templates, max_steps=1)
    assert torch.equal(new_token_rows(model)[1], rows)


def test_ground_refuses_a_model_without_gti(tokenizer_and_pairs):
    tokenizer, _, pairs = tokenizer_and_pairs
    with pytest.raises(ValueError, match="carries no GTI adapter"):
        ground(
            LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)),
            tokenizer,
            pairs,
        )


def test_grounding_refuses_another_models_tokenizer_before_training():
    from conftest import NEW_IDS, smollm2_tokenizer, snapshot, tiny_llama
    from peft import get_peft_model

    from gti_peft import GTIConfig, ground

    model = get_peft_model(tiny_llama(), GTIConfig(new_token_ids=NEW_IDS, r=2, target_modules=["q_proj"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"`tokenizer` has 49152 tokens but the model has 126 embedding rows"):
        ground(model, smollm2_tokenizer(), [{"tokens": "<a_0>", "title": "Heat"}], max_steps=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grounding_leaves_no_temporary_folder_behind(tokenizer_and_pairs, tmp_path, monkeypatch):
    tokenizer, tokens, pairs = tokenizer_and_pairs
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # this test's own temp directory
    model = tiny_gti(tokenizer, tokens)
    one_step = {"max_steps": 1, "eval_examples_per_template": 1}
    ground(model, tokenizer, pairs, output_dir=str(tmp_path / "out"), **one_step)
    # no folder given: the trainer writes into a temporary one (here a checkpoint), removed with what it holds
    ground(model, tokenizer, pairs, save_strategy="steps", save_steps=1, **one_step)
    assert sorted(p.name for p in scratch.iterdir()) == []
