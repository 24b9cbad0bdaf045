"""`FinetuneConfig`: the recipes' fine-tuning stage, a `TrainingArguments` with continual grounding."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from ..training.arguments import settle_training_arguments


@dataclass
class FinetuneConfig(TrainingArguments):
    """The `finetune:` section of a recipe: every `transformers.TrainingArguments` field plus `grounding_mix`.

    LoRA and the new rows train together on the task data; the defaults are the recipes' fine-tuning settings.
    """

    grounding_mix: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of fine-tuning examples drawn from the grounding templates (continual grounding, as "
            "LC-Rec trains its alignment tasks alongside next-item prediction); recommendation recipe only."
        },
    )
    output_dir: str | None = field(default=None, metadata={"help": "Checkpoints: the recipe sets its own folder."})
    max_steps: int = field(default=200, metadata={"help": "Fine-tuning steps."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of LoRA and the new rows."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Examples per device per step."})
    lr_scheduler_type: SchedulerType | str = field(
        default="constant_with_warmup", metadata={"help": "Learning rate schedule."}
    )
    warmup_steps: float = field(default=10, metadata={"help": "Warm-up steps."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every this many steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Loggers to report to."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The recipe's collator reads every column."})
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
        if not 0.0 <= self.grounding_mix <= 1.0:
            raise ValueError(
                f"grounding_mix must lie in [0, 1] (the fraction of fine-tuning examples drawn from the grounding "
                f"templates), got {self.grounding_mix!r}."
            )
        bf16 = settle_training_arguments(self, "FinetuneConfig")
        super().__post_init__()
        self.bf16 = bf16  # "auto" stays a setting until the trainer resolves it
