"""What every `TrainingArguments` subclass here (`GroundingConfig`, the recipe's `FinetuneConfig`) settles and checks
before `TrainingArguments`' own checks run, and where their `bf16="auto"` becomes a bool."""

from __future__ import annotations

import dataclasses

import torch

from .precision import AUTO, check_bf16, resolve_bf16


def settle_training_arguments(args, name: str) -> bool | str:
    """`use_cpu=None`: the CPU where no CUDA device is present (so CPU ranks form a process group). Refuses negative
    steps and a learning rate that is not positive (`name`: the config's name in messages). Returns the requested
    `bf16` and leaves a bool for `TrainingArguments`' checks: the caller restores the request after them, so a
    config keeps `"auto"` (and saves it as written) until a gti-peft trainer resolves it (`with_bf16_resolved`)."""
    if args.max_steps < 0 or not args.learning_rate > 0:
        raise ValueError(
            f"{name} needs max_steps >= 0 and learning_rate > 0, got max_steps={args.max_steps}, "
            f"learning_rate={args.learning_rate}."
        )
    if args.use_cpu is None:
        args.use_cpu = not torch.cuda.is_available()
    check_bf16(args.bf16, f"{name}.bf16")
    requested, args.bf16 = args.bf16, args.bf16 is True
    return requested


def with_bf16_resolved(args):
    """`args` itself, or a copy whose `bf16="auto"` is resolved on this device (`precision.bf16_is_faster`)."""
    if getattr(args, "bf16", False) == AUTO:
        return dataclasses.replace(args, bf16=resolve_bf16(AUTO))
    return args
