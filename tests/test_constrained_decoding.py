"""ItemTrie and trie-constrained beam search on a tiny random Llama (CPU, a few seconds)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gti_peft.recsys.beam_search import constrained_beam_search, generate_baseline
from gti_peft.recsys.trie import ItemTrie

BASE_VOCAB, LEVEL = 60, 13  # new SID tokens: ids 60..99 (<a_0..12>, <b_0..12>, <c_0..13>)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper distributions than the 0.02-std init, so rankings are far from ties
        model.lm_head.weight.normal_(std=0.5)
    return model


def random_catalog(num_items: int, seed: int, lengths: tuple[int, ...] = (3,)) -> dict[str, list[int]]:
    rng = random.Random(seed)
    sids: set[tuple[int, ...]] = set()
    while len(sids) < num_items:
        length = rng.choice(lengths)
        sid = tuple(
            BASE_VOCAB + level % 3 * LEVEL + rng.randrange(LEVEL + (level % 3 == 2)) for level in range(length)
        )
        # keep the catalog prefix-free
        if not any(sid[: len(s)] == s or s[: len(sid)] == sid for s in sids):
            sids.add(sid)
    return {f"item_{i}": list(sid) for i, sid in enumerate(sorted(sids))}


@pytest.fixture(scope="module")
def trie() -> ItemTrie:
    return ItemTrie(random_catalog(60, seed=0))


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(3, BASE_VOCAB) for _ in range(rng.randrange(4, 25))] for _ in range(7)]


@torch.no_grad()
def teacher_forced(model, prompt: list[int], trie: ItemTrie, items: list) -> list[float]:
    """Summed log-probabilities of each item's tokens after `prompt`, from one plain full forward pass each."""
    scores = []
    for item in items:
        tokens = list(trie.sequences[item])
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()
        scores.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).sum().item())
    return scores


def brute_force(model, prompt: list[int], trie: ItemTrie) -> list[tuple[str, float]]:
    return sorted(zip(trie.items, teacher_forced(model, prompt, trie, trie.items)), key=lambda p: -p[1])


def assert_same_ranking(ours, reference, atol: float = 1e-4) -> None:
    assert [item for item, _ in ours] == [item for item, _ in reference]
    torch.testing.assert_close(
        torch.tensor([s for _, s in ours]), torch.tensor([s for _, s in reference]), atol=atol, rtol=0
    )


def test_trie_queries_and_validation():
    trie = ItemTrie({"a": [5, 7], "b": [5, 8, 1], "c": [6]})
    assert sorted(trie.allowed(())) == [5, 6] and sorted(trie.allowed((5,))) == [7, 8]
    assert trie.allowed((5, 7)) == [] and trie.allowed((9,)) == []
    assert trie.item_for([5, 8, 1]) == "b" and trie.item_for([5, 8]) is None and trie.item_for([4]) is None
    assert trie.is_complete((6,)) and not trie.is_complete((5, 8)) and not trie.is_complete((9, 9))
    assert trie.find_prefix_item([5, 7, 0, 0]) == "a" and trie.find_prefix_item([5, 8]) is None
    assert trie.max_length == 3 and len(trie) == 3 and trie.token_ids == [1, 5, 6, 7, 8]
    fn = trie.prefix_allowed_tokens_fn(prompt_length=2, fallback_token_id=0)
    assert sorted(fn(0, torch.tensor([9, 9, 5]))) == [7, 8] and fn(0, torch.tensor([9, 9, 6])) == [0]
    with pytest.raises(ValueError, match="'x'.*prefix of item 'y'"):
        ItemTrie({"x": [1, 2], "y": [1, 2, 3]})
    with pytest.raises(ValueError, match="'y'.*prefix of item 'x'"):
        ItemTrie({"x": [1, 2, 3], "y": [1, 2]})
    with pytest.raises(ValueError, match="'x' and 'y' share"):
        ItemTrie({"x": [1, 2], "y": [1, 2]})
    with pytest.raises(ValueError, match="item_tokens"):
        ItemTrie({})
    with pytest.raises(ValueError, match="'z'"):
        ItemTrie({"z": []})


def test_results_are_distinct_valid_items_with_teacher_forced_scores(model, trie, prompts):
    results = constrained_beam_search(model, 0, prompts, trie, num_beams=10, disable_tqdm=True)
    assert len(results) == len(prompts)
    for prompt, ranked in zip(prompts, results):
        items = [item for item, _ in ranked]
        assert len(items) == 10 and len(set(items)) == 10 and all(item in trie for item in items)
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
        torch.testing.assert_close(
            torch.tensor(scores), torch.tensor(teacher_forced(model, prompt, trie, items)), atol=1e-4, rtol=0
        )
    top5 = constrained_beam_search(model, 0, prompts, trie, num_beams=10, top_k=5, disable_tqdm=True)
    assert all(len(a) == 5 and a == b[:5] for a, b in zip(top5, results))


def test_matches_generate_with_prefix_allowed_tokens_fn(model, trie, prompts):
    ours = constrained_beam_search(model, 0, prompts, trie, num_beams=10, batch_size=4, disable_tqdm=True)
    reference = generate_baseline(model, prompts, trie, num_beams=10, batch_size=4, pad_token_id=0)
    for a, b in zip(ours, reference):
        assert_same_ranking(a, b)


def test_batched_left_padding_equals_one_at_a_time(model, trie, prompts):
    assert len({len(p) for p in prompts}) > 3
    batched = constrained_beam_search(model, 5, prompts, trie, num_beams=8, batch_size=7, disable_tqdm=True)
    single = [constrained_beam_search(model, 0, [p], trie, num_beams=8, disable_tqdm=True)[0] for p in prompts]
    for a, b in zip(batched, single):
        assert_same_ranking(a, b)
    # a right-padded batch encoding and a tokenizer-like object give the same lists
    width = max(len(p) for p in prompts)
    encoding = {
        "input_ids": torch.tensor([p + [0] * (width - len(p)) for p in prompts]),
        "attention_mask": torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts]),
    }
    tokenizer = SimpleNamespace(pad_token_id=3)
    from_encoding = constrained_beam_search(model, tokenizer, encoding, trie, num_beams=8, disable_tqdm=True)
    for a, b in zip(from_encoding, single):
        assert_same_ranking(a, b)


@pytest.mark.parametrize("lengths", [(3,), (2, 3, 4)], ids=["equal-length", "unequal-length"])
def test_exhaustive_beams_equal_brute_force(model, prompts, lengths):
    trie = ItemTrie(random_catalog(12, seed=2, lengths=lengths))
    assert len(trie.allowed(())) < 12  # some beams are dead at the first steps
    results = constrained_beam_search(model, 0, prompts[:4], trie, num_beams=12, top_k=12, disable_tqdm=True)
    # generate keeps finished shorter items in their beams (padded at log-probability 0): exhaustive too
    reference = generate_baseline(model, prompts[:4], trie, num_beams=12, top_k=12, pad_token_id=0)
    for prompt, ranked, generated in zip(prompts[:4], results, reference):
        exact = brute_force(model, prompt, trie)
        assert_same_ranking(ranked, exact)
        assert_same_ranking(generated, exact)


def test_few_continuations_leave_dead_beams(model, prompts):
    # two first tokens and ten beams: most beams have nothing to expand at the first step
    catalog = {f"item_{i}": [60 + i % 2, 73 + i // 2 % 6, 86 + i] for i in range(14)}
    trie = ItemTrie(catalog)
    ours = constrained_beam_search(model, 0, prompts, trie, num_beams=10, disable_tqdm=True)
    reference = generate_baseline(model, prompts, trie, num_beams=10, pad_token_id=0)
    for a, b in zip(ours, reference):
        assert len({item for item, _ in a}) == 10  # (beam search, not exhaustive: may differ from brute force)
        assert_same_ranking(a, b)


def test_prompt_encoded_once_then_one_token_per_beam(model, trie, prompts):
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    model.train()
    try:
        constrained_beam_search(model, 0, prompts[:3], trie, num_beams=10, disable_tqdm=True)
    finally:
        hook.remove()
    assert model.training  # the caller's mode is restored
    model.eval()
    width = max(len(p) for p in prompts[:3])
    assert shapes == [(3, width), (30, 1), (30, 1)]


def test_peft_wrapped_model(model, trie, prompts):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        LlamaForCausalLM(model.config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.base_model.model.load_state_dict(model.state_dict(), strict=False)
    peft_model.eval()
    ranked = constrained_beam_search(peft_model, 0, prompts[:2], trie, num_beams=6, disable_tqdm=True)
    base = constrained_beam_search(model, 0, prompts[:2], trie, num_beams=6, disable_tqdm=True)
    assert ranked != base  # the LoRA weights are active
    for prompt, result in zip(prompts[:2], ranked):
        items = [item for item, _ in result]
        expected = teacher_forced(peft_model, prompt, trie, items)
        torch.testing.assert_close(torch.tensor([s for _, s in result]), torch.tensor(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_beams": 0}, "`num_beams` must be >= 1, got 0"),
        ({"num_beams": 4, "top_k": 5}, "`top_k` must be between 1 and min.* = 4, got 5"),
        ({"num_beams": 30, "top_k": 21}, "`top_k` .* = 20, got 21"),
        ({"batch_size": 0}, "`batch_size` must be >= 1"),
    ],
)
def test_bad_arguments_raise(model, trie, kwargs, message):
    with pytest.raises(ValueError, match=message):
        constrained_beam_search(model, 0, [[5, 6]], trie, **kwargs)
    with pytest.raises(ValueError, match=message):
        generate_baseline(model, [[5, 6]], trie, **kwargs)


@pytest.mark.parametrize("trie", [{}, {"a": [60, 73, 86]}], ids=["empty", "plain-dict"])
def test_trie_argument_must_be_an_item_trie(model, trie):
    with pytest.raises(ValueError, match="`trie` must be a non-empty ItemTrie"):
        constrained_beam_search(model, 0, [[5, 6]], trie)


def test_excluded_items_never_returned_and_k_distinct_items_remain(model, trie, prompts):
    full = constrained_beam_search(model, 0, prompts, trie, num_beams=10, disable_tqdm=True)
    # leave out each prompt's own top 5 and one whole first-level branch (every item below one first token)
    branch = trie.allowed(())[0]
    below = [item for item, tokens in trie.sequences.items() if tokens[0] == branch]
    exclude = [[item for item, _ in ranked[:5]] + below for ranked in full]
    ranked_left = constrained_beam_search(model, 0, prompts, trie, num_beams=10, disable_tqdm=True, exclude=exclude)
    for prompt, ranked, left, excluded in zip(prompts, full, ranked_left, exclude):
        items = [item for item, _ in left]
        assert len(items) == 10 and len(set(items)) == 10 and not set(items) & set(excluded)
        torch.testing.assert_close(
            torch.tensor([s for _, s in left]),
            torch.tensor(teacher_forced(model, prompt, trie, items)),
            atol=1e-4,
            rtol=0,
        )
        scores = dict(ranked)  # an item found with and without exclusion has the same score
        common = [item for item in items if item in scores]
        torch.testing.assert_close(
            torch.tensor([dict(left)[i] for i in common]), torch.tensor([scores[i] for i in common]), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("lengths", [(3,), (2, 3, 4)], ids=["equal-length", "unequal-length"])
def test_exclusion_with_exhaustive_beams_equals_filtered_brute_force(model, prompts, lengths):
    trie = ItemTrie(random_catalog(12, seed=2, lengths=lengths))
    exclude = [trie.items[i::3] for i in range(4)]  # a third of the catalog, different for each prompt
    results = constrained_beam_search(
        model, 0, prompts[:4], trie, num_beams=12, top_k=8, disable_tqdm=True, exclude=exclude
    )
    for prompt, ranked, excluded in zip(prompts[:4], results, exclude):
        exact = [pair for pair in brute_force(model, prompt, trie) if pair[0] not in excluded][:8]
        assert_same_ranking(ranked, exact)


def test_excluded_branch_is_pruned_so_beams_reach_other_items(model, prompts):
    # two first tokens: with the whole first branch left out, 5 beams must all go down the second one
    catalog = {f"item_{i}": [60 + i % 2, 73 + i // 2 % 6, 86 + i] for i in range(14)}
    trie = ItemTrie(catalog)
    first_branch = [item for item, tokens in catalog.items() if tokens[0] == 60]
    results = constrained_beam_search(
        model, 0, prompts, trie, num_beams=5, disable_tqdm=True, exclude=[first_branch] * len(prompts)
    )
    for ranked in results:
        assert len(ranked) == 5 and all(catalog[item][0] == 61 for item, _ in ranked)


def test_too_few_items_left_or_unknown_exclusions_raise_before_the_model_runs(model, prompts):
    trie = ItemTrie(random_catalog(12, seed=2))
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(
            ValueError,
            match=r"Prompt 1 has 9 of the catalog's 12 items .* 3 item\(s\) to rank, fewer "
            r"than top_k=5 .* lower top_k to at most 3",
        ):
            constrained_beam_search(model, 0, prompts[:2], trie, num_beams=5, exclude=[[], trie.items[:9]])
        with pytest.raises(ValueError, match=r"`exclude\[0\]` holds 1 item\(s\) that are not in the trie.*'nope'"):
            constrained_beam_search(model, 0, prompts[:1], trie, num_beams=5, exclude=[["nope", trie.items[0]]])
        with pytest.raises(ValueError, match="one collection of items per prompt: got 1 for 2 prompts"):
            constrained_beam_search(model, 0, prompts[:2], trie, num_beams=5, exclude=[[]])
    finally:
        hook.remove()
    assert calls == []
