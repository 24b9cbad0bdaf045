"""Where a benchmark ran, recorded the same way by every script: date, machine, instruction sets, versions."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import peft
import torch
import transformers

from gti_peft.training.precision import bf16_is_faster

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_instruction_sets() -> list[str]:
    """The CPU's vector / matrix instruction sets that decide CPU training speed (from /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return [f for f in ISA_FLAGS if f in flags]


def run_environment() -> dict:
    capability = torch.backends.cpu.get_cpu_capability()
    limits = {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}
    isa = ", ".join(cpu_instruction_sets()) or "unknown"
    machine = f"{torch.get_num_threads()} CPU threads ({platform.machine()}; {isa}; torch kernels {capability}"
    machine += f"; limited to AVX2 by {', '.join(limits)})" if limits else ")"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "cpu_instruction_sets": cpu_instruction_sets(),
        "isa_limits": limits,
        "torch_cpu_capability": capability,
        "bf16_faster": bf16_is_faster(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
