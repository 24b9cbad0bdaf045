"""Old module paths (before the layered layout) stay importable for one release, with a `FutureWarning`.

`import gti_peft.hub` gives the module `gti_peft.sharing.hub` itself (the same object, so patching either name
patches both) and warns once, naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "gti_peft.config": "gti_peft.method.config",
    "gti_peft.layer": "gti_peft.method.layer",
    "gti_peft.model": "gti_peft.method.model",
    "gti_peft.init": "gti_peft.method.init",
    "gti_peft.tokens": "gti_peft.method.tokens",
    "gti_peft.peft_type": "gti_peft.method.peft_type",
    "gti_peft.registration": "gti_peft.method.registration",
    "gti_peft.grounding": "gti_peft.training.grounding",
    "gti_peft.templates": "gti_peft.training.templates",
    "gti_peft.precision": "gti_peft.training.precision",
    "gti_peft.quantization": "gti_peft.training.quantization",
    "gti_peft.sft": "gti_peft.training.sft",
    "gti_peft.memory": "gti_peft.training.memory",
    "gti_peft.diagnostics": "gti_peft.training.diagnostics",
    "gti_peft.hub": "gti_peft.sharing.hub",
    "gti_peft.model_card": "gti_peft.sharing.model_card",
    "gti_peft.saving": "gti_peft.sharing.saving",
    "gti_peft.train_cli": "gti_peft.cli.train",
    "gti_peft.diagnostics_cli": "gti_peft.cli.diagnostics",
    "gti_peft.recsys.extend_cli": "gti_peft.cli.extend_catalog",
    "gti_peft.offline_assets": "gti_peft.assets.offline",
    "gti_peft.wordnet": "gti_peft.assets.wordnet",
}
"""old module -> new module. (`gti_peft.training` was a module and is now the training package; it still exports
the old module's public names.)"""


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"`{old}` moved to `{new}`; the old path stops working in the next release: import from `{new}`.",
        FutureWarning,
        stacklevel=stacklevel,
    )


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warn_moved(spec.name, MOVED[spec.name], stacklevel=6)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    """Idempotent: let the old paths import as aliases of the new modules."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
