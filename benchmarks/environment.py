"""Where a benchmark ran: kept for the scripts that import it by this name; the code lives in common.py."""

from common import ISA_FLAGS, ISA_LIMITS, cpu_instruction_sets, run_environment

__all__ = ["ISA_FLAGS", "ISA_LIMITS", "cpu_instruction_sets", "run_environment"]
