"""What the one pipeline (`pipeline.run_pipeline`) asks of a recipe's task: its data, model, stage data, evaluation.

A task is built from its config and prepares everything that can fail before any weights load (`prepare`). The
pipeline owns the rest: the output folder and its `recipe.yaml`, the memory check, resuming from the last saved
stage, the named training stages (`pipeline.TRAINING_STAGES`), the geometry diagnostics and the timings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from accelerate import PartialState


class Task(ABC):
    """A recipe's task. `config` has the sections model, data, adapter, grounding, finetune, evaluation, output."""

    name: str  # the recipe YAML's `task:` key

    def __init__(self, config):
        self.config = config

    @abstractmethod
    def prepare(self, out: Path, state: PartialState) -> None:
        """Load the data and build what the model needs (e.g. semantic IDs); every data error surfaces here."""

    @abstractmethod
    def new_tokens(self) -> list[str]:
        """The tokens the adapter adds (the memory check counts them)."""

    @abstractmethod
    def build_model(self, resume_from: Path | None):
        """`(tokenizer, model)`: the base + a fresh GTI adapter, or the adapter saved in `resume_from`."""

    def reference(self, model, tokenizer):
        """Vectors the new rows are compared with (RSA diagnostic), lined up with the first new tokens; or None."""
        return None

    @abstractmethod
    def grounding_pairs(self) -> list[dict]:
        """The (tokens, text) pairs grounding trains on."""

    @abstractmethod
    def finetune_dataset(self, tokenizer):
        """The fine-tuning rows: `input_ids`, `labels` (-100 where no loss), `attention_mask`."""

    def saved_with_adapter(self, out: Path) -> list[Path]:
        """Files saved beside each stage's adapter (e.g. what `Recommender` needs to load it)."""
        return []

    @abstractmethod
    def evaluate(self, model, tokenizer) -> dict:
        """What the run measured: at least `{"metrics": ...}`."""

    def write_results(self, model, tokenizer, results: dict, out: Path) -> None:
        """Write the run's results under `out` (main process only)."""
        import json

        (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))

    def summary(self, results: dict) -> str | None:
        """The run's closing lines, printed when it ends (None: nothing)."""
        return None
