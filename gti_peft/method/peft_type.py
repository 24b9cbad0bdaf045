"""Adds GTI to PEFT's closed `PeftType` enum (PEFT has no plugin hook for new method names)."""

from __future__ import annotations

from ..compat import extend_peft_type

PEFT_TYPE_GTI = extend_peft_type("GTI")
