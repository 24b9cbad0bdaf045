"""`FinetuneConfig`: the recipes' fine-tuning stage, a `TrainingArguments` with continual grounding."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..training.arguments import GTITrainingArguments


@dataclass
class FinetuneConfig(GTITrainingArguments):
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

    def __post_init__(self):
        if not 0.0 <= self.grounding_mix <= 1.0:
            raise ValueError(
                f"grounding_mix must lie in [0, 1] (the fraction of fine-tuning examples drawn from the grounding "
                f"templates), got {self.grounding_mix!r}."
            )
        super().__post_init__()
