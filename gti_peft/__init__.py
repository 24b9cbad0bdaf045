"""gti-peft: Grounded Token Initialization (GTI) of new vocabulary, as a PEFT method.

Importing this package registers the method with PEFT (`get_peft_model(model, GTIConfig(...))`). The layers, each
importing only from the ones before it:

    gti_peft.method     GTIConfig, the new-token layers, the tuner, starting rows (registers itself with PEFT)
    gti_peft.training   grounding, the answer-only trainers, precision, 4-bit bases, memory model, diagnostics
    gti_peft.sharing    the adapter format, atomic saving, model cards, Hub pushes, exports, merging
    gti_peft.recsys     semantic IDs, sequence data, the trie, constrained decoding, metrics, catalogs
    gti_peft.recipe     the recipes' pipeline (YAMLs in gti_peft/configs)
    gti_peft.cli        the `gti-peft` command

Everything but the method is imported on first use, so `import gti_peft` costs little more than `import peft`.
"""

from __future__ import annotations

import importlib

from . import _deprecated, _import_notices

_import_notices.hold()  # bitsandbytes' kernel notice, printed only once a 4-bit model is in use
from .method import (  # noqa: E402  (importing peft imports bitsandbytes)
    INIT_METHODS,
    PEFT_TYPE_GTI,
    GTIConfig,
    GTIModel,
    NewTokenEmbedding,
    NewTokenLMHead,
    add_new_tokens,
    description_token_ids,
    new_token_parameters,
    new_token_rows,
)
from .method import register as _register_method  # noqa: E402

_import_notices.stop_holding()


def register() -> None:
    """Idempotent: register the GTI method with PEFT and install the sharing layer's PEFT patches."""
    from .sharing.patches import install_patches

    _register_method()
    install_patches()


register()
_deprecated.install()

__version__ = "0.1.0"

_LAZY = {
    "ground": "gti_peft.training.grounding",
    "GroundingReport": "gti_peft.training.grounding",
    "GroundingConfig": "gti_peft.training.grounding_config",
    "check_adapter_fits": "gti_peft.sharing.hub",
    "export_for_peft": "gti_peft.sharing.hub",
    "push_to_hub": "gti_peft.sharing.hub",
    "save_for_hub": "gti_peft.sharing.hub",
    "save_merged": "gti_peft.sharing.hub",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    moved = f"{__name__}.{name}"
    if moved in _deprecated.MOVED:  # `gti_peft.hub` as an attribute: the moved module, with a warning
        return importlib.import_module(moved)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "INIT_METHODS",
    "PEFT_TYPE_GTI",
    "GTIConfig",
    "GTIModel",
    "GroundingConfig",
    "GroundingReport",
    "NewTokenEmbedding",
    "NewTokenLMHead",
    "add_new_tokens",
    "check_adapter_fits",
    "description_token_ids",
    "export_for_peft",
    "ground",
    "new_token_parameters",
    "new_token_rows",
    "push_to_hub",
    "save_for_hub",
    "save_merged",
]
