"""Adds GTI to PEFT's closed `PeftType` enum (peft 0.21 has no plugin hook for new method names)."""

from __future__ import annotations

from aenum import extend_enum
from peft.utils import PeftType

if "GTI" not in PeftType.__members__:
    extend_enum(PeftType, "GTI", "GTI")

PEFT_TYPE_GTI = PeftType["GTI"]
