"""bf16 'auto': bf16 only where this device runs it faster than fp32."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gti_peft.training.precision import bf16_is_faster, resolve_bf16


def test_explicit_values_pass_through_and_auto_is_a_bool():
    assert resolve_bf16(True) is True and resolve_bf16(False) is False
    assert resolve_bf16("auto") is bf16_is_faster()
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto', got 'yes'"):
        resolve_bf16("yes")


def test_an_avx2_only_cpu_trains_in_fp32():
    """With the CPU limited to AVX2 (no AVX512-bf16, no AMX), a bf16 matmul is slower: auto picks fp32."""
    env = os.environ | {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    code = "from gti_peft.training.precision import bf16_is_faster; print(bf16_is_faster())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
