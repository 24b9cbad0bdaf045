"""The recipe's data: interactions and items, semantic IDs, and the fine-tuning examples (with continual grounding)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset, concatenate_datasets

from ..method.init import description_token_ids
from ..recsys import (
    SemanticIDs,
    embed_texts,
    grounding_pairs,
    item_texts,
    leave_one_out,
    load_interactions,
    load_items,
    load_movielens_100k,
    recommendation_messages,
    sequence_chunks,
    training_examples,
    user_histories,
)
from ..recsys.collaborative import collaborative_part, combine
from ..sharing.adapter_format import SEMANTIC_IDS_NAME
from ..training.grounding import grounding_dataset
from ..training.templates import IGNORE_INDEX, encode_prompt, encode_prompt_answer, render_examples
from .config import RecipeConfig

SID_FILE = SEMANTIC_IDS_NAME
SEQUENCE_PROMPT = "List the items the user watched, in order."


@dataclass
class RecData:
    items: Dataset
    histories: dict
    split: object


def load_data(config: RecipeConfig) -> RecData:
    args = config.data
    if args.dataset == "movielens-100k":
        interactions, items = load_movielens_100k()
    else:
        interactions = load_interactions(args.interactions_path, args.user_column, args.item_column, args.time_column)
        items = load_items(args.items_path, args.item_column, args.title_column, tuple(args.description_columns))
    histories = user_histories(interactions, items=items, min_interactions=args.min_interactions)
    if not histories:
        raise ValueError("No user has enough interactions: lower data.min_interactions or check the data.")
    return RecData(items, histories, leave_one_out(histories, max_history=args.history_length))


def semantic_ids_stage(config: RecipeConfig, data: RecData, out: Path, state: PartialState) -> SemanticIDs:
    path = out / SID_FILE
    with state.main_process_first():
        if not path.exists() and state.is_main_process:
            ids, texts = item_texts(data.items)
            args = config.semantic_ids
            text = embed_texts(texts, args.encoder)
            # the training interactions only: validation/test targets never shape the IDs
            collaborative = collaborative_part(
                args.embedding, text, ids, data.split.train, args.collaborative_dim, args.seed
            )
            vectors = combine(args.embedding, text, collaborative)
            sids = SemanticIDs.from_embeddings(
                ids,
                vectors,
                args.levels,
                args.codes_per_level,
                args.seed,
                args.method,
                args.encoder,
                embedding=args.embedding,
                collaborative=collaborative,
            )
            sids.save(path)
    return SemanticIDs.load(path)


def code_descriptions(tokenizer, sids: SemanticIDs, data: RecData, per_token: int) -> list[list[int]]:
    """init=description: each code token is described by the titles of (up to `per_token`) items that use it."""
    titles = dict(zip(data.items["item"], data.items["title"]))
    vocab = sids.vocabulary()
    examples: dict[str, list[str]] = {token: [] for token in vocab}
    for item, tokens in sids.token_lists().items():
        for token in tokens:
            if len(examples[token]) < per_token:
                examples[token].append(titles[item])
    texts = [", ".join(examples[t]) if examples[t] else "an unused item code" for t in vocab]
    return description_token_ids(tokenizer, texts)


def recommendation_prompt(config: RecipeConfig, token_lists: dict[str, list[str]], history: list[str]) -> str:
    """The next-item question for one history (its semantic IDs as strings of new tokens)."""
    sids = ["".join(token_lists[item]) for item in history]
    return recommendation_messages(sids, separator=config.data.history_separator)[0]["content"]


def prompt_ids(config: RecipeConfig, tokenizer, token_lists: dict[str, list[str]], history: list[str]) -> list[int]:
    """What evaluation feeds the model for one user: the same encoding as a fine-tuning example's prompt (windows),
    or as a sequence example up to the target (sequences: the items so far, each followed by the separator)."""
    if config.data.examples == "sequences":
        ids, _ = sequence_ids(config, tokenizer, token_lists, history)
        return ids + _separator_ids(config, tokenizer)
    return encode_prompt(tokenizer, recommendation_prompt(config, token_lists, history), config.data.prompt_style)


def _separator_ids(config: RecipeConfig, tokenizer) -> list[int]:
    separator = config.data.history_separator
    return list(tokenizer(separator, add_special_tokens=False)["input_ids"]) if separator else []


def sequence_ids(
    config: RecipeConfig, tokenizer, token_lists: dict[str, list[str]], items: list[str]
) -> tuple[list[int], list[int]]:
    """One sequence example: `SEQUENCE_PROMPT` (encoded as a prompt ready for its answer), then each item's ID
    tokens with the separator between items. Returns `(input_ids, labels)`; the labels are the ID tokens of every
    item after the first (one next-item target each) and IGNORE_INDEX elsewhere (prompt, first item, separators)."""
    ids = encode_prompt(tokenizer, SEQUENCE_PROMPT, config.data.prompt_style)
    labels = [IGNORE_INDEX] * len(ids)
    separator = _separator_ids(config, tokenizer)
    for position, item in enumerate(items):
        if position:
            ids += separator
            labels += [IGNORE_INDEX] * len(separator)
        item_ids = tokenizer.convert_tokens_to_ids(token_lists[item])
        ids += item_ids
        labels += item_ids if position else [IGNORE_INDEX] * len(item_ids)
    return ids, labels


def check_grounding_mix(config: RecipeConfig, data: RecData) -> None:
    """`finetune.grounding_mix` > 0 needs grounding examples: refuse it, naming the key, before anything trains."""
    mix = config.finetune.grounding_mix
    if mix <= 0:
        return
    titles, descriptions = data.items["title"], data.items["description"]
    pairs = [{"tokens": "<id>", "title": t, "description": d} for t, d in zip(titles, descriptions)]
    if not render_examples(pairs, config.grounding.grounding_templates()):
        names = [t.name for t in config.grounding.grounding_templates()]
        raise ValueError(
            f"finetune.grounding_mix={mix} asks for grounding examples, but grounding.templates {names} apply to no "
            "item (they need fields the items lack): choose templates the item table can fill, or set "
            "finetune.grounding_mix: 0."
        )


def _window_row(config: RecipeConfig, tokenizer, tokens, history: list[str], target: str, max_length=None) -> dict:
    prompt = recommendation_prompt(config, tokens, history)
    answer = "".join(tokens[target])
    length = max_length or config.data.max_length
    return encode_prompt_answer(tokenizer, prompt, answer, length, config.data.prompt_style)


def _sequence_row(config: RecipeConfig, tokenizer, tokens: dict[str, list[str]], items: list[str]) -> dict:
    ids, labels = sequence_ids(config, tokenizer, tokens, items)
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def next_item_rows(config: RecipeConfig, tokenizer, sids: SemanticIDs, data: RecData) -> list[dict]:
    """The next-item examples `data.examples` names (a seeded subsample of `data.max_train_examples` of them):
    windows (one target each) or sequence chunks (every item after a chunk's first is a target)."""
    tokens = sids.token_lists()
    args = config.data
    if args.examples == "sequences":
        examples = sequence_chunks(data.split.train, args.max_history, args.max_chunks_per_user)
    else:
        examples = training_examples(data.split.train, max_history=args.max_history)
    limit, seed = args.max_train_examples, config.output.seed
    if limit is not None and len(examples) > limit:
        examples = random.Random(seed).sample(examples, limit)
    if args.examples == "sequences":
        return [_sequence_row(config, tokenizer, tokens, ex["items"]) for ex in examples]
    return [_window_row(config, tokenizer, tokens, ex["history"], ex["target"]) for ex in examples]


def longest_example_tokens(config: RecipeConfig, tokenizer, sids: SemanticIDs) -> int:
    """Tokens of the longest next-item example the settings make (a full history of the longest IDs)."""
    tokens = sids.token_lists()
    longest = max(tokens, key=lambda item: len(tokens[item]))
    history = [longest] * config.data.history_length
    if config.data.examples == "sequences":
        return len(sequence_ids(config, tokenizer, tokens, [*history, longest])[0])
    return len(_window_row(config, tokenizer, tokens, history, longest, max_length=10**9)["input_ids"])


def check_example_length(config: RecipeConfig, sids: SemanticIDs, tokenizer=None) -> None:
    """Refuse a history whose examples do not fit `data.max_length` (they would be cut, losing targets), naming the
    tokens they need, before anything trains (default `tokenizer`: the model's, with the semantic-ID tokens)."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        from ..assets.offline import resolve
        from ..method.tokens import add_new_tokens

        tokenizer = AutoTokenizer.from_pretrained(resolve(config.model.name_or_path))
        add_new_tokens(tokenizer, sids.vocabulary())
    needed = longest_example_tokens(config, tokenizer, sids)
    args = config.data
    if needed > args.max_length:
        per_item = len(next(iter(sids.token_lists().values())))
        raise ValueError(
            f"data.max_history={args.max_history} ({args.examples}: {args.history_length} items of history, "
            f"{per_item} ID tokens per item) needs {needed} tokens per example, but data.max_length="
            f"{args.max_length}: raise data.max_length to {needed} or lower data.max_history."
        )


def finetune_dataset(config: RecipeConfig, tokenizer, sids: SemanticIDs, data: RecData) -> Dataset:
    """Next-item examples (`next_item_rows`), plus grounding examples when `finetune.grounding_mix` > 0 so that
    they make up that fraction of the fine-tuning data."""
    rows = next_item_rows(config, tokenizer, sids, data)
    style, length, seed = config.data.prompt_style, config.data.max_length, config.output.seed
    task = Dataset.from_list(rows)
    mix = config.finetune.grounding_mix
    if mix <= 0:
        return task
    check_grounding_mix(config, data)
    pairs = grounding_pairs(data.items, sids)
    grounding = grounding_dataset(tokenizer, pairs, config.grounding.grounding_templates(), length, style)
    grounding = grounding.remove_columns(["template"]).shuffle(seed=seed)
    if mix >= 1:
        return grounding
    wanted = round(len(task) * mix / (1 - mix))  # so grounding / (task + grounding) == mix
    picks = [i % len(grounding) for i in range(wanted)]
    return concatenate_datasets([task, grounding.select(picks)]).shuffle(seed=seed)
