"""Training: grounding (only the new rows learn), the answer-only trainers, precision, 4-bit bases, the memory model
and row diagnostics. Names are imported on first use: `import gti_peft` does not load `transformers.Trainer`."""

from __future__ import annotations

import importlib

_NAMES = {
    "ground": "grounding",
    "GroundingReport": "grounding",
    "GroundingConfig": "grounding_config",
    "AnswerOnlyTrainer": "trainer",
    "answer_collator": "trainer",
    "answer_loss": "trainer",
    "answer_logits_and_targets": "trainer",
    "copy_trained_parameters": "fsdp",
    "is_fsdp_sharded": "fsdp",
    "estimate_training_memory": "memory",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
