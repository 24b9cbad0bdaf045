"""Sharing: saving adapters atomically, their file format, model cards, Hub pushes, exports and merging."""

from .hub import check_adapter_fits, export_for_peft, push_to_hub, save_for_hub, save_merged, update_card

__all__ = ["check_adapter_fits", "export_for_peft", "push_to_hub", "save_for_hub", "save_merged", "update_card"]
