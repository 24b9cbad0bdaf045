"""The recipe's model: the base (4-bit when asked) with a fresh GTI adapter, or the latest saved stage's adapter."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..assets import offline as offline_assets
from ..method.tokens import add_new_tokens
from ..recsys import SemanticIDs
from ..training.quantization import guard_cpu_4bit_training, load_4bit_causal_lm
from .config import RecipeConfig
from .data import RecData, code_descriptions
from .parsing import adapter_for


def load_base(config: RecipeConfig):
    """The recipe's base model (4-bit when asked) and its resolved path."""
    path = offline_assets.resolve(config.model.name_or_path)
    if config.model.load_in_4bit:
        model = load_4bit_causal_lm(path, compute_dtype=getattr(torch, config.model.dtype))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, config.model.dtype))
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return path, model


def _fresh_adapter(config: RecipeConfig, base, tokenizer, sids: SemanticIDs, data: RecData):
    rows = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer of {config.model.name_or_path!r} has {len(tokenizer)} tokens but the model has "
            f"{rows} embedding rows: they do not belong together. Load both from the same model."
        )
    ids = add_new_tokens(tokenizer, sids.vocabulary())
    descriptions = None
    if config.adapter.init == "description":
        descriptions = code_descriptions(tokenizer, sids, data, config.semantic_ids.description_items_per_token)
    return get_peft_model(base, adapter_for(config.adapter, ids, descriptions))


def build_model(config: RecipeConfig, sids: SemanticIDs, data: RecData, resume_from: Path | None):
    """The base + GTI adapter: a fresh one, or the adapter saved in `resume_from` (a stage's folder)."""
    path, base = load_base(config)
    if resume_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(resume_from)
        model = PeftModel.from_pretrained(base, resume_from, is_trainable=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _fresh_adapter(config, base, tokenizer, sids, data)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    guard_cpu_4bit_training(model)
    return tokenizer, model
