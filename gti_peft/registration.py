"""Registers GTI with PEFT so `get_peft_model`, `PeftModel.from_pretrained` and friends know it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import peft
import peft.peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

from .config import GTIConfig
from .hub import check_adapter_fits, guard_push_to_hub
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


def _check_fit_first(from_pretrained):
    """`PeftModel.from_pretrained(base, local_gti_folder)` first checks that the adapter fits the base (complete
    files, hidden size, LoRA shapes, vocabulary), instead of a shape dump or a silent load onto another vocabulary."""
    func = from_pretrained.__func__

    @functools.wraps(func)
    def wrapper(cls, model, model_id, *args, **kwargs):
        folder = Path(str(model_id)) / kwargs.get("subfolder", "")
        if (folder / "adapter_config.json").is_file() and kwargs.get("config") is None:
            try:
                is_gti = json.loads((folder / "adapter_config.json").read_text()).get("peft_type") == "GTI"
            except ValueError:
                is_gti = True  # check_adapter_fits names the corrupt file
            if is_gti:
                check_adapter_fits(model, folder)
        return func(cls, model, model_id, *args, **kwargs)

    wrapper.__gti_wrapped__ = True
    return classmethod(wrapper)


def register() -> None:
    """Idempotent: safe to call from several imports."""
    if PEFT_TYPE_GTI not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="gti", config_cls=GTIConfig, model_cls=GTIModel, prefix="lora_")
    # PeftModel.save_pretrained reads it from peft.peft_model; accelerate's FSDP checkpoints from `peft`
    for module in (peft.peft_model, peft):
        if not getattr(module.get_peft_model_state_dict, "__gti_wrapped__", False):
            module.get_peft_model_state_dict = _never_save_full_embeddings(module.get_peft_model_state_dict)
    model_cls = peft.peft_model.PeftModel
    if not getattr(model_cls.push_to_hub, "__gti_wrapped__", False):
        model_cls.push_to_hub = guard_push_to_hub(model_cls.push_to_hub)
    if not getattr(model_cls.from_pretrained, "__gti_wrapped__", False):
        model_cls.from_pretrained = _check_fit_first(model_cls.from_pretrained)
