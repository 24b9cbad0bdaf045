"""Registers GTI with PEFT so `get_peft_model`, `PeftModel.from_pretrained` and friends know it.

GTI registers its own prefix, `gti_` (`GTIModel.prefix`), the prefix of the new-token parameters (`gti_rows`,
`gti_bias`); the LoRA weights keep LoRA's names (`lora_A`, `lora_B`). PEFT >= 0.21 finds adapter parameters
structurally (tuner layers), not by prefix, when it saves, loads and marks them trainable, so both kinds are saved
and trained. Registering LoRA's own "lora_" only passed because PEFT's uniqueness check compared the prefix with
the method names instead of the registered prefixes.
"""

from __future__ import annotations

import functools

import peft
import peft.peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

from .config import GTIConfig
from .model import GTIModel
from .peft_type import PEFT_TYPE_GTI


def _never_save_full_embeddings(get_state_dict):
    """PEFT's `save_embedding_layers="auto"` saves the WHOLE embedding and LM head once the vocabulary was
    resized. A GTI adapter already holds the new rows, so for GTI "auto" means False (True is still honoured)."""

    @functools.wraps(get_state_dict)
    def wrapper(model, *args, save_embedding_layers="auto", **kwargs):
        adapter_name = kwargs.get("adapter_name", args[1] if len(args) > 1 else "default")
        config = model.peft_config.get(adapter_name) if hasattr(model, "peft_config") else None
        if save_embedding_layers == "auto" and config is not None and config.peft_type == PEFT_TYPE_GTI:
            save_embedding_layers = False
        return get_state_dict(model, *args, save_embedding_layers=save_embedding_layers, **kwargs)

    wrapper.__gti_wrapped__ = True
    return wrapper


def register() -> None:
    """Idempotent: register GTI's config and tuner, and wrap `get_peft_model_state_dict` (as `peft.peft_model`
    and accelerate's FSDP checkpoints call it) so a GTI adapter never saves the full embedding matrices."""
    if PEFT_TYPE_GTI not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="gti", config_cls=GTIConfig, model_cls=GTIModel, prefix=GTIModel.prefix)
    for module in (peft.peft_model, peft):
        if not getattr(module.get_peft_model_state_dict, "__gti_wrapped__", False):
            module.get_peft_model_state_dict = _never_save_full_embeddings(module.get_peft_model_state_dict)
