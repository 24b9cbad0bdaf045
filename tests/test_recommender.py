"""Ranking with the user's history left out (evaluation), and the Recommender API on a tiny saved run."""

from __future__ import annotations

import pytest
import torch
from conftest import llama_config, tiny_yaml
from transformers import LlamaForCausalLM

from gti_peft.recipe import load_recipe_config, run_recipe
from gti_peft.recipe.config import EvalArgs
from gti_peft.recipe.evaluation import evaluate_next_item, known_items, popularity_rankings


def test_known_items_are_the_training_sequence_and_the_prompt_history():
    train = {"u0": ["a", "b", "c"], "u1": ["d"]}
    examples = [{"user": "u0", "history": ["c", "e"], "target": "f"}, {"user": "u1", "history": ["d"], "target": "a"}]
    assert known_items(examples, train) == [{"a", "b", "c", "e"}, {"d"}]
    # popularity skips each user's known items and still fills top_k; without exclusion one shared list
    train = {"u0": ["a", "b"], "u1": ["a", "c"], "u2": ["a", "b", "d"]}
    assert popularity_rankings(train, [{"a"}, {"b", "c"}], top_k=2, count=2) == [["b", "c"], ["a", "d"]]
    assert popularity_rankings(train, None, top_k=2, count=2) == [["a", "b"], ["a", "b"]]


def test_evaluation_leaves_the_history_out_of_both_arms():
    from gti_peft import add_new_tokens
    from gti_peft.assets.offline import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    add_new_tokens(tokenizer, [f"<a_{i}>" for i in range(5)] + ["<b_0>", "<b_1>"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tied=True, vocab=len(tokenizer)))
    sids = {f"m{i}": [f"<a_{i // 2}>", f"<b_{i % 2}>"] for i in range(10)}
    train = {"u0": ["m0", "m1", "m2"], "u1": ["m1", "m3"]}
    examples = [
        {"user": "u0", "history": ["m2", "m3"], "target": "m4"},
        {"user": "u1", "history": ["m3", "m0"], "target": "m5"},
    ]
    prompts = [tokenizer(text)["input_ids"] for text in ("The user watched <a_1><b_0><a_1><b_1>.", "Then <a_0>")]
    args = EvalArgs(num_beams=6, top_k=5, batch_size=2, bf16=False)
    result = evaluate_next_item(model, tokenizer, prompts, examples, sids, train, args, 10)
    assert result["ranking"] == "history_excluded"
    for ex, known in zip(examples, known_items(examples, train)):
        ranking = result["rankings"][ex["user"]]
        assert len(set(ranking)) == 5 and not set(ranking) & known
    args = EvalArgs(num_beams=6, top_k=5, batch_size=2, bf16=False, exclude_history=False)
    full = evaluate_next_item(model, tokenizer, prompts, examples, sids, train, args, 10)
    assert full["ranking"] == "full"
    assert any(set(r) & k for r, k in zip(full["rankings"].values(), known_items(examples, train)))


def test_recipe_records_the_convention_and_refuses_too_few_items_before_training(tiny_run_files, tmp_path):
    # 24 items; each test user knows 5 of them: top_k=20 leaves 19 < 20
    out = tmp_path / "small"
    overrides = ["evaluation.num_beams=20", "evaluation.top_k=20"]
    with pytest.raises(
        ValueError,
        match=r"User 'u\d+' \(row \d+\) has 5 of the catalog's 24 items .* 19 item\(s\) "
        r"to rank, fewer than top_k=20 .*evaluation.exclude_history: false",
    ):
        run_recipe(load_recipe_config(tiny_yaml(tiny_run_files, out), overrides))
    assert not (out / "grounded").exists() and not (out / "semantic_ids.safetensors").exists()
