"""What `import gti_peft` costs and prints: the method only, nothing about optional dependencies.

The resident-memory numbers are measured by benchmarks/import_cost.py; here only what must (not) be loaded.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from gti_peft import _import_notices

# optional or heavy dependencies that only the features using them may import
NOT_ON_IMPORT = [
    "gradio",
    "cornac",
    "trl",
    "datasets",
    "matplotlib",
    "sklearn",
    "vector_quantize_pytorch",
    "k_means_constrained",
    "transformers.trainer",
    "gti_peft.training.grounding",
    "gti_peft.recsys",
    "gti_peft.recipe",
]


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


def test_import_prints_nothing_and_loads_no_optional_dependency():
    result = _fresh(f"import sys, gti_peft; print(sorted(m for m in {NOT_ON_IMPORT!r} if m in sys.modules))")
    assert result.stdout.strip() == "[]"
    assert result.stderr == ""  # bitsandbytes' kernel notice included (it is held until a 4-bit model is used)


def test_public_names_still_resolve_lazily():
    result = _fresh(
        "import gti_peft; print(gti_peft.ground.__module__, gti_peft.save_for_hub.__module__, "
        "gti_peft.GroundingConfig.__module__)"
    )
    assert result.stdout.split() == [
        "gti_peft.training.grounding",
        "gti_peft.sharing.hub",
        "gti_peft.training.grounding_config",
    ]


def test_old_module_paths_import_the_moved_module_with_a_warning():
    code = (
        "import warnings\nwarnings.simplefilter('error')\n"
        "try:\n    import gti_peft.hub\nexcept FutureWarning as w:\n    print(w)"
    )
    assert "gti_peft.sharing.hub" in _fresh(code).stdout
    result = _fresh(
        "import warnings; warnings.simplefilter('ignore'); import gti_peft.hub, gti_peft.sharing.hub as h\n"
        "print(gti_peft.hub is h)"
    )
    assert result.stdout.strip() == "True"


@pytest.fixture
def held_notice(caplog):
    """bitsandbytes' kernel notice, logged while held (as `import gti_peft` holds it); caplog sees what is emitted."""
    _import_notices.hold()
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger(_import_notices.HELD_LOGGERS[0]).warning("Failed to load CPU gemm_4bit_forward (test)")
            yield caplog
    finally:
        _import_notices.stop_holding()


def test_held_notices_are_emitted_once_a_4bit_model_is_in_use(held_notice):
    assert "gemm_4bit_forward" not in held_notice.text
    _import_notices.release()
    assert "gemm_4bit_forward" in held_notice.text
    held_notice.clear()
    _import_notices.release()  # once only
    assert held_notice.text == ""


def test_guarding_a_4bit_model_releases_the_held_notices(held_notice):
    import bitsandbytes as bnb
    from torch import nn

    from gti_peft.compat import guard_cpu_4bit_training

    guard_cpu_4bit_training(nn.Sequential(nn.Linear(8, 8)))  # nothing 4-bit: still held
    assert "gemm_4bit_forward" not in held_notice.text
    assert guard_cpu_4bit_training(nn.Sequential(bnb.nn.Linear4bit(8, 8))) == 1
    assert "gemm_4bit_forward" in held_notice.text
