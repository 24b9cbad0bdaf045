"""`GTITrainingArguments`: the `TrainingArguments` both gti-peft stage configs (`GroundingConfig`, the recipe's
`FinetuneConfig`) build on: their shared defaults, the device fields they settle, and `bf16="auto"`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from .precision import AUTO, check_bf16, resolve_bf16


@dataclass
class GTITrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults gti-peft's stages share. Refuses negative steps and a learning rate that
    is not positive; `use_cpu=None` means the CPU where no CUDA device is present (so CPU ranks form a process
    group); `bf16="auto"` stays a setting (saved as written) until a gti-peft trainer resolves it
    (`with_bf16_resolved`)."""

    per_device_train_batch_size: int = field(default=16, metadata={"help": "Examples per device per step."})
    lr_scheduler_type: SchedulerType | str = field(
        default="constant_with_warmup", metadata={"help": "Learning rate schedule."}
    )
    warmup_steps: float = field(default=10, metadata={"help": "Warm-up steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every this many steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers to report to."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every column: gti-peft's collators and reports read them."}
    )
    use_cpu: bool | None = field(
        default=None,
        metadata={"help": "Train on the CPU. None: where no CUDA device is present (so CPU ranks form a group)."},
    )
    bf16: bool | str = field(
        default=False,
        metadata={
            "help": "bf16 mixed precision: true, false or 'auto' (bf16 where this device runs it faster; gti-peft's "
            "trainers resolve it)."
        },
    )

    def __post_init__(self):
        name = type(self).__name__
        if self.max_steps < 0 or not self.learning_rate > 0:
            raise ValueError(
                f"{name} needs max_steps >= 0 and learning_rate > 0, got max_steps={self.max_steps}, "
                f"learning_rate={self.learning_rate}."
            )
        if self.use_cpu is None:
            self.use_cpu = not torch.cuda.is_available()
        check_bf16(self.bf16, f"{name}.bf16")
        requested, self.bf16 = self.bf16, self.bf16 is True  # TrainingArguments' own checks want a bool
        super().__post_init__()  # bad options fail here, before any work
        self.bf16 = requested


def with_bf16_resolved(args):
    """`args` itself, or a copy whose `bf16="auto"` is resolved on this device (`precision.bf16_is_faster`)."""
    if getattr(args, "bf16", False) == AUTO:
        return dataclasses.replace(args, bf16=resolve_bf16(AUTO))
    return args
