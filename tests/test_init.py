"""Starting values of new rows: each method against what it promises."""

from __future__ import annotations

import torch
from conftest import NEW_IDS, VOCAB, tiny_llama
from peft import get_peft_model

from gti_peft import GTIConfig, description_token_ids, new_token_rows
from gti_peft.method.init import OldIds, initial_rows


def rows_for(init, tied=True, **kwargs):
    model = get_peft_model(
        tiny_llama(tied), GTIConfig(new_token_ids=NEW_IDS, init=init, target_modules="all-linear", **kwargs)
    )
    return model, new_token_rows(model)


def test_mean_is_the_mean_of_old_rows_for_every_token():
    model, (_, rows, _) = rows_for("mean")
    old = model.get_input_embeddings().base_weight[:VOCAB]
    torch.testing.assert_close(rows, old.mean(0).expand_as(rows))


def test_untied_head_rows_start_from_the_head():
    model, (_, rows, head_rows) = rows_for("mean", tied=False)
    head = model.get_output_embeddings().base_weight[:VOCAB]
    torch.testing.assert_close(head_rows, head.mean(0).expand_as(head_rows))
    assert not torch.allclose(rows, head_rows)


def test_hf_mean_is_mean_plus_tiny_distinct_noise():
    model, (_, rows, _) = rows_for("hf_mean")
    mean = model.get_input_embeddings().base_weight[:VOCAB].mean(0)
    assert (rows - mean).abs().max() < 1e-3
    assert not torch.equal(rows[0], rows[1])
    # transformers' mean_resizing draws from N(mean, 1e-9 * covariance): per coordinate, noise of standard deviation
    # sqrt(1e-9 * variance) (~6e-7 here); standardized, the 6 x 32 draws have a standard deviation near 1
    old = model.get_input_embeddings().base_weight[:VOCAB].detach()
    expected_std = (1e-9 * old.var(0, correction=0)).sqrt()
    z = (rows - mean) / expected_std
    assert 0.8 < z.std().item() < 1.2, z.std().item()
    assert z.abs().max() < 6


def test_random_uses_initializer_range_and_is_seeded():
    _, (_, a, _) = rows_for("random")
    _, (_, b, _) = rows_for("random")
    _, (_, c, _) = rows_for("random", init_seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.01 < a.std().item() < 0.03  # initializer_range 0.02


def test_description_averages_the_description_tokens():
    descriptions = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [10]]
    model, (_, rows, _) = rows_for("description", description_token_ids=descriptions)
    weight = model.get_input_embeddings().base_weight
    for row, ids in zip(rows, descriptions):
        torch.testing.assert_close(row, weight[ids].mean(0))


def test_description_ids_from_a_tokenizer():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 50 for c in text]}

    assert description_token_ids(Tok(), ["ab", "c"]) == [[47, 48], [49]]


def test_initial_rows_refuses_description_ids_outside_old_vocabulary():
    weight = torch.randn(10, 4)
    try:
        initial_rows("description", weight, OldIds(8, []), 1, description_ids=[[9]])
    except ValueError as error:
        assert "description_token_ids" in str(error) and "[9]" in str(error)
    else:
        raise AssertionError("expected a ValueError")
