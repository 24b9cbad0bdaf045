"""Before the model is loaded: predict the recipe's training peak, print it, and refuse what cannot fit."""

from __future__ import annotations

import warnings

from ..assets import offline as offline_assets
from ..training.memory import GB, MemoryEstimate, device_memory, estimate_training_memory
from .config import RecipeConfig

ANSWER_TOKENS = 32  # labelled tokens per example assumed for the logits (semantic IDs, titles, descriptions)


def recipe_memory_estimate(config: RecipeConfig, model_config, n_new_tokens: int) -> MemoryEstimate | None:
    """The predicted peak of the recipe's largest training stage, or None if no training stage runs."""
    stages = [
        args
        for name, args in (("ground", config.grounding), ("finetune", config.finetune))
        if name in config.output.stages and args.max_steps > 0
    ]
    if not stages:
        return None
    batch = max(args.per_device_train_batch_size for args in stages)
    return estimate_training_memory(
        model_config,
        n_new_tokens=n_new_tokens,
        batch_size=batch,
        seq_len=config.data.max_length,
        answer_tokens=batch * ANSWER_TOKENS,
        dtype=config.model.dtype,
        load_in_4bit=config.model.load_in_4bit,
        lora_r=config.adapter.r,
        lora_dropout=config.adapter.lora_dropout,
        target_modules=config.adapter.target_modules,
        gradient_checkpointing=config.model.gradient_checkpointing,
    )


def check_recipe_memory(config: RecipeConfig, n_new_tokens: int, device=None) -> MemoryEstimate | None:
    """Print "expected peak X GB on <device>, Y GB available"; refuse a prediction above the device's memory.

    Reads only the model's config (no weights). A config or device that cannot be read gives a warning and no
    check. `model.ignore_memory_check: true` turns the refusal into a warning.
    """
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(offline_assets.resolve(config.model.name_or_path))
    except (OSError, ValueError, ModuleNotFoundError) as error:
        warnings.warn(
            f"No memory check: the config of {config.model.name_or_path!r} could not be read ({error}).", stacklevel=2
        )
        return None
    estimate = recipe_memory_estimate(config, model_config, n_new_tokens)
    if estimate is None:
        return None
    found = device_memory(device)
    if found is None:
        print(f"expected peak {estimate.total / GB:.1f} GB (device memory unknown)", flush=True)
        return estimate
    name, available = found
    print(f"expected peak {estimate.total / GB:.1f} GB on {name}, {available / GB:.1f} GB available", flush=True)
    if estimate.total > available:
        settings = estimate.settings
        message = (
            f"The recipe's training is predicted to need {estimate.total / GB:.1f} GB at its peak but {name} has "
            f"{available / GB:.1f} GB available (predicted parts:\n{estimate.format()}\n). Lower the batch size "
            f"(grounding/finetune.per_device_train_batch_size={settings['batch_size']}, raise "
            "gradient_accumulation_steps to keep the effective batch), the sequence length "
            f"(data.max_length={settings['seq_len']}), turn on "
            f"model.gradient_checkpointing (now {config.model.gradient_checkpointing}) or 4-bit loading "
            f"(model.load_in_4bit, now {config.model.load_in_4bit}); or set model.ignore_memory_check=true to run "
            "anyway."
        )
        if not config.model.ignore_memory_check:
            raise ValueError(message)
        warnings.warn(message + " Running anyway: model.ignore_memory_check=true.", stacklevel=2)
    return estimate
