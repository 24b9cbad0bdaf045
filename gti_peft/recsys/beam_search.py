"""Trie-constrained beam search that returns the top-k catalog items for each prompt."""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .trie import ItemTrie

MAX_TOP_K = 20
Prompts = Sequence[Sequence[int]] | Mapping[str, Any] | torch.Tensor


def _validate(trie: ItemTrie, num_beams: int, top_k: int | None, batch_size: int) -> int:
    if not isinstance(trie, ItemTrie) or len(trie) == 0:
        raise ValueError(f"`trie` must be a non-empty ItemTrie, got {trie!r}: build one with ItemTrie(item_tokens).")
    if num_beams < 1:
        raise ValueError(f"`num_beams` must be >= 1, got {num_beams}: pass e.g. num_beams=10.")
    top_k = min(num_beams, MAX_TOP_K) if top_k is None else top_k
    if not 1 <= top_k <= min(num_beams, MAX_TOP_K):
        raise ValueError(
            f"`top_k` must be between 1 and min(num_beams, {MAX_TOP_K}) = {min(num_beams, MAX_TOP_K)}, got "
            f"{top_k}: lower top_k or raise num_beams."
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}: pass e.g. batch_size=8.")
    return top_k


def check_items_left(
    catalog_size: int, excluded_counts: Sequence[int], top_k: int, names: Sequence[Hashable] | None = None
) -> None:
    """Refuse, before any model work, a prompt whose exclusions leave fewer than `top_k` catalog items."""
    short = [row for row, count in enumerate(excluded_counts) if catalog_size - count < top_k]
    if not short:
        return
    row = min(short, key=lambda r: catalog_size - excluded_counts[r])
    who = f"User {names[row]!r} (row {row})" if names is not None else f"Prompt {row}"
    left = catalog_size - excluded_counts[row]
    raise ValueError(
        f"{who} has {excluded_counts[row]} of the catalog's {catalog_size} items in their history, which leaves "
        f"{left} item(s) to rank, fewer than top_k={top_k} ({len(short)} row(s) like this): lower top_k to at most "
        f"{left}, or rank without leaving the history out (exclude=None / exclude_history=False / "
        "evaluation.exclude_history: false)."
    )


def _excluded_indices(
    trie: ItemTrie, exclude: Sequence[Iterable[Hashable]] | None, num_prompts: int, top_k: int
) -> list[list[int]] | None:
    """Each prompt's excluded items as indices into `trie.items`, checked against the catalog and `top_k`."""
    if exclude is None:
        return None
    exclude = list(exclude)
    if len(exclude) != num_prompts:
        raise ValueError(
            f"`exclude` must hold one collection of items per prompt: got {len(exclude)} for {num_prompts} prompts."
        )
    index = {item: i for i, item in enumerate(trie.items)}
    rows = []
    for row, items in enumerate(exclude):
        if isinstance(items, (str, bytes)):
            raise ValueError(f"`exclude[{row}]` is the string {items!r}: pass a list of items, e.g. [{items!r}].")
        items = set(items)
        unknown = [item for item in items if item not in index]
        if unknown:
            raise ValueError(
                f"`exclude[{row}]` holds {len(unknown)} item(s) that are not in the trie, e.g. "
                f"{sorted(map(str, unknown))[:5]}: exclude only catalog items (drop the others first)."
            )
        rows.append(sorted(index[item] for item in items))
    check_items_left(len(trie), [len(r) for r in rows], top_k)
    return rows


def _blocked_nodes(trie: ItemTrie, excluded: list[list[int]], device: torch.device) -> torch.Tensor:
    """`(prompts, num_nodes)`: True at each node whose every item below is excluded for that prompt (leaves too)."""
    item_paths, leaf_counts = trie.exclusion_tables(device)
    counts = torch.zeros(len(excluded), leaf_counts.numel(), dtype=torch.long, device=device)
    for row, items in enumerate(excluded):
        if items:
            nodes = item_paths[torch.tensor(items, device=device)]
            nodes = nodes[nodes >= 0]
            counts[row].scatter_add_(0, nodes, torch.ones_like(nodes))
    return counts == leaf_counts  # the root counts no excluded item: it is never blocked


def _pad_id(tokenizer_or_pad_id: Any) -> int:
    if isinstance(tokenizer_or_pad_id, int):
        return tokenizer_or_pad_id
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer_or_pad_id, name, None)
        if isinstance(value, int):
            return value
    return 0  # any id works: padded positions are masked out


def _as_lists(prompts: Prompts) -> list[list[int]]:
    """Prompts as lists of real (unpadded) token ids; batch encodings are unpadded with their attention mask."""
    if isinstance(prompts, Mapping) or hasattr(prompts, "input_ids"):
        input_ids = prompts["input_ids"]
        mask = prompts.get("attention_mask") if hasattr(prompts, "get") else None
    else:
        input_ids, mask = prompts, None
    input_ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else input_ids
    mask = mask.tolist() if isinstance(mask, torch.Tensor) else mask
    if mask is None:
        return [[int(t) for t in ids] for ids in input_ids]
    return [[int(t) for t, m in zip(ids, row) if m] for ids, row in zip(input_ids, mask)]


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token: got an empty prompt.")
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _cache_name(model: torch.nn.Module) -> str:
    """The cache argument's name: `cache` since transformers 5.24, `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _last_log_probs(model: torch.nn.Module, cache_name: str, cache: Any = None, **inputs: Any) -> tuple[Any, Any]:
    if cache is not None:
        inputs[cache_name] = cache
    outputs = model(**inputs, use_cache=True, logits_to_keep=1)
    return torch.log_softmax(outputs.logits[:, -1].float(), dim=-1), getattr(outputs, cache_name)


def _search_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    pad_id: int,
    trie: ItemTrie,
    num_beams: int,
    top_k: int,
    excluded: list[list[int]] | None = None,
) -> list[list[tuple[Hashable, float]]]:
    device = _model_device(model)
    child_tokens, child_nodes, node_item = trie.tensors(device)
    blocked = None if excluded is None else _blocked_nodes(trie, excluded, device)
    input_ids, prompt_mask = _left_pad(prompts, pad_id, device)
    batch = len(prompts)
    position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    cache_name = _cache_name(model)
    log_probs, cache = _last_log_probs(
        model, cache_name, input_ids=input_ids, attention_mask=prompt_mask, position_ids=position_ids
    )
    next_position = prompt_mask.sum(-1)  # (batch,)
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)  # one live beam per prompt at the root
    scores = torch.zeros(batch, 1, device=device)
    pool_scores = torch.full((batch, top_k), float("-inf"), device=device)
    pool_items = torch.full((batch, top_k), -1, dtype=torch.long, device=device)
    step = 0
    while True:
        width, fan = nodes.shape[1], child_tokens.shape[1]
        tokens, children = child_tokens[nodes], child_nodes[nodes]  # (batch, width, fan)
        gathered = log_probs.view(batch, width, -1).gather(-1, tokens)
        invalid = children < 0
        if blocked is not None:  # a branch whose every item is excluded is never entered
            invalid |= blocked.gather(1, children.clamp(min=0).view(batch, -1)).view_as(children)
        candidates = (scores.unsqueeze(-1) + gathered).masked_fill(invalid, float("-inf"))
        candidates, tokens, children = (t.reshape(batch, width * fan) for t in (candidates, tokens, children))
        items = node_item[children.clamp(min=0)].masked_fill(children < 0, -1)
        # finished items join the pool of the k best; the rest may keep running
        finished = candidates.masked_fill(items < 0, float("-inf"))
        pool_scores, order = torch.cat([pool_scores, finished], 1).topk(top_k, dim=1)
        pool_items = torch.cat([pool_items, items], 1).gather(1, order)
        running = candidates.masked_fill(items >= 0, float("-inf"))
        # log-probabilities only fall: a beam already below the k-th finished item can never enter the top k
        running = running.masked_fill(running < pool_scores[:, -1:], float("-inf"))
        if not torch.isfinite(running).any():
            break
        scores, best = running.topk(min(num_beams, width * fan), dim=1)
        dead = torch.isinf(scores)
        nodes = children.gather(1, best).masked_fill(dead, 0)
        new_tokens = tokens.gather(1, best)
        origin = (best // fan + torch.arange(batch, device=device).unsqueeze(1) * width).view(-1)
        cache.reorder_cache(origin)  # also expands the single prompt beam to `num_beams` copies at step 0
        step += 1
        beams = scores.shape[1]
        attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, step)], 1)
        log_probs, cache = _last_log_probs(
            model,
            cache_name,
            cache,
            input_ids=new_tokens.view(-1, 1),
            attention_mask=attention_mask.repeat_interleave(beams, 0),
            position_ids=(next_position + step - 1).repeat_interleave(beams).unsqueeze(1),
        )
    results = []
    catalog = trie.items
    for row_scores, row_items in zip(pool_scores.tolist(), pool_items.tolist()):
        results.append([(catalog[i], s) for s, i in zip(row_scores, row_items) if i >= 0 and s != float("-inf")])
    return results


def constrained_beam_search(
    model: torch.nn.Module,
    tokenizer_or_pad_id: Any,
    prompts: Prompts,
    trie: ItemTrie,
    num_beams: int = 10,
    top_k: int | None = None,
    batch_size: int = 8,
    disable_tqdm: bool = False,
    exclude: Sequence[Iterable[Hashable]] | None = None,
) -> list[list[tuple[Hashable, float]]]:
    """Top-k distinct catalog items for each prompt by beam search restricted to the trie.

    Each prompt is encoded once (left-padded batches with attention mask and position ids); its KV cache is then
    expanded to the beams and reordered by beam origin at every step, feeding only the last token. An item's score
    is the sum over its tokens of the log-softmax over the FULL vocabulary (masking happens after normalisation),
    i.e. its teacher-forced log-probability given the prompt. Decoding of an item ends at a trie leaf.

    Args:
        model: Any causal LM (or PEFT-wrapped one) taking `input_ids`, `attention_mask`, `position_ids`,
            `past_key_values`, `use_cache` and `logits_to_keep`, with a reorderable cache (`DynamicCache`).
        tokenizer_or_pad_id: A tokenizer (its `pad_token_id` or `eos_token_id` is used) or the padding id.
        prompts: Lists of token ids, a 2D tensor, or a batch encoding (`input_ids` + `attention_mask`, any padding).
        trie: The catalog's [`ItemTrie`].
        num_beams: Beams per prompt.
        top_k: Items returned per prompt (default: `min(num_beams, 20)`); at most `num_beams` and 20.
        batch_size: Prompts encoded together (each expands to `batch_size * num_beams` rows while decoding).
        disable_tqdm: Hide the progress bar over batches.
        exclude: For each prompt, items never to return (e.g. the user's history). Trie branches whose every item
            is excluded are pruned as the search enters them, so each prompt still gets `top_k` distinct items;
            the scores of the other items are unchanged. Raises before any model work when a prompt has fewer
            than `top_k` items left, or names an item the trie lacks.

    Returns:
        For each prompt, up to `top_k` `(item, log_probability)` pairs, best first (exactly `top_k` whenever the
        catalog has that many items left).
    """
    top_k = _validate(trie, num_beams, top_k, batch_size)
    prompts = _as_lists(prompts)
    excluded = _excluded_indices(trie, exclude, len(prompts), top_k)
    pad_id = _pad_id(tokenizer_or_pad_id)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    results: list[list[tuple[Hashable, float]]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), disable=disable_tqdm, desc="Beam search"):
                indices = order[start : start + batch_size]
                rows = None if excluded is None else [excluded[i] for i in indices]
                batch = _search_batch(model, [prompts[i] for i in indices], pad_id, trie, num_beams, top_k, rows)
                for i, ranked in zip(indices, batch):
                    results[i] = ranked
    finally:
        model.train(was_training)
    return results


class _HoldCompletedItems(LogitsProcessor):
    """After a (shorter) item's leaf only `pad_id` may follow, at log-probability 0, so its score stays put."""

    def __init__(self, trie: ItemTrie, prompt_length: int, pad_id: int):
        self.trie, self.prompt_length, self.pad_id = trie, prompt_length, pad_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            if self.trie.find_prefix_item(ids) is not None:
                scores[row] = float("-inf")
                scores[row, self.pad_id] = 0.0
        return scores


def generate_baseline(
    model: torch.nn.Module,
    prompts: Prompts,
    trie: ItemTrie,
    num_beams: int = 10,
    top_k: int | None = None,
    batch_size: int = 8,
    pad_token_id: int | None = None,
    disable_tqdm: bool = True,
) -> list[list[tuple[Hashable, float]]]:
    """Reference: transformers' `generate` beam search with `prefix_allowed_tokens_fn`, mapped back to items.

    Same inputs and output format as [`constrained_beam_search`] (`length_penalty=0.0`, so scores are summed
    log-probabilities). Each prompt is copied `num_beams` times before its forward pass. With equal-length semantic
    IDs the two return the same lists; with unequal lengths a finished item here keeps occupying a beam (padded
    at log-probability 0) until the longest length, so the lists may differ.
    """
    top_k = _validate(trie, num_beams, top_k, batch_size)
    prompts = _as_lists(prompts)
    pad_id = pad_token_id if pad_token_id is not None else _pad_id(model.generation_config)
    equal_lengths = len({len(s) for s in trie.sequences.values()}) == 1
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[tuple[Hashable, float]]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=disable_tqdm, desc="generate"):
            indices = order[start : start + batch_size]
            input_ids, attention_mask = _left_pad([prompts[i] for i in indices], pad_id, _model_device(model))
            length = input_ids.shape[1]
            processors = LogitsProcessorList([] if equal_lengths else [_HoldCompletedItems(trie, length, pad_id)])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    num_beams=num_beams,
                    num_return_sequences=num_beams,
                    prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(length, pad_id),
                    logits_processor=processors,
                    max_new_tokens=trie.max_length,
                    do_sample=False,
                    early_stopping=True,
                    length_penalty=0.0,
                    pad_token_id=pad_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            sequences = out.sequences[:, length:].view(len(indices), num_beams, -1).tolist()
            scores = out.sequences_scores.view(len(indices), num_beams).tolist()
            for i, row_sequences, row_scores in zip(indices, sequences, scores):
                ranked: dict[Hashable, float] = {}
                for sequence, score in zip(row_sequences, row_scores):
                    item = trie.find_prefix_item(sequence)
                    # beams scored -1e9 or below are generate's placeholders, not real hypotheses
                    if item is not None and item not in ranked and score > -1e8:
                        ranked[item] = score
                results[i] = sorted(ranked.items(), key=lambda pair: -pair[1])[:top_k]
    finally:
        model.train(was_training)
    return results
