"""The training stages every task shares: grounding (only the new rows learn) and fine-tuning (LoRA + rows)."""

from __future__ import annotations

import time
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..training.grounding import ground
from ..training.trainer import AnswerOnlyTrainer, answer_collator
from .task import Task


def last_checkpoint(args) -> str | None:
    """The newest checkpoint in a stage's `output_dir`, to resume from (None: start)."""
    folder = Path(args.output_dir)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def ground_stage(task: Task, model, tokenizer, reference=None) -> dict:
    """Ground the new rows on the task's pairs with `config.grounding`; resumes from its last checkpoint.
    `reference`: the task's RSA reference, computed once by the pipeline."""
    args = task.config.grounding
    report = ground(
        model,
        tokenizer,
        task.grounding_pairs(),
        args,
        reference=reference,
        resume_from_checkpoint=last_checkpoint(args),
    )
    return {k: v for k, v in report.to_dict().items() if k != "diagnostics_before"}


def finetune_stage(task: Task, model, tokenizer, reference=None) -> dict:
    """Fine-tune LoRA and the new rows on the task's rows with `config.finetune`; resumes from its last checkpoint.
    (`reference` is not used: the pipeline reports the geometry after each stage.)"""
    args = task.config.finetune
    dataset = task.finetune_dataset(tokenizer)
    trainer = AnswerOnlyTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=answer_collator(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(args))
    tokens = sum(len(ids) for ids in dataset["input_ids"]) / max(len(dataset), 1)
    return {
        "steps": result.global_step,
        "seconds": time.perf_counter() - start,
        "bf16": trainer.args.bf16,  # as resolved on this device
        "examples": len(dataset),
        "grounding_mix": args.grounding_mix,
        "mean_tokens_per_example": tokens,
    }
