"""4-bit (bitsandbytes) loading, and the guard that keeps a CPU 4-bit model trainable after evaluation."""

from __future__ import annotations

import torch

from ..compat import guard_cpu_4bit_training

__all__ = ["bnb_4bit_config", "guard_cpu_4bit_training", "load_4bit_causal_lm"]


def bnb_4bit_config(compute_dtype: torch.dtype = torch.bfloat16, quant_type: str = "nf4", double_quant: bool = True):
    """The QLoRA quantization config (NF4, double quantization)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_4bit_causal_lm(name_or_path: str, compute_dtype: torch.dtype = torch.bfloat16, **kwargs):
    """Load a causal LM in 4 bits, ready for QLoRA (`prepare_model_for_kbit_training`), guarded on CPU."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, quantization_config=bnb_4bit_config(compute_dtype), dtype=compute_dtype, **kwargs
    )
    guard_cpu_4bit_training(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
