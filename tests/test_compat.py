"""PEFT upgrades: every private symbol and patch target still looks as gti-peft needs, and the registration stays
valid when PEFT's prefix-uniqueness check compares prefixes (not method names)."""

from __future__ import annotations

import re
from pathlib import Path

import peft
import peft.mapping
import pytest
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
from peft.tuners.tuners_utils import BaseTunerLayer

import gti_peft
from gti_peft import compat
from gti_peft.method.model import GTIModel
from gti_peft.method.peft_type import PEFT_TYPE_GTI

PACKAGE = Path(gti_peft.__file__).parent
# names that only gti_peft/compat.py may use
PRIVATE_NAMES = [
    "_get_submodules",
    "_buffer_dict",
    "_check_target_module_exists",
    "_get_embed_scale",
    "trainable_tokens_delta",
    "_original_forward",
    "_is_accelerate_prepared",
    "extend_enum",
    "support_avx512bf16_for_cpu",
    "packing_format_for_cpu",
]
# patches of PEFT: each only in the module that installs it (its target is checked in compat.PRIVATE_SYMBOLS)
PATCHES = {
    ".from_pretrained = ": "sharing/patches.py",
    ".push_to_hub = ": "sharing/patches.py",
    ".get_peft_model_state_dict = ": "method/registration.py",
}


@pytest.mark.parametrize("symbol", list(compat.PRIVATE_SYMBOLS))
def test_each_private_symbol_and_patch_target_is_as_expected(symbol):
    problem = compat.PRIVATE_SYMBOLS[symbol]()
    assert problem is None, f"{symbol}: {problem} (peft {peft.__version__}); adapt gti_peft/compat.py"


def test_a_changed_symbol_is_reported_by_name(monkeypatch):
    monkeypatch.delattr(BaseTunerLayer, "_get_embed_scale")
    assert compat.PRIVATE_SYMBOLS["peft.tuners.tuners_utils.BaseTunerLayer._get_embed_scale"]() is not None
    monkeypatch.setattr(TrainableTokensLayer, "adapter_layer_names", ("token_deltas",))
    key = f"TrainableTokens state-dict key {compat.TRAINABLE_TOKENS_DELTA_KEY!r}"
    assert "token_deltas" in compat.PRIVATE_SYMBOLS[key]()
    with pytest.raises(ImportError, match=r"`peft\.utils\._no_such_helper`.*peft " + re.escape(peft.__version__)):
        compat._private("peft.utils", "_no_such_helper")


def test_no_module_but_compat_uses_private_names_and_each_patch_lives_in_one_place():
    offenders = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "compat.py"
        for name in PRIVATE_NAMES
        if name in path.read_text()
    }
    offenders |= {
        f"{path.relative_to(PACKAGE)}: {patch}"
        for path in PACKAGE.rglob("*.py")
        for patch, owner in PATCHES.items()
        if patch in path.read_text() and path.relative_to(PACKAGE).as_posix() != owner
    }
    assert offenders == set()
    for patch, owner in PATCHES.items():
        assert patch in (PACKAGE / owner).read_text(), f"{owner} no longer installs `{patch}`: update PATCHES"


class _PrefixesCheckedByValue(dict):
    """PEFT's mapping as a fixed `register_peft_method` would see it: `prefix in mapping` compares prefixes."""

    def __contains__(self, prefix):
        return prefix in self.values()


def test_registration_survives_a_fixed_prefix_uniqueness_check(monkeypatch):
    for mapping in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING"):
        monkeypatch.delitem(getattr(peft.mapping, mapping), PEFT_TYPE_GTI)
    prefixes = {k: v for k, v in peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items() if k != PEFT_TYPE_GTI}
    monkeypatch.setattr(peft.mapping, "PEFT_TYPE_TO_PREFIX_MAPPING", _PrefixesCheckedByValue(prefixes))
    gti_peft.register()
    assert peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE_GTI] is GTIModel
    assert peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE_GTI] == GTIModel.prefix == "gti_"


def test_new_token_parameters_carry_the_registered_prefix(tmp_path):
    from conftest import NEW_IDS, tiny_llama
    from peft import get_peft_model

    model = get_peft_model(tiny_llama(False), gti_peft.GTIConfig(new_token_ids=NEW_IDS, r=2))
    prefix = peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE_GTI]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if prefix in n} == {
        "base_model.model.model.embed_tokens.gti_rows.default",
        "base_model.model.lm_head.gti_rows.default",
    }
    assert all("lora_" in n for n in trainable if prefix not in n)
