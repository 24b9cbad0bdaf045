"""Which precision to train in: bf16 only where this device runs it faster than fp32.

GPUs with bf16 support run it faster. CPUs differ: with AMX or AVX512-bf16 a bf16 matmul is several times faster
than fp32, on AVX2-only CPUs it is over 20x slower. `bf16="auto"` measures it once per process.
"""

from __future__ import annotations

import functools
import time

import torch

AUTO = "auto"


def _matmul_seconds(dtypes: tuple[torch.dtype, ...], size: int = 256, rounds: int = 10) -> list[float]:
    """The fastest of `rounds` matmuls for each dtype, the dtypes taking turns: a busy machine's pauses only ever
    lengthen a run, so the minimum of interleaved runs compares the kernels, not the load."""
    pairs = [(torch.randn(size, size, dtype=d), torch.randn(size, size, dtype=d)) for d in dtypes]
    for a, b in pairs:
        torch.mm(a, b)  # warm-up: first calls pick kernels
    best = [float("inf")] * len(dtypes)
    for _ in range(rounds):
        for i, (a, b) in enumerate(pairs):
            start = time.perf_counter()
            torch.mm(a, b)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


@functools.cache
def bf16_is_faster() -> bool:
    """True where bf16 beats fp32 on this process's device: CUDA with bf16 support, or a CPU whose bf16 matmul is
    measured faster than its fp32 matmul (AMX / AVX512-bf16; not AVX2-only CPUs, nor ONEDNN_MAX_CPU_ISA=AVX2)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    bf16, fp32 = _matmul_seconds((torch.bfloat16, torch.float32))
    return bf16 < 0.8 * fp32


def check_bf16(value, name: str = "bf16") -> None:
    """The one check of a bf16 setting: true, false or "auto" (`name`: where it is set)."""
    if not (isinstance(value, bool) or value == AUTO):
        raise ValueError(f"{name} must be true, false or 'auto', got {value!r}.")


def resolve_bf16(value: bool | str) -> bool:
    """`True` / `False` as given; `"auto"`: `bf16_is_faster()`."""
    check_bf16(value)
    return bf16_is_faster() if value == AUTO else value
