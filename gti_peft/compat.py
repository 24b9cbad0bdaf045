"""Every private PEFT / accelerate name gti-peft relies on, and every patch target, as a checked list.

The bottom layer: it imports nothing of gti-peft but `_import_notices`. Nothing else in gti-peft imports a private
name of PEFT, transformers, accelerate or bitsandbytes. The patches themselves live where they are installed
(`gti_peft.method.registration`, `gti_peft.sharing.patches`); their targets are checked here. Each entry of
`PRIVATE_SYMBOLS` says what is used and checks that the installed version still has it in the form gti-peft needs;
`tests/test_compat.py` runs every check, so an upgrade that moves or changes one fails naming it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable

import peft
import peft.peft_model
from aenum import extend_enum
from peft.utils import PeftType

from . import _import_notices

SUPPORTED_PEFT = ">=0.21,<0.22"  # keep in step with pyproject.toml; the matrix in docs/compatibility.md

# PEFT's TrainableTokens: `TrainableTokensWrapper.token_adapter` (a TrainableTokensLayer) holds the new rows in
# `trainable_tokens_delta`; `export_for_peft` writes adapters in that format.
TRAINABLE_TOKENS_DELTA_KEY = "token_adapter.trainable_tokens_delta"

# accelerate: `Accelerator.prepare_model` with mixed precision keeps the unwrapped forward under this instance
# attribute and marks the model with the flag (`release_from_accelerate` undoes both).
ACCELERATE_ORIGINAL_FORWARD = "_original_forward"
ACCELERATE_PREPARED_FLAG = "_is_accelerate_prepared"

# bitsandbytes: on a CPU with avx512_bf16, `Linear4bit.forward` in eval mode without grad repacks the weight for CPU
# inference (irreversibly; the quant state then carries the packed flag) unless the layer's repack flag is False.
# Training a repacked layer silently gets wrong (often zero) gradients: LoRA stops learning.
BNB_CPU_REPACK_FLAG = "support_avx512bf16_for_cpu"
BNB_CPU_PACKED_FLAG = "packing_format_for_cpu"


def _private(module: str, name: str):
    """Import `module.name`, or fail naming it and the PEFT versions gti-peft supports."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(
            f"gti-peft uses `{module}.{name}`, which the installed peft {peft.__version__} lacks: install a "
            f"supported version (`pip install 'peft{SUPPORTED_PEFT}'`)."
        ) from error


BufferDict = _private("peft.tuners._buffer_dict", "BufferDict")
"""PEFT's per-adapter dict of tensors (buffers), used for the new ids and the id -> row maps."""

get_submodules = _private("peft.utils", "_get_submodules")
"""`(parent, target, target_name)` of a dotted module name."""

check_target_module_exists = _private("peft.tuners.tuners_utils", "check_target_module_exists")
"""Whether a module name matches a config's `target_modules` (and is not excluded)."""


def embed_scale(layer):
    """The `embed_scale` of a tuner layer's base embedding (Gemma's scaled embeddings), or None."""
    return layer._get_embed_scale()


def extend_peft_type(name: str):
    """Add `name` to PEFT's closed `PeftType` enum (PEFT has no plugin hook for new method names); idempotent."""
    if name not in PeftType.__members__:
        extend_enum(PeftType, name, name)
    return PeftType[name]


def _linear_4bit_layers(model) -> list[tuple[str, object]]:
    """`(name, layer)` of every bitsandbytes `Linear4bit` in `model`; bitsandbytes is never imported here (a model
    with 4-bit layers has imported it already)."""
    if "bitsandbytes" not in sys.modules:
        return []
    from bitsandbytes.nn import Linear4bit

    return [(name, module) for name, module in model.named_modules() if isinstance(module, Linear4bit)]


def guard_cpu_4bit_training(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; return how many layers were guarded.

    On CPUs with avx512_bf16, the first eval-mode forward without grad repacks every `Linear4bit` irreversibly and
    later training silently gets wrong LoRA gradients. GTI guards every 4-bit base it is injected into
    (`get_peft_model`, `PeftModel.from_pretrained`); the recipe's 4-bit loader and `ground` call it too. A no-op
    for models without 4-bit layers.
    """
    layers = _linear_4bit_layers(model)
    for _, layer in layers:
        setattr(layer, BNB_CPU_REPACK_FLAG, False)
    if layers:  # a 4-bit model is in use: bitsandbytes' import-time kernel notice now concerns the user
        _import_notices.release()
    return len(layers)


def cpu_packed_4bit_layers(model) -> list[str]:
    """Names of the `Linear4bit` layers of `model` that bitsandbytes already repacked for CPU inference."""
    return [
        name
        for name, layer in _linear_4bit_layers(model)
        if getattr(getattr(layer.weight, "quant_state", None), BNB_CPU_PACKED_FLAG, False)
    ]


def prepared_by_accelerate(model) -> bool:
    """Whether `accelerate` already prepared `model` (a later `prepare` then leaves it as it is)."""
    return getattr(model, ACCELERATE_PREPARED_FLAG, False)


def release_from_accelerate(model) -> None:
    """Undo what `accelerate` did to `model` in place when a Trainer prepared it.

    A prepared model keeps its first Trainer's mixed-precision forward (`bf16=True` wraps `forward` in autocast)
    and a flag that makes every later `prepare` skip it: a second Trainer's `bf16` setting is silently ignored.
    """
    original = model.__dict__.pop(ACCELERATE_ORIGINAL_FORWARD, None)
    if original is not None:
        if getattr(original, "__func__", None) is type(model).forward:
            model.__dict__.pop("forward", None)  # back to the class's forward
        else:
            model.forward = original
    model.__dict__.pop(ACCELERATE_PREPARED_FLAG, None)


# ---------------------------------------------------------------------------------------------------------------
# What each private symbol / patch target must look like. A check returns None when fine, else what changed.


def _needs_parameters(func, *names: str) -> str | None:
    params = inspect.signature(inspect.unwrap(func)).parameters
    missing = [n for n in names if n not in params]
    return f"has no parameter(s) {missing} (signature {list(params)})" if missing else None


def _check_buffer_dict() -> str | None:
    import torch

    holder = BufferDict(persistent=False)
    holder["a"] = torch.zeros(1)
    return None if "a" in holder and holder["a"].shape == (1,) else "no longer stores tensors by adapter name"


def _check_get_submodules() -> str | None:
    from torch import nn

    model = nn.Sequential(nn.Sequential(nn.Linear(1, 1)))
    parent, target, name = get_submodules(model, "0.0")
    return None if (parent is model[0] and target is model[0][0] and name == "0") else "returns something else"


def _check_target_matching() -> str | None:
    from peft import LoraConfig

    config = LoraConfig(target_modules=["q_proj"])
    if not check_target_module_exists(config, "model.layers.0.q_proj"):
        return "no longer matches `target_modules` names"
    return "matches a name that is not targeted" if check_target_module_exists(config, "model.v_proj") else None


def _check_embed_scale() -> str | None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return None if callable(getattr(BaseTunerLayer, "_get_embed_scale", None)) else "BaseTunerLayer lacks it"


def _check_trainable_tokens_key() -> str | None:
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from peft.utils.other import TrainableTokensWrapper

    layer_attr, delta = TRAINABLE_TOKENS_DELTA_KEY.split(".")
    if delta not in TrainableTokensLayer.adapter_layer_names:
        return f"TrainableTokensLayer.adapter_layer_names is {TrainableTokensLayer.adapter_layer_names}"
    source = inspect.getsource(TrainableTokensWrapper)
    return None if f"self.{layer_attr} = " in source else f"TrainableTokensWrapper no longer sets `{layer_attr}`"


def _check_accelerate_forward() -> str | None:
    from accelerate import Accelerator

    source = inspect.getsource(Accelerator.prepare_model)
    missing = [n for n in (ACCELERATE_ORIGINAL_FORWARD, ACCELERATE_PREPARED_FLAG) if n not in source]
    return f"Accelerator.prepare_model no longer sets {missing}" if missing else None


def _check_bnb_cpu_repack() -> str | None:
    from bitsandbytes.nn import Linear4bit

    if not hasattr(Linear4bit(64, 32), BNB_CPU_REPACK_FLAG):
        return f"Linear4bit no longer sets `{BNB_CPU_REPACK_FLAG}`"
    source = inspect.getsource(Linear4bit.forward)
    missing = [n for n in (BNB_CPU_REPACK_FLAG, BNB_CPU_PACKED_FLAG) if n not in source]
    return f"Linear4bit.forward no longer reads {missing}" if missing else None


def _check_state_dict_target() -> str | None:
    source = inspect.getsource(peft.peft_model.PeftModel.save_pretrained)
    if "get_peft_model_state_dict(" not in source:
        return "PeftModel.save_pretrained no longer calls the module-level get_peft_model_state_dict"
    return _needs_parameters(peft.peft_model.get_peft_model_state_dict, "save_embedding_layers")


def _check_from_pretrained_target() -> str | None:
    func = inspect.unwrap(peft.peft_model.PeftModel.from_pretrained.__func__)
    params = list(inspect.signature(inspect.unwrap(func)).parameters)
    if params[:3] != ["cls", "model", "model_id"]:
        return f"signature starts {params[:3]}, not (cls, model, model_id)"
    return _needs_parameters(func, "config", "is_trainable")


def _check_push_to_hub_target() -> str | None:
    params = list(inspect.signature(inspect.unwrap(peft.peft_model.PeftModel.push_to_hub)).parameters)
    return None if params[:2] == ["self", "repo_id"] else f"signature starts {params[:2]}, not (self, repo_id)"


def _check_peft_type_extension() -> str | None:
    return None if PeftType["GTI"].value == "GTI" else "PeftType.GTI is not the string 'GTI'"


def _check_tuner_overrides() -> str | None:
    """GTIModel / NewTokenLayer override these and call them with these arguments."""
    from peft import LoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    needed = {
        "LoraModel.inject_adapter": (LoraModel.inject_adapter, "autocast_adapter_dtype", "low_cpu_mem_usage"),
        "LoraModel.set_adapter": (LoraModel.set_adapter, "adapter_name", "inference_mode"),
        "LoraModel.delete_adapter": (LoraModel.delete_adapter, "adapter_name"),
        "LoraModel.merge_adapter": (LoraModel.merge_adapter, "adapter_names", "safe_merge"),
        "LoraModel.merge_and_unload": (LoraModel.merge_and_unload, "progressbar", "safe_merge", "adapter_names"),
        "BaseTunerLayer.set_adapter": (BaseTunerLayer.set_adapter, "adapter_names", "inference_mode"),
    }
    for name, (func, *params) in needed.items():
        problem = _needs_parameters(func, *params)
        if problem:
            return f"{name} {problem}"
    return None


PRIVATE_SYMBOLS: dict[str, Callable[[], str | None]] = {
    "peft.tuners._buffer_dict.BufferDict": _check_buffer_dict,
    "peft.utils._get_submodules": _check_get_submodules,
    "peft.tuners.tuners_utils.check_target_module_exists": _check_target_matching,
    "peft.tuners.tuners_utils.BaseTunerLayer._get_embed_scale": _check_embed_scale,
    f"TrainableTokens state-dict key {TRAINABLE_TOKENS_DELTA_KEY!r}": _check_trainable_tokens_key,
    f"accelerate Accelerator.prepare_model's {ACCELERATE_ORIGINAL_FORWARD!r}": _check_accelerate_forward,
    f"bitsandbytes Linear4bit.{BNB_CPU_REPACK_FLAG} (CPU repacking)": _check_bnb_cpu_repack,
    "patch target peft.peft_model.get_peft_model_state_dict": _check_state_dict_target,
    "patch target peft.PeftModel.from_pretrained": _check_from_pretrained_target,
    "patch target peft.PeftModel.push_to_hub": _check_push_to_hub_target,
    "patch target peft.utils.PeftType (aenum.extend_enum)": _check_peft_type_extension,
    "override targets peft.LoraModel.{inject_adapter,set_adapter,...}": _check_tuner_overrides,
}
