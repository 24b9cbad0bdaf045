"""Sequential recommendation data: interactions -> per-user histories -> leave-one-out splits -> prompts.

Interactions are a `datasets.Dataset` with columns `user`, `item` (strings) and `timestamp`; items a
`datasets.Dataset` with `item`, `title`, `description`. Everything here is deterministic.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from datasets import Dataset

from ..assets.offline import movielens_100k_dir

logger = logging.getLogger(__name__)

RECOMMENDATION_PROMPT = "The user watched, in order: {history}. Predict the next item."
_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class SequenceExample(TypedDict):
    """One next-item example: the user's items so far (oldest first) and the item that came next."""

    user: str
    history: list[str]
    target: str


@dataclass
class LeaveOneOutSplit:
    """`train`: each user's items but the last two; `valid`/`test` predict the second-to-last/last."""

    train: dict[str, list[str]]
    valid: list[SequenceExample]
    test: list[SequenceExample]


class UserHistories(dict):
    """`{user: [item, ...]}` in time order, plus what was left out: `n_dropped_users` (too few
    interactions) and `n_dropped_interactions` (their interactions and those naming unknown items)."""

    n_dropped_users: int = 0
    n_dropped_interactions: int = 0


# ---- loading ---------------------------------------------------------------------------------------------
def _column(ds: Dataset, name: str) -> list:
    return ds.with_format("arrow")[name].to_pylist()


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [h.split(":")[0] for h in rows[0]], [r for r in rows[1:] if r]


def load_movielens_100k(data_dir: str | Path | None = None) -> tuple[Dataset, Dataset]:
    """MovieLens-100k from recbole's files (read in place: the licence forbids copying them).

    Returns `(interactions, items)`; an item's description reads e.g.
    `"Genres: Animation, Children's, Comedy. Released 1995."`.
    """
    folder = Path(data_dir) if data_dir is not None else movielens_100k_dir()
    header, rows = _read_tsv(folder / "ml-100k.inter")
    u, i, t = (header.index(c) for c in ("user_id", "item_id", "timestamp"))
    interactions = Dataset.from_dict(
        {
            "user": [r[u] for r in rows],
            "item": [r[i] for r in rows],
            "timestamp": [int(float(r[t])) for r in rows],
        }
    )
    header, rows = _read_tsv(folder / "ml-100k.item")
    i, title, year, genres = (header.index(c) for c in ("item_id", "movie_title", "release_year", "class"))
    descriptions = []
    for r in rows:
        parts = [g for g in r[genres].split() if g != "unknown"]
        text = f"Genres: {', '.join(parts)}." if parts else ""
        text += f" Released {r[year]}." if r[year].isdigit() else ""
        descriptions.append(text.strip() or "Unknown genre and release year.")
    items = Dataset.from_dict(
        {"item": [r[i] for r in rows], "title": [r[title] for r in rows], "description": descriptions}
    )
    return interactions, items


def _load_table(path_or_dataset: str | Path | Dataset, file_format: str | None) -> Dataset:
    if isinstance(path_or_dataset, Dataset):
        return path_or_dataset
    from datasets import load_dataset

    path = Path(path_or_dataset)
    builder = file_format or _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"Cannot tell the format of {path}: pass file_format='csv', 'json' or 'parquet'.")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return load_dataset(builder, data_files=str(path), split="train", **kwargs)


def _require(ds: Dataset, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"The {what} table has no column(s) {missing}; its columns are {ds.column_names}.")


def load_interactions(
    path_or_dataset: str | Path | Dataset,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    file_format: str | None = None,
) -> Dataset:
    """Interactions from CSV/TSV, JSON(L) or Parquet (or a `Dataset`) as columns `user, item, timestamp`.

    Ids become strings; with `time_col=None` the row order is the time order.
    """
    ds = _load_table(path_or_dataset, file_format)
    _require(ds, [c for c in (user_col, item_col, time_col) if c is not None], "interactions")
    times = _column(ds, time_col) if time_col is not None else list(range(len(ds)))
    users, items = (list(map(str, _column(ds, c))) for c in (user_col, item_col))
    return Dataset.from_dict({"user": users, "item": items, "timestamp": times})


def load_items(
    path_or_dataset: str | Path | Dataset,
    item_col: str = "item_id",
    title_col: str = "title",
    description_cols: str | Sequence[str] = ("description",),
    file_format: str | None = None,
) -> Dataset:
    """Item table as columns `item, title, description`; several description columns are joined as
    sentences (`"Drama. 1995."`)."""
    cols = [description_cols] if isinstance(description_cols, str) else list(description_cols)
    ds = _load_table(path_or_dataset, file_format)
    _require(ds, [item_col, title_col, *cols], "items")
    parts = zip(*(_column(ds, c) for c in cols)) if cols else ([] for _ in range(len(ds)))
    descriptions = [" ".join(_sentence(p) for p in row if p is not None and str(p).strip()) for row in parts]
    titles = ["" if t is None else str(t) for t in _column(ds, title_col)]
    return Dataset.from_dict(
        {"item": list(map(str, _column(ds, item_col))), "title": titles, "description": descriptions}
    )


def _sentence(value: object) -> str:
    text = str(value).strip()
    return text if not text or text[-1] in ".!?" else text + "."


def item_texts(items: Dataset) -> tuple[list[str], list[str]]:
    """`(item_ids, texts)` with text `"{title}. {description}"`: the input of `SemanticIDs.build`."""
    titles, descriptions = _column(items, "title"), _column(items, "description")
    return _column(items, "item"), [f"{_sentence(t) if t else ''} {d}".strip() for t, d in zip(titles, descriptions)]


# ---- histories and splits --------------------------------------------------------------------------------
def user_histories(
    interactions: Dataset,
    items: Dataset | Iterable[str] | None = None,
    min_interactions: int = 3,
    drop_unknown: bool = False,
) -> UserHistories:
    """Each user's items ordered by timestamp (ties keep file order), users in order of first appearance.

    Users with fewer than `min_interactions` are dropped and counted. When `items` (the item table or
    its ids) is given, interactions naming other items raise a `ValueError` (or are dropped and counted
    with `drop_unknown=True`).
    """
    users, item_col, times = (_column(interactions, c) for c in ("user", "item", "timestamp"))
    result = UserHistories()
    keep = range(len(users))
    if items is not None:
        known = set(_column(items, "item") if isinstance(items, Dataset) else map(str, items))
        unknown = [j for j in keep if item_col[j] not in known]
        if unknown and not drop_unknown:
            names = list(dict.fromkeys(item_col[j] for j in unknown))
            raise ValueError(
                f"{len(unknown)} interactions name {len(names)} items missing from the item table, e.g. "
                f"{names[:5]}; fix the tables or pass drop_unknown=True to skip them."
            )
        result.n_dropped_interactions = len(unknown)
        keep = [j for j in keep if item_col[j] in known]
    grouped: dict[str, list[int]] = {}
    for j in keep:
        grouped.setdefault(users[j], []).append(j)
    for user, rows in grouped.items():
        if len(rows) < min_interactions:
            result.n_dropped_users += 1
            result.n_dropped_interactions += len(rows)
            continue
        result[user] = [item_col[j] for j in sorted(rows, key=lambda j: times[j])]  # sorted() is stable
    if result.n_dropped_users or result.n_dropped_interactions:
        logger.warning(
            "Dropped %d users with fewer than %d interactions and %d interactions in all; %d users remain.",
            result.n_dropped_users,
            min_interactions,
            result.n_dropped_interactions,
            len(result),
        )
    return result


def _truncate(history: list[str], max_history: int | None) -> list[str]:
    return history[-max_history:] if max_history else list(history)


def leave_one_out(histories: Mapping[str, Sequence[str]], max_history: int | None = None) -> LeaveOneOutSplit:
    """Test target = last item, valid target = second-to-last, train = the rest (histories of the
    valid/test examples are everything before their target, the last `max_history` items if given)."""
    short = [u for u, h in histories.items() if len(h) < 3]
    if short:
        raise ValueError(
            f"{len(short)} users have fewer than 3 items (e.g. {short[:5]}); leave-one-out needs 3 per user: "
            "build the histories with user_histories(..., min_interactions=3)."
        )
    train = {u: list(h[:-2]) for u, h in histories.items()}
    valid = [
        SequenceExample(user=u, history=_truncate(h[:-2], max_history), target=h[-2]) for u, h in histories.items()
    ]
    test = [
        SequenceExample(user=u, history=_truncate(h[:-1], max_history), target=h[-1]) for u, h in histories.items()
    ]
    return LeaveOneOutSplit(train=train, valid=valid, test=test)


def training_examples(
    histories: Mapping[str, Sequence[str]], max_history: int = 10, min_history: int = 1
) -> list[SequenceExample]:
    """Sliding windows over each user's sequence: every item at position `t >= min_history` is a target
    and the (at most `max_history`) items before it its history."""
    if min_history < 1 or max_history < min_history:
        raise ValueError(
            f"Need 1 <= min_history <= max_history, got min_history={min_history}, max_history={max_history}."
        )
    return [
        SequenceExample(user=u, history=list(h[max(0, t - max_history) : t]), target=h[t])
        for u, h in histories.items()
        for t in range(min_history, len(h))
    ]


def sequence_chunks(
    histories: Mapping[str, Sequence[str]], max_items: int, max_chunks_per_user: int | None = None
) -> list[dict]:
    """Each user's sequence cut into chunks of at most `max_items` items, aligned to its end (the last chunk holds
    the user's latest items) and overlapping by one item, so every item after a user's first is a target of exactly
    one chunk, with the chunk's earlier items as its history. Chunks of one item (no target) are left out; with
    `max_chunks_per_user`, only each user's latest chunks are kept. Returns `[{"user": ..., "items": [...]}, ...]`."""
    if max_items < 2:
        raise ValueError(f"`max_items` must be >= 2 (one history item and one target), got {max_items}.")
    if max_chunks_per_user is not None and max_chunks_per_user < 1:
        raise ValueError(f"`max_chunks_per_user` must be >= 1 or None (every chunk), got {max_chunks_per_user}.")
    chunks = []
    for user, items in histories.items():
        end, user_chunks = len(items), []
        while end > 1 and (max_chunks_per_user is None or len(user_chunks) < max_chunks_per_user):
            start = max(0, end - max_items)
            user_chunks.append({"user": user, "items": list(items[start:end])})
            end = start + 1  # the next chunk ends with this chunk's first item: it is the history, not a target
        chunks.extend(reversed(user_chunks))
    return chunks


def popularity_ranking(histories: Mapping[str, Sequence[str]], k: int | None = None) -> list[str]:
    """Items by number of occurrences in `histories` (the training part), ties by first appearance."""
    return [item for item, _ in Counter(item for h in histories.values() for item in h).most_common(k)]


# ---- prompts -----------------------------------------------------------------------------------------------
def recommendation_messages(
    history_sids: Sequence[str],
    target_sid: str | None = None,
    template: str = RECOMMENDATION_PROMPT,
    separator: str = ", ",
) -> list[dict[str, str]]:
    """Chat messages asking for the next item; the answer turn (the target SID) is added when given."""
    if not history_sids:
        raise ValueError("`history_sids` is empty: a recommendation prompt needs at least one past item.")
    messages = [{"role": "user", "content": template.format(history=separator.join(history_sids))}]
    if target_sid is not None:
        messages.append({"role": "assistant", "content": target_sid})
    return messages


def grounding_pairs(items: Dataset, sids: Mapping[str, str] | object) -> list[dict[str, str]]:
    """`{"tokens", "title", "description"}` per item, for the grounding stage. `sids` is a
    `SemanticIDs` or an `{item: sid_string}` mapping; every item of the table needs an ID."""
    mapping = sids.to_dict() if hasattr(sids, "to_dict") else dict(sids)
    ids = _column(items, "item")
    missing = [i for i in ids if i not in mapping]
    if missing:
        raise ValueError(
            f"{len(missing)} items have no semantic ID, e.g. {missing[:5]}: build the IDs from the same item table."
        )
    return [
        {"tokens": mapping[i], "title": t, "description": d}
        for i, t, d in zip(ids, _column(items, "title"), _column(items, "description"))
    ]
