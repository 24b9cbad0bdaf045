"""The vocabulary recipe's inputs: a (token, text) table and a corpus, loaded and checked before any model loads."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset

TABLE_LOADERS = {".csv": Dataset.from_csv, ".json": Dataset.from_json, ".jsonl": Dataset.from_json}
TABLE_LOADERS[".parquet"] = Dataset.from_parquet


@dataclass
class VocabularyData:
    """Token/text pairs for grounding and the corpus, split into fine-tuning and held-out sentences."""

    pairs: list[dict]
    train_texts: list[str]
    heldout_texts: list[str]

    @property
    def tokens(self) -> list[str]:
        return [pair["tokens"] for pair in self.pairs]


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_rows(source: str, setting: str, split: str = "train") -> Dataset:
    """A local CSV/JSON/Parquet/text file, or a `datasets` id (the cache only, when offline)."""
    path = Path(source)
    if path.is_file():
        if path.suffix == ".txt":
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return Dataset.from_dict({"text": [line for line in lines if line]})
        if path.suffix not in TABLE_LOADERS:
            raise ValueError(f"{setting}={source!r}: use a .txt, .csv, .json, .jsonl or .parquet file.")
        return TABLE_LOADERS[path.suffix](str(path))
    if path.suffix in TABLE_LOADERS or path.suffix == ".txt" or source.startswith(("/", ".")):
        raise FileNotFoundError(f"{setting}={source!r} does not exist.")
    try:
        return load_dataset(source, split=split)
    except Exception as error:  # datasets raises several types for an unreachable id
        why = (
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and the dataset is not in the local datasets cache"
            if _offline()
            else f"it could not be loaded ({type(error).__name__}: {error})"
        )
        raise ValueError(
            f"{setting}={source!r} is not a local file and, as a `datasets` id, cannot be used: {why}. Give a local "
            "file, or download the dataset once with network access."
        ) from error


def _column(rows: Dataset, column: str, setting: str) -> list:
    if column not in rows.column_names:
        raise ValueError(f"{setting}={column!r} is not a column; the data has {rows.column_names}.")
    return list(rows[column])


def check_table(tokens: list, texts: list) -> list[dict]:
    """Refuse empty, blank or duplicate tokens and texts; return grounding pairs."""
    if not tokens:
        raise ValueError("data.tokens holds no rows: give one (token, text) row per new token.")
    for setting, values in (("data.token_column", tokens), ("data.text_column", texts)):
        blank = [i for i, value in enumerate(values) if not isinstance(value, str) or not value.strip()]
        if blank:
            raise ValueError(f"{setting}: rows {blank[:5]} are empty; every new token needs a token and a text.")
        seen, duplicates = set(), []
        for value in values:
            if value.strip() in seen:
                duplicates.append(value)
            seen.add(value.strip())
        if duplicates:
            raise ValueError(
                f"{setting}: {duplicates[:3]} appear more than once; each token needs its own token string and its "
                "own text (identical texts would ground two tokens to the same meaning)."
            )
    spaced = [t for t in tokens if t != t.strip() or any(c.isspace() for c in t)]
    if spaced:
        raise ValueError(f"data.token_column: tokens {spaced[:3]} contain whitespace; a new token is one string.")
    return [{"tokens": token, "text": text.strip()} for token, text in zip(tokens, texts)]


def check_corpus(texts: list, tokens: list[str]) -> list[str]:
    """Keep the non-empty sentences; refuse a corpus in which no new token occurs."""
    texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    if not any(pattern.search(text) for text in texts):
        raise ValueError(
            f"data.corpus ({len(texts)} non-empty texts) contains none of the new tokens (e.g. {tokens[:3]}): "
            "fine-tuning would never see them. Write the tokens into the corpus, e.g. in place of the word."
        )
    return texts


def split_corpus(texts: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of the sentences: (fine-tuning, held-out)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = round(len(texts) * heldout_fraction)
    if not 0 < cut < len(texts):
        raise ValueError(
            f"data.heldout_fraction={heldout_fraction} of {len(texts)} corpus texts leaves no fine-tuning or no "
            "held-out text: give more text or another fraction."
        )
    heldout = set(order[:cut])
    return [t for i, t in enumerate(texts) if i not in heldout], [t for i, t in enumerate(texts) if i in heldout]


def load_vocabulary_data(args) -> VocabularyData:
    """Read and check the table and the corpus of `args` (a `VocabularyDataArgs`)."""
    if args.source == "wordnet":
        from ..assets.offline import wordnet_dir
        from ..assets.wordnet import rare_word_vocabulary

        table, corpus = rare_word_vocabulary(wordnet_dir(), args.wordnet_words, seed=args.seed)
        tokens, texts = [row["token"] for row in table], [row["text"] for row in table]
    else:
        rows = load_rows(args.tokens, "data.tokens", args.split)
        tokens = _column(rows, args.token_column, "data.token_column")
        texts = _column(rows, args.text_column, "data.text_column")
        corpus_rows = [load_rows(source, "data.corpus", args.split) for source in args.corpus_sources]
        corpus = [text for rows in corpus_rows for text in _column(rows, args.corpus_column, "data.corpus_column")]
    pairs = check_table(tokens, texts)
    corpus = check_corpus(corpus, [p["tokens"] for p in pairs])
    train, heldout = split_corpus(corpus, args.heldout_fraction, args.seed)
    return VocabularyData(pairs, train, heldout)
