"""Every bad GTIConfig / get_peft_model input fails early with a message naming the field, value and fix."""

from __future__ import annotations

import pytest
from conftest import NEW_IDS, snapshot, tiny_llama
from peft import LoraConfig, PeftConfig, get_peft_model

from gti_peft import GTIConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"new_token_ids": []}, r"`new_token_ids` must list at least one"),
        ({"new_token_ids": None}, r"`new_token_ids` must list at least one"),
        ({"new_token_ids": [5, 6, 5]}, r"duplicates \[5\]"),
        ({"new_token_ids": [5, -1]}, r"non-negative.*\[-1\].*add_tokens"),
        ({"new_token_ids": ["<a_0>"]}, r"integers.*'<a_0>'"),
        ({"new_token_ids": [5], "init": "zeros"}, r"`init` must be one of .*'zeros'"),
        ({"new_token_ids": [5], "init": "description"}, r"needs `description_token_ids`"),
        (
            {"new_token_ids": [5, 6], "init": "description", "description_token_ids": [[1]]},
            r"has 1 entries but `new_token_ids` has 2",
        ),
        ({"new_token_ids": [5], "init": "description", "description_token_ids": [[]]}, r"id 5 is empty"),
        (
            {"new_token_ids": [5, 6], "init": "description", "description_token_ids": [[6], [1]]},
            r"uses new token",
        ),
        ({"new_token_ids": [5], "description_token_ids": [[1]]}, r"only used with `init='description'`"),
        (
            {"new_token_ids": [5], "target_modules": ["q_proj", "lm_head"]},
            r"`target_modules` includes \['lm_head'\]",
        ),
        ({"new_token_ids": [5], "target_modules": ["embed_tokens"]}, r"includes \['embed_tokens'\]"),
        ({"new_token_ids": [5], "modules_to_save": ["lm_head"]}, r"`modules_to_save` includes"),
        ({"new_token_ids": [5], "trainable_token_indices": [5]}, r"`trainable_token_indices` contradicts"),
        ({"new_token_ids": [5], "pad_to_multiple_of": 0}, r"`pad_to_multiple_of` must be a positive"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GTIConfig(**kwargs)


def test_lora_fields_pass_through_and_round_trip(tmp_path):
    config = GTIConfig(new_token_ids=NEW_IDS, r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    assert isinstance(config, LoraConfig) and config.r == 8 and config.lora_alpha == 32
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is GTIConfig
    assert loaded.new_token_ids == NEW_IDS and loaded.lora_dropout == 0.05 and loaded.peft_type == "GTI"


def test_regex_target_that_hits_the_lm_head_is_refused_before_changing_the_model():
    base = tiny_llama(True)
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"matches the model's 'lm_head'"):
        get_peft_model(base, GTIConfig(new_token_ids=NEW_IDS, target_modules=r".*(q_proj|lm_head)"))
    assert base.get_input_embeddings().weight.shape[0] == before["model.embed_tokens.weight"].shape[0]


def test_an_id_far_past_the_vocabulary_is_called_a_mistake_before_resizing():
    base = tiny_llama(True)
    with pytest.raises(ValueError, match=r"holds id 50000.*embedding size 120.*another tokenizer"):
        get_peft_model(base, GTIConfig(new_token_ids=[120, 50000], target_modules="all-linear"))
    assert base.get_input_embeddings().weight.shape[0] == 120
