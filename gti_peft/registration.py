"""Registers GTI with PEFT so `get_peft_model`, `PeftModel.from_pretrained` and friends know it.

GTI registers its own prefix, `gti_` (`GTIModel.prefix`), the prefix of the new-token parameters (`gti_rows`,
`gti_bias`); the LoRA weights keep LoRA's names (`lora_A`, `lora_B`). PEFT >= 0.21 finds adapter parameters
structurally (tuner layers), not by prefix, when it saves, loads and marks them trainable, so both kinds are saved
and trained. Registering LoRA's own "lora_" only passed because PEFT's uniqueness check compared the prefix with
the method names instead of the registered prefixes.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

from .compat import install_patches
from .config import GTIConfig
from .model import GTIModel
from .peft_type import PEFT_TYPE_GTI


def register() -> None:
    """Idempotent: safe to call from several imports."""
    if PEFT_TYPE_GTI not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="gti", config_cls=GTIConfig, model_cls=GTIModel, prefix=GTIModel.prefix)
    install_patches()
