"""Evaluation of a recommender LM: next-item ranking by constrained beam search, and title -> ID lookups.

Prompts are encoded exactly as in training (`gti_peft.training.templates.encode_prompt`), and semantic IDs
travel as token lists (`SemanticIDs.token_lists()`), never as strings split again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..recsys import evaluate_rankings, popularity_ranking
from ..recsys.beam_search import check_items_left
from ..recsys.recommender import TITLES_FILE, PromptSettings, Recommender
from ..recsys.trie import ItemTrie
from ..training.precision import resolve_bf16
from ..training.quantization import guard_cpu_4bit_training


def item_trie(tokenizer, token_lists: dict[str, list[str]]) -> ItemTrie:
    """Trie over every catalog item's semantic-ID token ids."""
    return ItemTrie({item: tokenizer.convert_tokens_to_ids(tokens) for item, tokens in token_lists.items()})


def prompt_settings(config) -> PromptSettings:
    """How this recipe turns a history into a prompt, for a `Recommender` (in evaluation and from the saved run)."""
    from .data import SEQUENCE_PROMPT

    data = config.data
    return PromptSettings(
        examples=data.examples,
        prompt_style=data.prompt_style,
        history_separator=data.history_separator,
        max_history=data.history_length,
        sequence_prompt=SEQUENCE_PROMPT,
        num_beams=config.evaluation.num_beams,
    )


def write_recommender_files(config, items, out: Path) -> list[Path]:
    """`recommender.json` (prompt settings) and `item_titles.json` under `out`, saved with the adapter so that
    `Recommender.from_pretrained` rebuilds this run's prompts and shows titles."""
    titles = dict(zip(items["item"], items["title"]))
    (out / TITLES_FILE).write_text(json.dumps(titles, ensure_ascii=False))
    return [prompt_settings(config).save(out), out / TITLES_FILE]


def rank_items(
    model,
    tokenizer,
    prompts: list[list[int]],
    trie: ItemTrie | dict,
    num_beams: int,
    top_k: int,
    batch_size: int,
    exclude: list[set[str]] | None = None,
    recommender: Recommender | None = None,
):
    """Top-k item lists (best first) for each prompt, without the items of `exclude[i]` when given, ranked by
    `recommender` (built on `model` over the trie's items when not given)."""
    guard_cpu_4bit_training(model)  # evaluation must not stop a 4-bit CPU model from training later
    if recommender is None:
        catalog = (
            trie
            if isinstance(trie, dict)
            else {i: tokenizer.convert_ids_to_tokens(list(s)) for i, s in trie.sequences.items()}
        )
        recommender = Recommender(model, tokenizer, catalog)
    ranked = recommender.rank_prompts(prompts, top_k, exclude, num_beams=num_beams, batch_size=batch_size)
    return [[rec.item for rec in recs] for recs in ranked]


def known_items(examples, train_histories) -> list[set[str]]:
    """Each example's user's known items before its target: the prompt's history and the user's training sequence
    (the usual convention for leaving the history out of a ranking)."""
    return [set(train_histories.get(ex["user"], ())) | set(ex["history"]) for ex in examples]


def check_history_exclusion(examples, train_histories, catalog_size: int, top_k: int) -> None:
    """Refuse, before anything trains, a user whose known items leave fewer than `top_k` items to rank."""
    known = known_items(examples, train_histories)
    check_items_left(catalog_size, [len(k) for k in known], top_k, names=[ex["user"] for ex in examples])


def ranking_convention(exclude_history: bool) -> str:
    """The label metrics.json gives the ranking protocol."""
    return "history_excluded" if exclude_history else "full"


def popularity_rankings(train_histories, exclude: list[set[str]] | None, top_k: int, count: int) -> list[list[str]]:
    """The most popular training items, for each of `count` users; without each user's `exclude` items if given."""
    if exclude is None:
        return [popularity_ranking(train_histories, k=top_k)] * count
    popular = popularity_ranking(train_histories)
    return [[item for item in popular if item not in known][:top_k] for known in exclude]


def evaluate_next_item(
    model,
    tokenizer,
    prompts: list[list[int]],
    examples,
    token_lists,
    train_histories,
    args,
    catalog_size: int,
    recommender: Recommender | None = None,
) -> dict:
    """Recall/NDCG@{5,10,20}, coverage and distinct top-1 of the model and of a popularity baseline, both ranked
    without each user's known items when `args.exclude_history` (see `known_items`).

    `prompts[i]` is the encoded prompt of `examples[i]` (`recommender.prompt_ids(history)`); the ranking is
    `recommender`'s (one over `model` and `token_lists` when not given).
    """
    targets = [ex["target"] for ex in examples]
    exclude = known_items(examples, train_histories) if args.exclude_history else None
    if exclude is not None:
        check_history_exclusion(examples, train_histories, len(token_lists), args.top_k)
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=resolve_bf16(args.bf16)):
        rankings = rank_items(
            model, tokenizer, prompts, token_lists, args.num_beams, args.top_k, args.batch_size, exclude, recommender
        )
    ks = tuple(k for k in (5, 10, 20) if k <= args.top_k)
    popular = popularity_rankings(train_histories, exclude, args.top_k, len(targets))
    return {
        "model": evaluate_rankings(rankings, targets, ks=ks, catalog_size=catalog_size),
        "popularity": evaluate_rankings(popular, targets, ks=ks, catalog_size=catalog_size),
        "rankings": {ex["user"]: ranking for ex, ranking in zip(examples, rankings)},
        "ranking": ranking_convention(args.exclude_history),
    }
