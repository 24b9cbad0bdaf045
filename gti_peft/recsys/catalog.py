"""Growing a trained catalog: new items get semantic IDs from the saved codebooks and join a NEW adapter folder.

Nothing is re-clustered and no old item's ID changes. Most new items reuse the code tokens the adapter already
has; a row is added only for a disambiguation token past the last one (`<d_k>`). Without grounding the
extension works on the files alone (no base model is loaded); with `ground_steps` the rows (LoRA frozen) are
trained briefly on the new items' pairs mixed with a replay of old items' pairs.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from ..sharing.adapter_format import (
    ADAPTER_FILES,
    CONFIG_NAME,
    ROW_SUFFIXES,
    SEMANTIC_IDS_NAME,
    add_new_token_ids,
    is_adapter_folder,
    is_gti_config,
    read_config,
    read_weights,
    write_config,
    write_weights,
)
from ..sharing.hub import save_for_hub, write_adapter_card
from ..sharing.saving import write_folder_atomically
from .collaborative import new_item_vectors
from .data import grounding_pairs, item_texts, load_items
from .semantic_ids import SemanticIDs, embed_texts

ITEM_COLUMNS = ("item", "title", "description")
ROW_INITS = ("level_mean", "mean")
_LEVEL = re.compile(r"^<(.+)_\d+>$")


@dataclass
class CatalogExtension:
    """What :func:`extend_catalog` did."""

    folder: str
    new_items: list[str]
    semantic_ids: dict[str, str] = field(metadata={"help": "Each new item's semantic ID (its token string)."})
    new_tokens: list[str]
    new_token_ids: list[int]
    disambiguated_items: int = field(metadata={"help": "New items whose codes were taken: a `<d_k>` with k > 0."})
    catalog_size: int
    grounding: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    source: Path
    sids: SemanticIDs
    extended: SemanticIDs
    new_items: Dataset
    replay_items: Dataset | None
    new_tokens: list[str]


def _items_table(table, name: str, item_column: str, title_column: str, description_columns) -> Dataset:
    if isinstance(table, Dataset) and set(ITEM_COLUMNS) <= set(table.column_names):
        return table
    if not isinstance(table, Dataset) and not Path(table).is_file():
        raise FileNotFoundError(f"`{name}`={str(table)!r} is not a file: pass an items table (CSV/JSON/Parquet).")
    try:
        return load_items(table, item_column, title_column, description_columns)
    except ValueError as error:
        raise ValueError(
            f"`{name}`: {error} Name the columns with item_column/title_column/description_columns."
        ) from error


def _templates(names: list[str] | None) -> tuple:
    from ..training.templates import DEFAULT_TEMPLATES

    known = {t.name: t for t in DEFAULT_TEMPLATES}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ValueError(f"`templates` names unknown template(s) {unknown}; known: {sorted(known)}.")
    return tuple(known[n] for n in names) if names else DEFAULT_TEMPLATES


def _check_gti_adapter(source: Path) -> None:
    """Only a GTI adapter has new-token rows to grow (a plain LoRA beside a semantic_ids file has none)."""
    config = read_config(source)
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if not is_gti_config(config) or not config.get("new_token_ids"):
        raise ValueError(
            f"`adapter_folder`={str(source)!r} holds a {peft_type or 'non-PEFT'} adapter, not a GTI adapter with "
            "`new_token_ids`: extend_catalog grows a GTI adapter's new-token rows. Pass the GTI adapter folder (saved "
            "by the recipe or `save_for_hub`); an adapter exported with `export_for_peft` is extended by extending "
            "its GTI original and exporting again."
        )


def _load_semantic_ids(source: Path, encoder: str | None) -> SemanticIDs:
    if not is_adapter_folder(source):
        raise FileNotFoundError(
            f"`adapter_folder`={str(source)!r} holds no {' / '.join(ADAPTER_FILES)}: pass a folder saved by the "
            "recipe or by `save_for_hub`."
        )
    _check_gti_adapter(source)
    if not (source / SEMANTIC_IDS_NAME).is_file():
        raise ValueError(
            f"`adapter_folder`={str(source)!r} has no {SEMANTIC_IDS_NAME} (the semantic IDs and their codebooks): "
            "only an adapter saved with its semantic IDs can be extended (the recipe saves them in every adapter "
            "folder)."
        )
    sids = SemanticIDs.load(source / SEMANTIC_IDS_NAME)
    if sids.encoder is None and encoder is None:
        raise ValueError(
            f"{source / SEMANTIC_IDS_NAME} does not record its encoder (an older file): pass `encoder=` the sentence "
            "encoder the IDs were built with. IDs of collaborative vectors saved before they kept those vectors "
            "cannot grow: rebuild them (the recipe's semantic_ids stage gives the same IDs and keeps the vectors)."
        )
    if sids.encoder is not None and encoder is not None and encoder != sids.encoder:
        raise ValueError(
            f"`encoder`={encoder!r} differs from {sids.encoder!r}, the encoder the codebooks were built with: new "
            f"items must be embedded the same way; drop `encoder` or pass {sids.encoder!r}."
        )
    if encoder is not None:
        sids.encoder = encoder
    return sids


def _check_new_items(table: Dataset, sids: SemanticIDs) -> list[str]:
    ids = table["item"]
    if not ids:
        raise ValueError("`new_items` is empty: give at least one new item.")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"`new_items` lists items more than once, e.g. {repeated[:5]}: deduplicate them.")
    known = [i for i in ids if i in set(sids.item_ids)]
    if known:
        raise ValueError(
            f"{len(known)} of `new_items` already exist in the catalog, e.g. {known[:5]}: they keep their IDs; "
            "pass only items the adapter does not know."
        )
    textless = [i for i, text in zip(*item_texts(table)) if not text.strip()]
    if textless:
        raise ValueError(
            f"{len(textless)} of `new_items` have no text (empty or missing title and description cells): "
            f"{textless[:10]}{' ...' if len(textless) > 10 else ''}. Their semantic IDs would come from an empty text "
            "and they could not be grounded: fill in a title or description for each, or leave them out."
        )
    return ids


def _check_grounding_settings(style: str | None, batch_size, learning_rate, max_length) -> None:
    """The grounding pass's own settings, checked before any file is written or model loaded."""
    from ..training.templates import check_prompt_style

    check_prompt_style(style, "`prompt_style`", allow_none=True)
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}: pass e.g. {name}=16.")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be a positive number, got {learning_rate!r}: pass e.g. 1e-2.")


def _plan(source, new_items, out, encoder, replay, columns, ground_steps, replay_ratio, new_row_init, overwrite):
    source, out = Path(source), Path(out)
    if ground_steps < 0 or replay_ratio < 0:
        raise ValueError(f"`ground_steps` ({ground_steps}) and `replay_ratio` ({replay_ratio}) must be >= 0.")
    if new_row_init not in ROW_INITS:
        raise ValueError(f"`new_row_init` must be one of {ROW_INITS}, got {new_row_init!r}.")
    sids = _load_semantic_ids(source, encoder)
    if out.resolve() == source.resolve():
        raise ValueError(
            f"`out_folder` is `adapter_folder` ({str(out)!r}): the original stays untouched; pick a new one."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(
            f"`out_folder`={str(out)!r} exists and is not empty: pick a new folder or overwrite=True."
        )
    table = _items_table(new_items, "new_items", *columns)
    ids = _check_new_items(table, sids)
    replay_table = _replay_table(replay, columns, sids) if replay is not None else None
    if ground_steps > 0 and replay_ratio > 0 and replay_table is None:
        raise ValueError(
            "`ground_steps` > 0 mixes a replay of old items' pairs into grounding: pass `replay=` the old items "
            "table (same format as new_items), or replay_ratio=0 to ground on the new items alone."
        )
    extended = _extend_ids(sids, source, ids, item_texts(table)[1], replay_table)
    new_tokens = [t for t in extended.vocabulary() if t not in set(sids.vocabulary())]
    return _Plan(source, sids, extended, table, replay_table, new_tokens)


def _extend_ids(sids: SemanticIDs, source: Path, ids: list[str], texts: list[str], replay) -> SemanticIDs:
    """The IDs plus the new items, coded like the old: from their texts, and for IDs that know what users watch
    together, from the collaborative vectors of their nearest catalog items by text (`replay`'s items)."""
    if sids.embedding == "text":
        return sids.extend(ids, embed_texts(texts, sids.encoder, show_progress=False))
    if replay is None:
        raise ValueError(
            f"The semantic IDs of {str(source)!r} encode {sids.embedding!r} vectors, and new items have no "
            "interactions: each gets the collaborative vector of its nearest catalog items by text, as items "
            "without training interactions did when the IDs were built. Pass `replay=` the old items table "
            "(same format as new_items; `--replay` on the command line) so that their texts can be compared."
        )
    text = embed_texts([*item_texts(replay)[1], *texts], sids.encoder, show_progress=False)
    row = {item: i for i, item in enumerate(sids.item_ids)}
    known = sids.collaborative[[row[item] for item in replay["item"]]]
    vectors, collaborative = new_item_vectors(sids.embedding, text[len(replay) :], text[: len(replay)], known)
    return sids.extend(ids, vectors, collaborative)


def _replay_table(replay, columns, sids: SemanticIDs) -> Dataset:
    """The old items of `replay` that have semantic IDs (refused when none has)."""
    table = _items_table(replay, "replay", *columns)
    known = set(sids.item_ids)
    table = table.filter(lambda row: row["item"] in known)
    if len(table) == 0:
        raise ValueError("No item of `replay` is in the catalog: pass the table of the adapter's own items.")
    return table


def _level(token: str | None) -> str | None:
    match = _LEVEL.match(token or "")
    return match.group(1) if match else None


def _same_level(tokens: list[str], token: str) -> list[int]:
    return [i for i, old in enumerate(tokens) if _level(old) is not None and _level(old) == _level(token)]


def _level_rows(rows: torch.Tensor, tokens: list[str], new_tokens: list[str], new_row_init: str) -> torch.Tensor:
    """Starting rows of new tokens: the mean of the trained rows of the same level (`level_mean`) or of all
    trained rows (`mean`)."""
    out = []
    for token in new_tokens:
        same = _same_level(tokens, token)
        out.append(rows[same if new_row_init == "level_mean" and same else slice(None)].float().mean(dim=0))
    return torch.stack(out).to(rows.dtype)


def _card_metrics(plan: _Plan) -> dict:
    """What the extended adapter's card says about its catalog (the original's card and metrics describe the old)."""
    return {
        "catalog_extension": {
            "extended_from": str(plan.source),
            "new_items": len(plan.new_items),
            "new_tokens": len(plan.new_tokens),
            "catalog_size": len(plan.extended),
        }
    }


def _write_files(plan: _Plan, tmp: Path, new_row_init: str, out: Path) -> list[int]:
    """Copy the adapter into `tmp` with the new tokens added to the tokenizer, config, rows and semantic IDs, and a
    model card for the extended adapter (named `out`, where it goes)."""
    from transformers import AutoTokenizer

    from ..method.tokens import add_new_tokens

    for path in plan.source.iterdir():
        if path.is_file():
            shutil.copy2(path, tmp / path.name)
    config = read_config(plan.source)
    ids = []
    if plan.new_tokens:
        tokenizer = AutoTokenizer.from_pretrained(plan.source)
        ids = add_new_tokens(tokenizer, plan.new_tokens)
        tokenizer.save_pretrained(tmp)
        old_ids = config["new_token_ids"]
        tokens = tokenizer.convert_ids_to_tokens(old_ids)
        weights, metadata = read_weights(plan.source)
        for key in [k for k in weights if k.endswith(ROW_SUFFIXES)]:
            added = _level_rows(weights[key], tokens, plan.new_tokens, new_row_init)
            weights[key] = torch.cat([weights[key], added]).contiguous()
        add_new_token_ids(config, metadata, ids)
        if config.get("description_token_ids"):  # init='description': a new token borrows a level-mate's text
            texts = config["description_token_ids"]
            texts += [texts[(_same_level(tokens, t) or [0])[0]] for t in plan.new_tokens]
        write_weights(tmp, weights, metadata)
        write_config(tmp, config)
    plan.extended.save(tmp / SEMANTIC_IDS_NAME)
    write_adapter_card(tmp, _card_metrics(plan), repo_id=str(out))  # the copied card described the original
    return ids


def _grounding_pairs(plan: _Plan, replay_ratio: float, seed: int) -> list[dict]:
    pairs = grounding_pairs(plan.new_items, plan.extended)
    if plan.replay_items is not None:
        old = grounding_pairs(plan.replay_items, plan.extended)
        count = min(len(old), round(replay_ratio * len(pairs)))
        pairs += random.Random(seed).sample(old, count)
    return pairs


def _ground_and_save(plan, staging: Path, out: Path, base_model, ground_steps, replay_ratio, options) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..assets.offline import resolve
    from ..training.grounding import ground

    config = read_config(staging)
    base_name = base_model or config.get("base_model_name_or_path")
    if not base_name:
        raise ValueError("The adapter does not name its base model: pass `base_model=` to ground the new rows.")
    base = AutoModelForCausalLM.from_pretrained(resolve(base_name), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(staging)
    model = PeftModel.from_pretrained(base, staging, is_trainable=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pairs = _grounding_pairs(plan, replay_ratio, options["seed"])
    templates = options.pop("templates")
    # prompts as the adapter was grounded (recorded in its config), so the new rows learn the prompts it serves
    style = options.pop("prompt_style") or (config.get("grounding") or {}).get("prompt_style", "chat")
    report = ground(
        model, tokenizer, pairs, templates, max_steps=ground_steps, save_strategy="no", prompt_style=style, **options
    )
    if out.exists() and not (out / CONFIG_NAME).is_file():  # overwrite=True was checked by the plan; an adapter
        shutil.rmtree(out)  # folder is replaced atomically by save_for_hub, anything else is cleared first
    save_for_hub(model, tokenizer, out, metrics=_card_metrics(plan), extra_files=[staging / SEMANTIC_IDS_NAME])
    return {"steps": report.steps, "pairs": len(pairs), "seconds": report.train_seconds}


def extend_catalog(
    adapter_folder: str | Path,
    new_items: Dataset | str | Path,
    out_folder: str | Path,
    *,
    ground_steps: int = 0,
    replay: Dataset | str | Path | None = None,
    replay_ratio: float = 1.0,
    encoder: str | None = None,
    base_model: str | None = None,
    new_row_init: str = "level_mean",
    templates: list[str] | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    max_length: int = 256,
    prompt_style: str | None = None,
    seed: int = 0,
    item_column: str = "item_id",
    title_column: str = "title",
    description_columns: str | list[str] = ("description",),
    overwrite: bool = False,
) -> CatalogExtension:
    """Add `new_items` to the catalog of the trained adapter in `adapter_folder`; save a new adapter folder.

    Args:
        adapter_folder: A GTI adapter folder holding its `semantic_ids.safetensors` (codebooks + encoder name).
        new_items: The new items' table: a `Dataset` with `item, title, description` (the loader's format) or
            a CSV/JSON/Parquet file with `item_column`, `title_column` and `description_columns`.
        out_folder: Where the extended adapter goes (written atomically; `adapter_folder` is never touched).
        ground_steps: Steps of a grounding pass on the rows only (LoRA frozen); 0 skips it (no model is loaded).
        replay: The old items' table; `replay_ratio` old pairs per new pair join the grounding data so the old
            items are not forgotten. Needed for IDs that are not text-only: a new item takes the collaborative
            vector of its nearest old items by text.
        encoder: The sentence encoder; it must be the one recorded with the codebooks (default: that one).
        base_model: The base to ground on (default: the adapter config's `base_model_name_or_path`).
        new_row_init: Rows of new tokens start at the mean of their level's rows (`level_mean`) or of all
            trained rows (`mean`).
        templates: Names of the grounding templates (default: all of `DEFAULT_TEMPLATES`).
        learning_rate, batch_size, max_length, seed: Grounding settings.
        prompt_style: How grounding prompts are tokenized (`gti_peft.training.templates.PROMPT_STYLES`); default: the
            style the adapter was grounded with (recorded in its config), else `"chat"`.
        overwrite: Replace an existing `out_folder`.

    Every bad input (existing or repeated items, missing columns, no semantic IDs, another encoder) is refused
    before anything is written.
    """
    columns = (item_column, title_column, description_columns)
    chosen = _templates(templates)
    _check_grounding_settings(prompt_style, batch_size, learning_rate, max_length)
    plan = _plan(
        adapter_folder,
        new_items,
        out_folder,
        encoder,
        replay,
        columns,
        ground_steps,
        replay_ratio,
        new_row_init,
        overwrite,
    )
    out = Path(out_folder)
    grounding = None
    if ground_steps == 0:
        ids: list[int] = []
        write_folder_atomically(out, lambda tmp: ids.extend(_write_files(plan, tmp, new_row_init, out)))
    else:
        options = {"learning_rate": learning_rate, "per_device_train_batch_size": batch_size, "seed": seed}
        options |= {"max_length": max_length, "templates": chosen, "prompt_style": prompt_style}
        with tempfile.TemporaryDirectory(prefix="gti-extend-") as staging:
            ids = _write_files(plan, Path(staging), new_row_init, out)
            grounding = _ground_and_save(plan, Path(staging), out, base_model, ground_steps, replay_ratio, options)
    new_ids = plan.new_items["item"]
    start = len(plan.sids)
    disambiguated = int((plan.extended.full_codes[start:, -1] > 0).sum()) if plan.extended.has_disambiguation else 0
    return CatalogExtension(
        folder=str(out),
        new_items=new_ids,
        semantic_ids={item: plan.extended.tokens_for(item) for item in new_ids},
        new_tokens=plan.new_tokens,
        new_token_ids=ids,
        disambiguated_items=disambiguated,
        catalog_size=len(plan.extended),
        grounding=grounding,
    )
