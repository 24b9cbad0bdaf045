"""`GroundingConfig`: the settings of `ground()`, a `TrainingArguments` with grounding's own fields and defaults.

Like TRL's `SFTConfig`: every `TrainingArguments` field works, the defaults are the paper's grounding settings
(lr 1e-3, batch 16, no weight decay on the rows, 300 steps), and `HfArgumentParser` parses it from a command line
or a YAML/JSON file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy

from .arguments import GTITrainingArguments
from .templates import DEFAULT_TEMPLATES, PROMPT_STYLES, check_prompt_style

TEMPLATE_NAMES = tuple(t.name for t in DEFAULT_TEMPLATES)


@dataclass
class GroundingConfig(GTITrainingArguments):
    """Settings of `gti_peft.ground`: the grounding fields below plus every `transformers.TrainingArguments` field.

    Only the new rows train while grounding; LoRA and the base stay frozen.
    """

    templates: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Templates to ground with, by name, from {list(TEMPLATE_NAMES)}. None: every template whose "
            "fields a pair has (both directions)."
        },
    )
    prompt_style: str = field(
        default="chat",
        metadata={
            "help": f"How prompts are tokenized, one of {list(PROMPT_STYLES)} (`gti_peft.training.templates`): use "
            "the style fine-tuning and inference use."
        },
    )
    max_length: int = field(default=256, metadata={"help": "Tokens per grounding example (prompt + answer)."})
    eval_examples_per_template: int = field(
        default=32, metadata={"help": "Examples per template whose loss the report gives before and after."}
    )
    # TrainingArguments fields with grounding's defaults (the paper's settings)
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Checkpoints and logs. None: a temporary folder, removed after training."},
    )
    max_steps: int = field(default=300, metadata={"help": "Grounding steps."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the new rows."})
    weight_decay: float = field(default=0.0, metadata={"help": "No weight decay pulls the new rows to zero."})
    save_strategy: SaveStrategy | str = field(
        default="no", metadata={"help": "'steps' with `save_steps` to checkpoint."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the data order."})

    def __post_init__(self):
        unknown = [name for name in self.templates or [] if name not in TEMPLATE_NAMES]
        if unknown or (self.templates is not None and not self.templates):
            raise ValueError(
                f"GroundingConfig.templates got {self.templates!r} (unknown template(s) {unknown}): name one or more "
                f"of {list(TEMPLATE_NAMES)}, or leave it None for every template the pairs can fill."
            )
        check_prompt_style(self.prompt_style, "GroundingConfig.prompt_style")
        for name in ("max_length", "eval_examples_per_template"):
            if getattr(self, name) < 1:
                raise ValueError(f"GroundingConfig.{name} must be at least 1, got {getattr(self, name)!r}.")
        temporary = self.output_dir is None
        super().__post_init__()
        if temporary:
            self.output_dir = None  # ground() trains in a temporary folder it removes afterwards

    def grounding_templates(self):
        """The `GroundingTemplate`s `templates` names (all of them when it names none)."""
        names = set(self.templates or TEMPLATE_NAMES)
        return tuple(t for t in DEFAULT_TEMPLATES if t.name in names)

    def settings(self) -> dict:
        """What a report records: grounding's own fields and every field that differs from `TrainingArguments`'
        default (JSON-ready; the output folder left out)."""
        base = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
        own = set(GroundingConfig.__annotations__) | set(GTITrainingArguments.__annotations__)
        values = self.to_dict()
        return {
            name: values[name]
            for name in sorted(values)
            if name != "output_dir" and (name in own or values[name] != base.get(name, values[name]))
        }
