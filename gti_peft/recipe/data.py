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
    grounding_pairs,
    item_texts,
    leave_one_out,
    load_interactions,
    load_items,
    load_movielens_100k,
    recommendation_messages,
    training_examples,
    user_histories,
)
from ..training.grounding import grounding_dataset
from ..training.templates import DEFAULT_TEMPLATES, encode_prompt, encode_prompt_answer, render_examples
from .config import RecipeConfig

SID_FILE = "semantic_ids.safetensors"


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
    return RecData(items, histories, leave_one_out(histories, max_history=args.max_history))


def semantic_ids_stage(config: RecipeConfig, data: RecData, out: Path, state: PartialState) -> SemanticIDs:
    path = out / SID_FILE
    with state.main_process_first():
        if not path.exists() and state.is_main_process:
            ids, texts = item_texts(data.items)
            args = config.semantic_ids
            sids = SemanticIDs.build(
                ids, texts, args.encoder, args.levels, args.codes_per_level, args.seed, method=args.method
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


def grounding_templates(config: RecipeConfig) -> list:
    """The templates `grounding.templates` names (all of `DEFAULT_TEMPLATES` when it names none)."""
    names = set(config.grounding.templates or [t.name for t in DEFAULT_TEMPLATES])
    return [t for t in DEFAULT_TEMPLATES if t.name in names]


def recommendation_prompt(config: RecipeConfig, token_lists: dict[str, list[str]], history: list[str]) -> str:
    """The next-item question for one history (its semantic IDs as strings of new tokens)."""
    sids = ["".join(token_lists[item]) for item in history]
    return recommendation_messages(sids, separator=config.data.history_separator)[0]["content"]


def prompt_ids(config: RecipeConfig, tokenizer, token_lists: dict[str, list[str]], history: list[str]) -> list[int]:
    """What evaluation feeds the model for one user: the same encoding as a fine-tuning example's prompt."""
    return encode_prompt(tokenizer, recommendation_prompt(config, token_lists, history), config.data.prompt_style)


def check_grounding_mix(config: RecipeConfig, data: RecData) -> None:
    """`finetune.grounding_mix` > 0 needs grounding examples: refuse it, naming the key, before anything trains."""
    mix = config.finetune.grounding_mix
    if mix <= 0:
        return
    titles, descriptions = data.items["title"], data.items["description"]
    pairs = [{"tokens": "<id>", "title": t, "description": d} for t, d in zip(titles, descriptions)]
    if not render_examples(pairs, grounding_templates(config)):
        names = [t.name for t in grounding_templates(config)]
        raise ValueError(
            f"finetune.grounding_mix={mix} asks for grounding examples, but grounding.templates {names} apply to no "
            "item (they need fields the items lack): choose templates the item table can fill, or set "
            "finetune.grounding_mix: 0."
        )


def finetune_dataset(config: RecipeConfig, tokenizer, sids: SemanticIDs, data: RecData) -> Dataset:
    """Next-item examples (sliding windows over the training sequences), plus grounding examples when
    `finetune.grounding_mix` > 0 so that they make up that fraction of the fine-tuning data."""
    tokens = sids.token_lists()
    windows = training_examples(data.split.train, max_history=config.data.max_history)
    limit, seed = config.data.max_train_examples, config.output.seed
    if limit is not None and len(windows) > limit:
        windows = random.Random(seed).sample(windows, limit)
    style, length = config.data.prompt_style, config.data.max_length
    rows = [
        encode_prompt_answer(
            tokenizer,
            recommendation_prompt(config, tokens, ex["history"]),
            "".join(tokens[ex["target"]]),
            length,
            style,
        )
        for ex in windows
    ]
    task = Dataset.from_list(rows)
    mix = config.finetune.grounding_mix
    if mix <= 0:
        return task
    check_grounding_mix(config, data)
    pairs = grounding_pairs(data.items, sids)
    grounding = grounding_dataset(tokenizer, pairs, grounding_templates(config), length, style)
    grounding = grounding.remove_columns(["template"]).shuffle(seed=seed)
    if mix >= 1:
        return grounding
    wanted = round(len(task) * mix / (1 - mix))  # so grounding / (task + grounding) == mix
    picks = [i % len(grounding) for i in range(wanted)]
    return concatenate_datasets([task, grounding.select(picks)]).shuffle(seed=seed)
