"""The GTI adapter folder's format, in one place: its file names, the sizes recorded in the weights' metadata, the
vocabulary resize rule, and reading an adapter's config and tensors with clear errors.

A folder written by `save_for_hub` (or the recipe) holds:

- `adapter_config.json`: PEFT's config, a `GTIConfig` (`peft_type` "GTI", `new_token_ids`, `base_vocab_size`,
  `vocab_size`, ...);
- `adapter_model.safetensors`: the LoRA weights and the new tokens' rows (`*.gti_rows`, and `*.gti_bias` for a head
  with a bias), with the sizes the adapter expects in its metadata (`gti_vocab_size`, `gti_hidden_size`,
  `gti_base_vocab_size`), read by `check_adapter_fits`;
- the tokenizer's files (`tokenizer.save_pretrained`), holding the new tokens;
- `semantic_ids.safetensors` (recommendation adapters): the items' semantic IDs and codebooks;
- `README.md`: the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..method.model import vocabulary_size_for
from ..method.peft_type import PEFT_TYPE_GTI

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SEMANTIC_IDS_NAME = "semantic_ids.safetensors"
CARD_NAME = "README.md"
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
"""What makes a folder an adapter folder."""

VOCAB_SIZE_KEY = "gti_vocab_size"  # embedding rows of the base with the adapter's new tokens
HIDDEN_SIZE_KEY = "gti_hidden_size"
BASE_VOCAB_SIZE_KEY = "gti_base_vocab_size"  # rows before GTI resized the base (only where it did)
ROWS_SUFFIX, BIAS_SUFFIX = ".gti_rows", ".gti_bias"
ROW_SUFFIXES = (ROWS_SUFFIX, BIAS_SUFFIX)
"""The weights' keys of the new tokens' rows and bias entries (one per new id, in `new_token_ids` order)."""

__all__ = [
    "ADAPTER_FILES",
    "BASE_VOCAB_SIZE_KEY",
    "BIAS_SUFFIX",
    "CARD_NAME",
    "CONFIG_NAME",
    "HIDDEN_SIZE_KEY",
    "ROWS_SUFFIX",
    "ROW_SUFFIXES",
    "SEMANTIC_IDS_NAME",
    "VOCAB_SIZE_KEY",
    "WEIGHTS_NAME",
    "add_new_token_ids",
    "is_adapter_folder",
    "is_gti_config",
    "read_adapter",
    "read_config",
    "read_weights",
    "size_metadata",
    "vocabulary_size_for",
    "write_config",
    "write_weights",
]


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether `folder` holds an adapter's config and weights."""
    return all((Path(folder) / name).is_file() for name in ADAPTER_FILES)


def is_gti_config(config: dict) -> bool:
    """Whether an adapter config (as read from `adapter_config.json`) is a GTI adapter's."""
    return isinstance(config, dict) and config.get("peft_type") == PEFT_TYPE_GTI


def size_metadata(vocab_size: int, hidden_size: int, base_vocab_size: int | None) -> dict[str, str]:
    """The weights file's metadata: the sizes the adapter expects (`base_vocab_size` only where GTI resized)."""
    sizes = {VOCAB_SIZE_KEY: vocab_size, HIDDEN_SIZE_KEY: hidden_size}
    sizes |= {BASE_VOCAB_SIZE_KEY: base_vocab_size} if base_vocab_size else {}
    return {"format": "pt"} | {key: str(value) for key, value in sizes.items()}


def add_new_token_ids(config: dict, metadata: dict[str, str], ids: list[int]) -> None:
    """Grow a saved adapter's config and weights metadata (in place) by new token `ids`, appended after its own:
    the recorded vocabulary grows by the resize rule, as `get_peft_model` grows the base. Their rows are the
    caller's to append to every `ROW_SUFFIXES` tensor, in the same order."""
    config["new_token_ids"] = list(config["new_token_ids"]) + list(ids)
    rows = config.get("vocab_size") or 0
    config["vocab_size"] = vocabulary_size_for(config["new_token_ids"], rows, config.get("pad_to_multiple_of"))
    if VOCAB_SIZE_KEY in metadata:
        metadata[VOCAB_SIZE_KEY] = str(config["vocab_size"])


def _missing_files(folder: Path, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"`adapter_folder` {str(folder)!r} holds no {' or '.join(missing)} (found {found}): it is not a complete "
            "adapter. Save it again (`save_for_hub` / `save_pretrained`) or download all of its files."
        )


def _corrupt(folder: Path, name: str, error: Exception) -> ValueError:
    return ValueError(
        f"{name} in `adapter_folder` {str(folder)!r} ({(folder / name).stat().st_size} bytes) is corrupt or "
        f"truncated ({error}): save or download the adapter again."
    )


def read_config(folder: str | Path) -> dict:
    """The adapter's `adapter_config.json` as a dict, with clear errors for a missing or corrupt file."""
    folder = Path(folder)
    _missing_files(folder, (CONFIG_NAME,))
    try:
        return json.loads((folder / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise _corrupt(folder, CONFIG_NAME, error) from error


def write_config(folder: str | Path, config: dict) -> Path:
    """Write the adapter's `adapter_config.json` (as PEFT writes it: indented JSON)."""
    path = Path(folder) / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2))
    return path


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, list[int]], dict[str, str]]:
    """`(adapter config, tensor shapes, weights metadata)` without loading any tensor, with clear errors for
    missing or corrupt files."""
    folder = Path(folder)
    _missing_files(folder, ADAPTER_FILES)
    config = read_config(folder)
    try:
        with safe_open(folder / WEIGHTS_NAME, framework="pt") as file:
            shapes = {key: list(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
            metadata = file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise _corrupt(folder, WEIGHTS_NAME, error) from error
    return config, shapes, metadata


def read_weights(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`(tensors, metadata)` of the adapter's weights file."""
    path = Path(folder) / WEIGHTS_NAME
    with safe_open(path, framework="pt") as file:
        metadata = dict(file.metadata() or {})
    return load_file(path), metadata


def write_weights(folder: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write the adapter's weights file with its metadata."""
    path = Path(folder) / WEIGHTS_NAME
    save_file(tensors, path, metadata=metadata)
    return path
