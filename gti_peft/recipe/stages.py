"""The recipe's training and evaluation stages. Each returns what it measured; `pipeline.run_recipe` orders them."""

from __future__ import annotations

import time
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..recsys import SemanticIDs, format_metrics_table, grounding_pairs
from ..recsys.recommender import Recommender
from ..training.grounding import ground
from ..training.trainer import AnswerOnlyTrainer, answer_collator
from .config import RecipeConfig
from .data import RecData, finetune_dataset
from .evaluation import check_history_exclusion, evaluate_next_item, prompt_settings


def last_checkpoint(args) -> str | None:
    """The newest checkpoint in a stage's `output_dir`, to resume from (None: start)."""
    folder = Path(args.output_dir)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def ground_stage(config: RecipeConfig, model, tokenizer, sids: SemanticIDs, data: RecData, out: Path) -> dict:
    report = ground(
        model,
        tokenizer,
        grounding_pairs(data.items, sids),
        config.grounding,
        reference=sids.codebook_for_tokens(),  # the code tokens come first in sids.vocabulary()
        resume_from_checkpoint=last_checkpoint(config.grounding),
    )
    return {k: v for k, v in report.to_dict().items() if k != "diagnostics_before"}


def finetune_stage(config: RecipeConfig, model, tokenizer, sids: SemanticIDs, data: RecData, out: Path) -> dict:
    dataset = finetune_dataset(config, tokenizer, sids, data)
    trainer = AnswerOnlyTrainer(
        model=model,
        args=config.finetune,
        train_dataset=dataset,
        data_collator=answer_collator(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(config.finetune))
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in dataset["input_ids"]) / max(len(dataset), 1)
    return {
        "steps": result.global_step,
        "seconds": seconds,
        "bf16": config.finetune.bf16,
        "examples": len(dataset),
        "grounding_mix": config.finetune.grounding_mix,
        "mean_tokens_per_example": tokens,
    }


def evaluation_examples(config: RecipeConfig, data: RecData) -> list:
    """The evaluated users' examples: the first `evaluation.max_users` (all by default) of the chosen split."""
    args = config.evaluation
    examples = data.split.test if args.split == "test" else data.split.valid
    return examples[: args.max_users] if args.max_users else examples


def check_evaluation(config: RecipeConfig, data: RecData) -> None:
    """With `evaluation.exclude_history`, refuse (before anything trains) a user with fewer than `top_k` items left."""
    if "evaluate" in config.output.stages and config.evaluation.exclude_history:
        examples = evaluation_examples(config, data)
        check_history_exclusion(examples, data.split.train, len(data.items), config.evaluation.top_k)


def evaluate_stage(config: RecipeConfig, model, tokenizer, sids: SemanticIDs, data: RecData) -> dict:
    """Next-item ranking of the first `evaluation.max_users` users (all by default) against popularity."""
    args = config.evaluation
    examples = evaluation_examples(config, data)
    titles = dict(zip(data.items["item"], data.items["title"]))
    recommender = Recommender(model, tokenizer, sids, prompt_settings(config), titles)  # as a saved run ranks
    prompts = [recommender.prompt_ids(ex["history"]) for ex in examples]
    tokens = sids.token_lists()
    metrics = evaluate_next_item(
        model, tokenizer, prompts, examples, tokens, data.split.train, args, len(data.items), recommender
    )
    targets = {ex["user"]: ex["target"] for ex in examples}
    steps = config.grounding.max_steps if "ground" in config.output.stages else 0
    label = f"{config.adapter.init} init" + (f" + GTI ({steps} grounding steps)" if steps else ", no grounding")
    return {
        "metrics": {"model": metrics["model"], "popularity": metrics["popularity"]},
        "ranking": metrics["ranking"],
        "table": format_metrics_table({"popularity": metrics["popularity"], label: metrics["model"]}),
        "rankings": {user: {"target": targets[user], "ranking": r} for user, r in metrics["rankings"].items()},
    }
