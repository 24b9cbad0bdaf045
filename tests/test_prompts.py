"""One prompt encoder for training and evaluation, in every prompt style."""

from __future__ import annotations

import pytest
from conftest import smollm2_tokenizer

from gti_peft import add_new_tokens
from gti_peft.training.templates import IGNORE_INDEX, PROMPT_STYLES, encode_prompt, encode_prompt_answer


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = smollm2_tokenizer()
    add_new_tokens(tokenizer, ["<a_0>", "<a_1>", "<b_0>", "<b_1>"])
    return tokenizer


@pytest.mark.parametrize("style", PROMPT_STYLES)
def test_training_prompt_is_exactly_the_evaluation_prompt(tokenizer, style):
    prompt = "The user watched, in order: <a_0><b_1><a_1><b_0>. Predict the next item."
    example = encode_prompt_answer(tokenizer, prompt, "<a_1><b_1>", 256, style)
    prompt_ids = encode_prompt(tokenizer, prompt, style)
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    answer = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert answer[:2] == tokenizer.convert_tokens_to_ids(["<a_1>", "<b_1>"])  # loss on the answer, from its start
    assert example["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)


def test_styles_drop_what_carries_nothing(tokenizer):
    prompt = "Which item is called Heat?"
    chat, no_system, plain = (tokenizer.decode(encode_prompt(tokenizer, prompt, s)) for s in PROMPT_STYLES)
    assert "SmolLM" in chat and "SmolLM" not in no_system and "<|im_start|>user" in no_system
    assert "<|im_start|>" not in plain and plain.strip().endswith(prompt)
    lengths = [len(encode_prompt(tokenizer, prompt, s)) for s in PROMPT_STYLES]
    assert lengths[0] > lengths[1] > lengths[2]


def test_unknown_style_is_refused(tokenizer):
    with pytest.raises(ValueError, match="`prompt_style` must be one of"):
        encode_prompt(tokenizer, "x", "fancy")
