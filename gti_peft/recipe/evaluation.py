"""Evaluation of a recommender LM: next-item ranking by constrained beam search, and title -> ID lookups."""

from __future__ import annotations

import re

import torch

from ..quantization import guard_cpu_4bit_training
from ..recsys import evaluate_rankings, popularity_ranking, recommendation_messages
from ..recsys.beam_search import constrained_beam_search
from ..recsys.trie import ItemTrie

TOKEN_PATTERN = re.compile(r"<[^<>]+>")


def item_trie(tokenizer, sid_of_item: dict[str, str]) -> ItemTrie:
    """Trie over every catalog item's semantic-ID token ids."""
    return ItemTrie(
        {item: tokenizer.convert_tokens_to_ids(TOKEN_PATTERN.findall(sid)) for item, sid in sid_of_item.items()}
    )


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
    return tokenizer(messages[-1]["content"] + "\n")["input_ids"]


def rank_items(
    model, tokenizer, prompts: list[list[int]], trie: ItemTrie, num_beams: int, top_k: int, batch_size: int
):
    """Top-k item lists (best first) for each prompt."""
    guard_cpu_4bit_training(model)  # evaluation must not stop a 4-bit CPU model from training later
    was_training = model.training
    model.eval()
    results = constrained_beam_search(
        model, tokenizer, prompts, trie, num_beams=num_beams, top_k=top_k, batch_size=batch_size
    )
    model.train(was_training)
    return [[item for item, _ in ranked] for ranked in results]


def evaluate_next_item(model, tokenizer, examples, sid_of_item, train_histories, args, catalog_size: int) -> dict:
    """Recall/NDCG@{5,10,20}, coverage and distinct top-1 of the model and of a popularity baseline."""
    examples = examples[: args.max_users] if args.max_users else examples
    prompts = [
        chat_prompt_ids(tokenizer, recommendation_messages([sid_of_item[i] for i in ex["history"]])) for ex in examples
    ]
    targets = [ex["target"] for ex in examples]
    trie = item_trie(tokenizer, sid_of_item)
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
        rankings = rank_items(model, tokenizer, prompts, trie, args.num_beams, args.top_k, args.batch_size)
    ks = tuple(k for k in (5, 10, 20) if k <= args.top_k)
    popular = popularity_ranking(train_histories, k=args.top_k)
    return {
        "model": evaluate_rankings(rankings, targets, ks=ks, catalog_size=catalog_size),
        "popularity": evaluate_rankings([popular] * len(targets), targets, ks=ks, catalog_size=catalog_size),
        "rankings": {ex["user"]: ranking for ex, ranking in zip(examples, rankings)},
    }


@torch.no_grad()
def title_to_id_hits(model, tokenizer, pairs: list[dict], sid_of_item: dict[str, str], items: list[str], **kwargs):
    """Does the model map an item's title to its ID? hit@1 and hit@10 with constrained decoding."""
    trie = item_trie(tokenizer, sid_of_item)
    prompts = [
        chat_prompt_ids(tokenizer, [{"role": "user", "content": f"Which item is called {pair['title']}?"}])
        for pair in pairs
    ]
    rankings = rank_items(model, tokenizer, prompts, trie, kwargs.get("num_beams", 10), 10, kwargs.get("batch", 8))
    hit1 = sum(r[:1] == [item] for r, item in zip(rankings, items)) / len(items)
    hit10 = sum(item in r[:10] for r, item in zip(rankings, items)) / len(items)
    return {"title_to_id_hit@1": hit1, "title_to_id_hit@10": hit10, "n_items": len(items)}


@torch.no_grad()
def code_accuracy(model, tokenizer, pairs: list[dict], level_tokens: list[list[str]], batch_size: int = 16):
    """Teacher-forced accuracy of each semantic-ID level given the title (argmax among that level's codes).

    Chance is 1 / (codes of the level). `level_tokens[l]` lists level l's token strings.
    """
    from ..templates import encode_prompt_answer
    from ..training import answer_collator, answer_logits_and_targets

    level_ids = [torch.tensor(tokenizer.convert_tokens_to_ids(tokens)) for tokens in level_tokens]
    collator = answer_collator(tokenizer)
    was_training = model.training
    model.eval()
    correct = [0] * len(level_ids)
    total = 0
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        rows = [
            encode_prompt_answer(tokenizer, f"Which item is called {p['title']}?", p["tokens"], 256)
            for p in pairs[start : start + batch_size]
        ]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        logits, targets = answer_logits_and_targets(model, batch)
        for row in range(targets.shape[0]):
            positions = (targets[row] != -100).nonzero().squeeze(-1)[: len(level_ids)]
            for level, position in enumerate(positions.tolist()):
                ids = level_ids[level].to(device)
                guess = ids[logits[row, position, ids].argmax()]
                correct[level] += int(guess == targets[row, position])
            total += 1
    model.train(was_training)
    return {f"level_{level}_accuracy": c / max(total, 1) for level, c in enumerate(correct)}
