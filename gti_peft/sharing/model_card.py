"""Model cards (README.md with Hub metadata) for GTI adapters, exported PEFT adapters and merged models."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..assets.offline import cache_dir
from ..method.layer import NewTokenEmbedding, NewTokenLMHead
from .adapter_format import BASE_VOCAB_SIZE_KEY, ROWS_SUFFIX, VOCAB_SIZE_KEY

TAGS = ["gti", "lora", "new-tokens", "peft"]
_MAX_ROWS = 40
_INIT_TEXT = {
    "mean": "the mean of the old embedding rows",
    "hf_mean": "transformers' `mean_resizing` (a draw around the mean of the old rows)",
    "random": "random draws N(0, initializer_range)",
    "description": "the mean of the old embeddings of a description text per token",
}
_LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora", "task_type")


@dataclass
class CardInfo:
    """What every card states: where the model comes from and how its vocabulary was extended."""

    repo_id: str  # Hub id or folder shown in the load snippets
    base_model: str | None  # a Hub id (goes into the metadata) or None
    base_model_path: str | None  # what the adapter config names, shown when it is not a Hub id
    new_tokens: list[str]
    new_token_ids: list[int]
    base_vocab_size: int | None
    vocab_size: int
    hidden_size: int
    tied: bool


def layers(model) -> tuple[NewTokenEmbedding, NewTokenLMHead | None]:
    head = model.get_output_embeddings()
    return model.get_input_embeddings(), head if isinstance(head, NewTokenLMHead) else None


def vocab_sizes(model) -> tuple[int | None, int, int]:
    """`(rows before GTI resized the base or None, embedding rows, hidden size)` of a GTI model."""
    weight = layers(model)[0].base_weight.detach()
    recorded = model.peft_config[model.active_adapter].base_vocab_size  # set by GTIModel when it resized
    n0 = recorded if recorded is not None and recorded < weight.shape[0] else None
    return n0, weight.shape[0], weight.shape[1]


def _hub_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (local paths can't), mapping the offline SmolLM2 copy to its Hub id."""
    if not name:
        return None
    if Path(name).resolve() == (cache_dir() / "SmolLM2-135M-Instruct").resolve():
        return "HuggingFaceTB/SmolLM2-135M-Instruct"
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return None if Path(name).exists() else name


def _origin(config, tokenizer, where: str, base_model: str | None) -> dict[str, Any]:
    """The `CardInfo` fields that name the adapter, its base and its new tokens (from a live model or from files)."""
    return {
        "repo_id": where,
        "base_model": _hub_id(base_model or config.base_model_name_or_path),
        "base_model_path": config.base_model_name_or_path,
        "new_tokens": tokenizer.convert_ids_to_tokens(config.new_token_ids),
        "new_token_ids": list(config.new_token_ids),
    }


def card_info(model, tokenizer, config, where: str, base_model: str | None) -> CardInfo:
    n0, n, hidden = vocab_sizes(model)
    return CardInfo(
        **_origin(config, tokenizer, where, base_model),
        base_vocab_size=n0,
        vocab_size=n,
        hidden_size=hidden,
        tied=layers(model)[1] is not None and layers(model)[1].is_tied,
    )


def card_info_from_files(
    config, tokenizer, shapes: Mapping[str, list[int]], metadata: Mapping[str, str], where: str, base_model=None
) -> CardInfo:
    """`card_info` of a saved GTI adapter, from its files alone (config, tokenizer, tensor shapes, the sizes
    `save_for_hub` records in the weights' metadata): no base model is loaded."""
    rows = {key: shape for key, shape in shapes.items() if key.endswith(ROWS_SUFFIX)}
    vocab_size = int(metadata.get(VOCAB_SIZE_KEY) or config.vocab_size or 0)
    base_vocab_size = metadata.get(BASE_VOCAB_SIZE_KEY)
    return CardInfo(
        **_origin(config, tokenizer, where, base_model),
        base_vocab_size=int(base_vocab_size) if base_vocab_size else None,
        vocab_size=vocab_size,
        hidden_size=next(iter(rows.values()))[1],
        tied=len(rows) == 1,  # a tied head reads the embedding's rows; an untied one saves its own
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple, set)):
        text = ", ".join(_fmt(v) for v in (sorted(value) if isinstance(value, set) else value))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Scalars and short lists of scalars, with dotted keys; long lists (loss curves) stay in metrics.json."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        if len(value) <= 8 and all(v is None or isinstance(v, (int, float, str, bool)) for v in value):
            yield prefix, list(value)
    elif not (isinstance(value, str) and "\n" in value):
        yield prefix, value


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] = ("", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in rows[:_MAX_ROWS]]
    if len(rows) > _MAX_ROWS:
        lines.append(f"| ... | {len(rows) - _MAX_ROWS} more entries in the metrics file |")
    return "\n".join(lines)


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """One subsection per top-level key (a table of its scalars); multi-line strings become code blocks."""
    parts, loose = [], []
    for key, value in metrics.items():
        if isinstance(value, str) and "\n" in value:
            parts.append(f"### {key}\n\n```\n{value.strip()}\n```")
        elif isinstance(value, Mapping):
            rows = list(_flatten(value))
            if rows:
                parts.append(f"### {key}\n\n{_table(rows, ('metric', 'value'))}")
        else:
            loose += list(_flatten(value, str(key)))
    if loose:
        parts.insert(0, _table(loose, ("metric", "value")))
    return "\n\n".join(parts)


def _base_line(info: CardInfo) -> str:
    if info.base_model:
        return f"[`{info.base_model}`](https://huggingface.co/{info.base_model})"
    if info.base_model_path:
        return f"`{info.base_model_path}` (a local path: pass `base_model=` a Hub id to link it)"
    return "its base model (not recorded: pass `base_model=` a Hub id to name it)"


def _vocabulary_text(info: CardInfo) -> str:
    ids = info.new_token_ids
    shown = ", ".join(f"`{t}`" for t in info.new_tokens[:6]) + (", ..." if len(ids) > 6 else "")
    before = f"{info.base_vocab_size} -> " if info.base_vocab_size not in (None, info.vocab_size) else ""
    return (
        f"- **{len(ids)} new tokens** (ids {min(ids)}-{max(ids)}): {shown}\n"
        f"- Vocabulary (embedding rows): {before}{info.vocab_size}; hidden size {info.hidden_size}; "
        f"{'tied' if info.tied else 'untied'} input and output embeddings"
    )


def _card(data: ModelCardData, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def _data(info: CardInfo, library: str, tags: list[str]) -> ModelCardData:
    return ModelCardData(base_model=info.base_model, library_name=library, tags=tags, pipeline_tag="text-generation")


def adapter_card(info: CardInfo, config, metrics: Mapping[str, Any] | None, files: dict[str, int]) -> ModelCard:
    """The card of a GTI adapter folder (`save_for_hub` / `push_to_hub`)."""
    init = f"`init={config.init!r}`: {_INIT_TEXT.get(config.init, config.init)}"
    if config.grounding:
        grounding = "Grounded with `gti_peft.ground` (only the new rows trained, LM frozen):\n\n" + _table(
            list(_flatten(config.grounding)), ("setting", "value")
        )
    else:
        grounding = "Not grounded: the rows went from their initialization straight to task fine-tuning."
    lora = [(k, getattr(config, k)) for k in _LORA_FIELDS] + [("init_seed", config.init_seed)]
    if isinstance(config.target_modules, (list, set)) and len(config.target_modules) > 8:  # expanded all-linear
        names = sorted({m.split(".")[-1] for m in config.target_modules})
        lora[3] = ("target_modules", f"{', '.join(names)} ({len(config.target_modules)} modules)")
    lora += [("pad_to_multiple_of", config.pad_to_multiple_of)] if config.pad_to_multiple_of else []
    body = f"""
# {Path(info.repo_id).name}

A **GTI** (Grounded Token Initialization) adapter for {_base_line(info)}: LoRA weights plus trained embedding
rows for new tokens, made with [gti-peft](https://pypi.org/project/gti-peft/). The full embedding matrix is not
included: only the new tokens' rows.

## Load it

```python
import gti_peft, peft, transformers  # importing gti_peft registers the GTI method with PEFT
model = peft.AutoPeftModelForCausalLM.from_pretrained("{info.repo_id}")
tokenizer = transformers.AutoTokenizer.from_pretrained("{info.repo_id}")  # holds the new tokens
```

`gti_peft.export_for_peft(model, tokenizer, folder)` writes a plain PEFT LoRA adapter that loads without gti-peft,
and `gti_peft.save_merged(model, tokenizer, folder)` a standalone transformers model for serving.

## New tokens

{_vocabulary_text(info)}
- Initialization: {init}

### Grounding

{grounding}

## LoRA and training settings

{_table(lora, ("setting", "value"))}
"""
    if metrics:
        body += f"\n## Metrics and diagnostics\n\n{metrics_markdown(metrics)}\n"
    body += "\n## Files\n\n" + _table(sorted(files.items()), ("file", "bytes")) + "\n"
    return _card(_data(info, "peft", TAGS), body)


def exported_card(info: CardInfo, base_for_snippet: str) -> ModelCard:
    """The card of a folder written by `export_for_peft`: plain PEFT LoRA + TrainableTokens."""
    body = f"""
# {Path(info.repo_id).name}

A plain PEFT LoRA adapter (with `trainable_token_indices` for the new tokens) for {_base_line(info)}, exported
from a GTI adapter made with gti-peft. Loading it needs only `peft` and `transformers`:

```python
import peft, transformers
tokenizer = transformers.AutoTokenizer.from_pretrained("{info.repo_id}")
base = transformers.AutoModelForCausalLM.from_pretrained("{base_for_snippet}")
base.resize_token_embeddings({info.vocab_size}, mean_resizing=False)  # the adapter overwrites every added row
model = peft.PeftModel.from_pretrained(base, "{info.repo_id}")
```

## New tokens

{_vocabulary_text(info)}
"""
    return _card(_data(info, "peft", TAGS), body)


def merged_card(info: CardInfo) -> ModelCard:
    """The card of a folder written by `save_merged`: a standalone transformers model."""
    body = f"""
# {Path(info.repo_id).name}

{_base_line(info)} with a GTI adapter (LoRA and new-token rows) merged in: a standalone transformers model with an
extended vocabulary.

```python
import transformers
model = transformers.AutoModelForCausalLM.from_pretrained("{info.repo_id}")
tokenizer = transformers.AutoTokenizer.from_pretrained("{info.repo_id}")
```

## New tokens

{_vocabulary_text(info)}
"""
    return _card(_data(info, "transformers", ["gti", "new-tokens", "merged"]), body)
