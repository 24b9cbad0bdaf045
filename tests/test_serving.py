"""Serving without gti-peft: a merged model + TrieLogitsProcessor in plain `generate` returns catalog items only."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch
from conftest import llama_config, smollm2_tokenizer
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from gti_peft import GTIConfig, add_new_tokens
from gti_peft.recsys import serving
from gti_peft.recsys.beam_search import constrained_beam_search
from gti_peft.recsys.serving import (
    CatalogTrie,
    TrieLogitsProcessor,
    encode_history,
    generate_recommendations,
    load_serving_catalog,
    save_serving_catalog,
)
from gti_peft.recsys.trie import ItemTrie
from gti_peft.sharing.hub import save_merged

VOCAB = 49152  # the SmolLM2 tokenizer's size
TOKENS = [f"<{level}_{code}>" for level in "abc" for code in range(4)]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """A tiny GTI model (rows and LoRA moved off their start), merged by save_merged, and its catalog."""
    tokenizer = smollm2_tokenizer()
    ids = dict(zip(TOKENS, add_new_tokens(tokenizer, TOKENS)))
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(llama_config(True, vocab=VOCAB)),
        GTIConfig(new_token_ids=list(ids.values()), init="random", r=4, target_modules="all-linear"),
    )
    with torch.no_grad():  # stands in for training
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.3 * torch.randn_like(p))
    rng = random.Random(0)
    codes = rng.sample([(a, b, c) for a in range(4) for b in range(4) for c in range(4)], 30)
    items = {f"m{i}": [ids[f"<a_{a}>"], ids[f"<b_{b}>"], ids[f"<c_{c}>"]] for i, (a, b, c) in enumerate(codes)}
    folder = save_merged(model.eval(), tokenizer, tmp_path_factory.mktemp("served") / "merged")
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [tokenizer(f"The user watched item {i} and item {i + 3}.\n")["input_ids"] for i in range(6)]
    return {"peft": model, "plain": plain, "tokenizer": tokenizer, "items": items, "prompts": prompts}


def item_lists(results):
    return [[item for item, _ in row] for row in results]


def test_the_processor_module_needs_only_torch_and_transformers_at_import():
    tree = ast.parse(Path(serving.__file__).read_text())
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    modules = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    modules |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert modules <= {"__future__", "json", "collections", "pathlib", "typing", "torch", "transformers"}
    assert not any(n.level for n in top if isinstance(n, ast.ImportFrom))  # no gti_peft import at module level


def test_generate_on_the_merged_model_agrees_with_gti_peft_beam_search(merged):
    catalog = CatalogTrie(merged["items"])
    served = generate_recommendations(merged["plain"], merged["tokenizer"], merged["prompts"], catalog, k=8,
                                      batch_size=4)  # fmt: skip
    ours = constrained_beam_search(merged["peft"], merged["tokenizer"], merged["prompts"], ItemTrie(merged["items"]),
                                   num_beams=8, top_k=8, disable_tqdm=True)  # fmt: skip
    assert item_lists(served) == item_lists(ours)
    torch.testing.assert_close(
        torch.tensor([[s for _, s in row] for row in served]), torch.tensor([[s for _, s in row] for row in ours]),
        rtol=0, atol=1e-4,
    )  # fmt: skip
    assert all(len(row) == 8 and set(item_lists([row])[0]) <= set(merged["items"]) for row in served)


def test_only_catalog_items_come_back_and_each_users_history_is_left_out(merged):
    catalog = CatalogTrie(merged["items"])
    unconstrained = (
        merged["plain"]
        .generate(input_ids=torch.tensor([merged["prompts"][0]]), max_new_tokens=3, do_sample=False, pad_token_id=0)[
            0, -3:
        ]
        .tolist()
    )
    assert catalog.item_for(unconstrained) is None  # without the processor the model writes no item
    # 16 beams keep every prefix of this 4 x 4 x 4 catalog: the search is exact, so leaving out each user's top 3
    # (different per user) must give exactly the next items of the full ranking
    full = item_lists(generate_recommendations(merged["plain"], merged["tokenizer"], merged["prompts"], catalog,
                                               k=16, num_beams=16))  # fmt: skip
    exclude = [row[:3] for row in full]
    again = item_lists(
        generate_recommendations(
            merged["plain"], merged["tokenizer"], merged["prompts"], catalog, k=5, num_beams=16, exclude=exclude
        )  # fmt: skip
    )
    for row, left_out, before in zip(again, exclude, full):
        assert not set(row) & set(left_out) and set(row) <= set(merged["items"])
        assert row == before[3:8]
    first = full
    # a branch whose every item is excluded is closed, not entered and left dead: still k items come back
    prefix = merged["items"]["m0"][:2]
    branch = [item for item, tokens in merged["items"].items() if tokens[:2] == prefix]
    rest = generate_recommendations(merged["plain"], merged["tokenizer"], merged["prompts"][:1], catalog, k=8,
                                    exclude=[branch + first[0][:1]])  # fmt: skip
    assert len(rest[0]) == 8 and not {item for item, _ in rest[0]} & set(branch + first[0][:1])


def test_the_processor_masks_per_row_and_ends_a_finished_item_with_eos():
    catalog = CatalogTrie({"x": [10, 11], "y": [10, 12], "z": [13, 14, 15]})
    processor = TrieLogitsProcessor(catalog, prompt_length=1, eos_token_id=2, num_beams=2, exclude=[[], ["x"]])
    input_ids = torch.tensor([[5, 10], [5, 10], [5, 10], [5, 13]])  # users 0, 0, 1, 1
    scores = torch.log_softmax(torch.randn(4, 20), -1)
    out = processor(input_ids, scores)
    allowed = [torch.isfinite(row).nonzero().flatten().tolist() for row in out]
    assert allowed == [[11, 12], [11, 12], [12], [14]]
    assert torch.equal(out[0, [11, 12]], scores[0, [11, 12]])  # allowed tokens keep their log-probabilities
    done = processor(torch.tensor([[5, 10, 11], [5, 9, 9], [5, 13, 14], [5, 10, 12]]), scores)
    assert done[0, 2] == 0 and torch.isinf(done[0]).sum() == 19  # after item x: only EOS, at log-probability 0
    assert torch.isinf(done[1]).all()  # off the catalog: nothing
    assert torch.isfinite(done[2]).nonzero().flatten().tolist() == [15]


def test_unequal_lengths_agree_with_gti_peft_beam_search(merged):
    items = dict(merged["items"])
    items = {k: v for k, v in items.items() if v[:1] != items["m0"][:1]} | {"short": items["m0"][:1]}
    served = generate_recommendations(merged["plain"], merged["tokenizer"], merged["prompts"], CatalogTrie(items), k=6)
    ours = constrained_beam_search(merged["plain"], merged["tokenizer"], merged["prompts"], ItemTrie(items),
                                   num_beams=6, top_k=6, disable_tqdm=True)  # fmt: skip
    assert item_lists(served) == item_lists(ours)


def test_catalog_file_and_prompt_round_trip(tmp_path, merged):
    tokenizer, items = merged["tokenizer"], merged["items"]
    strings = {item: "".join(tokenizer.convert_ids_to_tokens(ids)) for item, ids in items.items()}
    prompt = {"template": "The user watched, in order: {history}. Predict the next item.", "separator": "",
              "style": "plain", "max_history": 2}  # fmt: skip
    save_serving_catalog(tmp_path, items, strings, prompt, titles={"m1": "Film one"})
    catalog = load_serving_catalog(tmp_path)
    assert catalog.items == list(items) and catalog.titles == {"m1": "Film one"}
    ids = encode_history(tokenizer, ["m1", "m2", "m3"], catalog)  # the last max_history items only
    text = f"The user watched, in order: {strings['m2']}{strings['m3']}. Predict the next item.\n"
    assert ids == tokenizer(text)["input_ids"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c, m: generate_recommendations(m["plain"], m["tokenizer"], [[1, 2]], c, k=5, num_beams=3),
         r"`k` must be between 1 and num_beams=3, got 5"),
        (lambda c, m: generate_recommendations(m["plain"], m["tokenizer"], [[1, 2]], c, exclude=[["nope"]]),
         r"exclude\[0\]` names items the catalog does not hold: \['nope'\]"),
        (lambda c, m: generate_recommendations(m["plain"], m["tokenizer"], [[1], [2]], c, exclude=[[]]),
         r"`exclude` has 1 entries for 2 prompts"),
        (lambda c, m: encode_history(m["tokenizer"], ["m1"], c), r"carries no prompt settings"),
        (lambda c, m: CatalogTrie({"a": [1, 2], "b": [1]}), r"repeat or start another item's"),
        (lambda c, m: CatalogTrie({"a": [1], "b": [1, 2]}), r"'a''s tokens are a prefix of 'b'"),
        (lambda c, m: load_serving_catalog("/nonexistent"), r"No serving_catalog.json"),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_naming_the_parameter(merged, call, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        call(CatalogTrie(merged["items"]), merged)


def test_export_for_serving_ranks_as_the_recommender_does(merged, tmp_path):
    from gti_peft.recsys.recommender import PromptSettings, Recommender

    tokenizer = merged["tokenizer"]
    token_lists = {item: tokenizer.convert_ids_to_tokens(ids) for item, ids in merged["items"].items()}
    settings = PromptSettings(prompt_style="plain", history_separator="", max_history=3, num_beams=8)
    titles = {item: f"Film {item[1:]}" for item in token_lists}
    recommender = Recommender(merged["peft"], tokenizer, token_lists, settings, titles)
    folder = serving.export_for_serving(recommender, tmp_path / "served")
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    catalog = load_serving_catalog(folder)
    assert catalog.titles == titles and catalog.prompt["max_history"] == 3
    histories = [["m1", "m2", "m3", "m4"], ["m7"], ["m20", "m11"]]
    prompts = [encode_history(tokenizer, history, catalog) for history in histories]
    assert prompts == [recommender.prompt_ids(history) for history in histories]
    served = generate_recommendations(plain, tokenizer, prompts, catalog, k=5, num_beams=8, exclude=histories)
    ours = recommender.recommend(histories, k=5, num_beams=8)
    assert item_lists(served) == [[r.item for r in row] for row in ours]
    assert all(not set(item_lists([row])[0]) & set(history) for row, history in zip(served, histories))
