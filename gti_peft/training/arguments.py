"""What every `TrainingArguments` subclass here (`GroundingConfig`, the recipe's `FinetuneConfig`) settles and checks
before `TrainingArguments`' own checks run."""

from __future__ import annotations

import torch

from .precision import resolve_bf16


def settle_training_arguments(args, name: str) -> None:
    """`use_cpu=None`: the CPU where no CUDA device is present (so CPU ranks form a process group); `bf16="auto"`:
    bf16 where this device runs it faster (`precision.bf16_is_faster`). Refuses negative steps and a learning rate
    that is not positive; `name` is the config's name in messages."""
    if args.max_steps < 0 or not args.learning_rate > 0:
        raise ValueError(
            f"{name} needs max_steps >= 0 and learning_rate > 0, got max_steps={args.max_steps}, "
            f"learning_rate={args.learning_rate}."
        )
    if args.use_cpu is None:
        args.use_cpu = not torch.cuda.is_available()
    args.bf16 = resolve_bf16(args.bf16)
