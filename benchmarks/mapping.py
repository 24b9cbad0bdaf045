"""Does a model map an item's title to its semantic ID? Measures of the grounding curves and quality benchmarks
(benchmark-only: the recipe's own evaluation ranks next items, `gti_peft.recipe.evaluation`)."""

from __future__ import annotations

import torch

from gti_peft.recipe.evaluation import rank_items
from gti_peft.training.templates import PAPER_TEMPLATES, encode_prompt, encode_prompt_answer
from gti_peft.training.trainer import answer_collator, answer_logits_and_targets

TITLE_TO_TOKENS = next(t for t in PAPER_TEMPLATES if t.name == "title_to_tokens")


def _title_prompt(pair: dict) -> str:
    return TITLE_TO_TOKENS.render(pair)[0]


@torch.no_grad()
def title_to_id_hits(
    model, tokenizer, pairs: list[dict], token_lists, items: list[str], prompt_style: str = "chat", **kwargs
):
    """Does the model map an item's title to its ID (the grounding template title_to_tokens)? hit@1 and hit@10 with
    constrained decoding over every item."""
    prompts = [encode_prompt(tokenizer, _title_prompt(pair), prompt_style) for pair in pairs]
    rankings = rank_items(
        model, tokenizer, prompts, token_lists, kwargs.get("num_beams", 10), 10, kwargs.get("batch", 8)
    )
    hit1 = sum(r[:1] == [item] for r, item in zip(rankings, items)) / len(items)
    hit10 = sum(item in r[:10] for r, item in zip(rankings, items)) / len(items)
    return {"title_to_id_hit@1": hit1, "title_to_id_hit@10": hit10, "n_items": len(items)}


@torch.no_grad()
def code_accuracy(
    model, tokenizer, pairs: list[dict], level_tokens: list[list[str]], batch_size: int = 16, prompt_style="chat"
):
    """Teacher-forced accuracy of each semantic-ID level given the title (argmax among that level's codes).

    Chance is 1 / (codes of the level). `level_tokens[l]` lists level l's token strings.
    """
    level_ids = [torch.tensor(tokenizer.convert_tokens_to_ids(tokens)) for tokens in level_tokens]
    collator = answer_collator(tokenizer)
    was_training = model.training
    model.eval()
    correct = [0] * len(level_ids)
    total = 0
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        rows = [
            encode_prompt_answer(tokenizer, _title_prompt(p), p["tokens"], 256, prompt_style)
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
