"""4-bit (bitsandbytes) loading, and the guard that keeps a CPU 4-bit model trainable after evaluation."""

from __future__ import annotations

import torch
from torch import nn


def bnb_4bit_config(compute_dtype: torch.dtype = torch.bfloat16, quant_type: str = "nf4", double_quant: bool = True):
    """The QLoRA quantization config (NF4, double quantization)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def guard_cpu_4bit_training(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; return how many layers were guarded.

    On CPUs with avx512_bf16, the first eval-mode forward without grad repacks every `Linear4bit` irreversibly
    and later training silently gets no LoRA gradients. Call this before any evaluation of a 4-bit model that
    will be trained again (the recipe and `ground` do). A no-op for models without 4-bit layers.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def load_4bit_causal_lm(name_or_path: str, compute_dtype: torch.dtype = torch.bfloat16, **kwargs):
    """Load a causal LM in 4 bits, ready for QLoRA (`prepare_model_for_kbit_training`), guarded on CPU."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, quantization_config=bnb_4bit_config(compute_dtype), dtype=compute_dtype, **kwargs
    )
    guard_cpu_4bit_training(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
