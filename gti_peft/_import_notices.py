"""bitsandbytes' import-time notice about its optional CPU 4-bit kernel, held back until a 4-bit model is in use.

Importing peft imports bitsandbytes, which on CPUs with AVX512-bf16 tries to fetch a faster 4-bit kernel from the
Hub and logs "Failed to load CPU gemm_4bit_forward from kernels-community ..." (plus a `kernels` line) when it
cannot: a failure message about something a run that never loads a 4-bit model did not ask for. `import gti_peft`
holds those records while it imports peft; `release()` emits them once a 4-bit model is in use.
"""

from __future__ import annotations

import logging

HELD_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


class _Hold(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


_held = _Hold()


def hold() -> None:
    """Start holding the notices (idempotent)."""
    for name in HELD_LOGGERS:
        logger = logging.getLogger(name)
        if _held not in logger.filters:
            logger.addFilter(_held)


def stop_holding() -> None:
    """Stop holding: later records print as usual; what was held stays held until `release()`."""
    for name in HELD_LOGGERS:
        logging.getLogger(name).removeFilter(_held)


def release() -> None:
    """A 4-bit model is in use: emit the held notices, once."""
    stop_holding()
    records, _held.records = _held.records, []
    for record in records:
        logging.getLogger(record.name).handle(record)
