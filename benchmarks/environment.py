"""Where a benchmark ran, recorded the same way by every script: date, machine and library versions."""

from __future__ import annotations

import platform
import time

import peft
import torch
import transformers


def bf16_supported() -> bool:
    """A GPU, or a CPU with AVX512-bf16 / AMX instructions (where bf16 autocast pays off)."""
    return torch.cuda.is_available() or torch.cpu._is_avx512_bf16_supported()


def run_environment() -> dict:
    capability = torch.backends.cpu.get_cpu_capability()
    machine = f"{torch.get_num_threads()} CPU threads ({platform.machine()}, {capability}, bf16: {bf16_supported()})"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
