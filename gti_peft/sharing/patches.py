"""PEFT patches of the sharing layer, installed once by `install_patches` (on `import gti_peft`).

`PeftModel.from_pretrained(base, local_gti_folder)` first checks that the adapter fits the base, and
`PeftModel.push_to_hub` sends GTI adapters through `gti_peft.push_to_hub`. The targets are checked in
`gti_peft.compat.PRIVATE_SYMBOLS`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import peft.peft_model

from ..method.peft_type import PEFT_TYPE_GTI
from . import hub
from .adapter_format import CONFIG_NAME, is_gti_config, read_config


def _check_fit_first(from_pretrained):
    """Check files, hidden size, LoRA shapes and vocabulary of a local GTI folder before PEFT loads it, instead of
    a shape dump or a silent load onto another vocabulary."""
    func = from_pretrained.__func__

    @functools.wraps(func)
    def wrapper(cls, model, model_id, *args, **kwargs):
        folder = Path(str(model_id)) / kwargs.get("subfolder", "")
        if (folder / CONFIG_NAME).is_file() and kwargs.get("config") is None:
            try:
                is_gti = is_gti_config(read_config(folder))
            except ValueError:
                is_gti = True  # check_adapter_fits names the corrupt file
            if is_gti:
                hub.check_adapter_fits(model, folder)
        return func(cls, model, model_id, *args, **kwargs)

    wrapper.__gti_wrapped__ = True
    return classmethod(wrapper)


def _push_gti_through_gti_peft(push):
    """`PeftModel.push_to_hub` sends no tokenizer and a generic card: GTI adapters go through `push_to_hub`, so
    `model.push_to_hub(repo_id, tokenizer=tokenizer, ...)` takes `gti_peft.push_to_hub`'s options."""

    @functools.wraps(push)
    def wrapper(self, repo_id: str, *args, tokenizer=None, **kwargs):
        config = self.peft_config.get(self.active_adapter)
        if config is None or config.peft_type != PEFT_TYPE_GTI:
            return push(self, repo_id, *args, **kwargs)
        unsupported = sorted(set(kwargs) - hub.PUSH_OPTIONS) + (["positional arguments"] if args else [])
        if tokenizer is None or unsupported:
            raise TypeError(
                f"`push_to_hub` of a GTI adapter needs `tokenizer=` (the tokenizer with the new tokens) and takes "
                f"only {sorted(hub.PUSH_OPTIONS)} as keywords (got unsupported {unsupported}): call "
                "`gti_peft.push_to_hub(model, tokenizer, repo_id, ...)`."
            )
        return hub.push_to_hub(self, tokenizer, repo_id, **kwargs)

    wrapper.__gti_wrapped__ = True
    return wrapper


def install_patches() -> None:
    """Idempotent: wrap `PeftModel.push_to_hub` and `PeftModel.from_pretrained`."""
    model_cls = peft.peft_model.PeftModel
    if not getattr(model_cls.push_to_hub, "__gti_wrapped__", False):
        model_cls.push_to_hub = _push_gti_through_gti_peft(model_cls.push_to_hub)
    if not getattr(model_cls.from_pretrained, "__gti_wrapped__", False):
        model_cls.from_pretrained = _check_fit_first(model_cls.from_pretrained)
