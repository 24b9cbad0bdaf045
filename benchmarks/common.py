"""What every benchmark shares: where results live, writing one with its run environment, loading one, the names
the tables give the arms, and one writer per results file.

Benchmarks run as scripts (`.venv/bin/python benchmarks/<name>.py`), so this folder is on `sys.path` and they
import each other by name (`from common import write_result`). Measuring scripts write JSON here; the render_*
scripts read it and write tables and plots. Nothing heavy is imported until a function needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUTPUTS = ROOT / "outputs" / "benchmarks"  # the benchmarks' training runs (not committed)

# quality.py's arms as the tables name them (the headline spells two of them out; see headline.py)
ARM_LABELS = {
    "gti_mean": "GTI",
    "gti_mix": "GTI + continual grounding",
    "mean": "mean start",
    "mean_compute_matched": "compute-matched mean",
}
CLASSICAL_LABELS = {"SASRec": "SASRec (cornac)", "BPR": "BPR (cornac)", "popularity": "popularity"}

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def result_path(name: str) -> Path:
    """`benchmarks/results/<name>.json`."""
    return RESULTS / f"{name}.json"


def load_result(name: str | Path) -> dict | None:
    """A result by name (`"speed"`: benchmarks/results/speed.json) or path; None where that benchmark has not run."""
    path = name if isinstance(name, Path) else result_path(name)
    return json.loads(path.read_text()) if path.exists() else None


def write_result(path: str | Path, result: dict, environment: bool = True) -> Path:
    """Write `result` as indented JSON, atomically (a reader never sees half a file), after this run's environment
    (`run_environment()`: date, machine, instruction sets, versions), which replaces any older one in `result` (a
    file that later runs update in parts records the latest). `environment=False`: `result` as it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = result
    if environment:
        record = run_environment()
        record |= {k: v for k, v in result.items() if k not in record}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(partial, path)
    return path


@contextlib.contextmanager
def sole_writer(path: str | Path) -> Iterator[None]:
    """Hold `path`'s lock for the block: a second process writing the same results file stops at once with an
    error instead of overwriting the first one's runs. The lock goes with the process (killed ones included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another process is writing {path}: wait for it to finish, or pass another results path."
            ) from None
        yield


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
    """Where a benchmark ran, recorded the same way by every script: date, machine, instruction sets, versions."""
    import peft
    import torch
    import transformers

    from gti_peft.training.precision import bf16_is_faster

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
