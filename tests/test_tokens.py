"""add_new_tokens: the one-call way to add tokens, and its refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import smollm2_tokenizer, tiny_llama

from gti_peft import add_new_tokens


@pytest.fixture
def tokenizer():
    return smollm2_tokenizer()


def test_adds_tokens_in_order_and_resizes_the_model(tokenizer):
    before = len(tokenizer)
    model = tiny_llama(True)
    model.resize_token_embeddings(before)
    ids = add_new_tokens(tokenizer, ["<a_0>", "<a_1>", "<b_0>"], model=model)
    assert ids == [before, before + 1, before + 2]
    assert tokenizer("<a_1><b_0>", add_special_tokens=False)["input_ids"] == [before + 1, before + 2]
    assert model.get_input_embeddings().weight.shape[0] == before + 3


@pytest.mark.parametrize(
    "tokens, match",
    [
        ([], r"`tokens` is empty"),
        ("<a_0>", r"a list of token strings"),
        (["<a_0>", "<a_0>"], r"lists \['<a_0>'\] more than once"),
        (["hello", "<a_9>"], r"\['hello'\] already exist in the tokenizer"),
    ],
)
def test_bad_tokens_are_refused_and_the_tokenizer_is_untouched(tokenizer, tokens, match):
    before = len(tokenizer)
    with pytest.raises(ValueError, match=match):
        add_new_tokens(tokenizer, tokens)
    assert len(tokenizer) == before


def test_tokenizer_that_does_not_belong_to_the_model_is_refused(tiny_run_files, tmp_path):
    """A tokenizer larger than the model's embedding: the recipe names both sizes before any training."""
    from conftest import tiny_yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from gti_peft.recipe import load_recipe_config, run_recipe

    small = tmp_path / "small-model"
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(small)
    smollm2_tokenizer().save_pretrained(small)
    config = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / "out"), [f"model.name_or_path={small}"])
    with pytest.raises(ValueError, match=r"has 49152 tokens but the model has 1000 embedding rows"):
        run_recipe(config)
