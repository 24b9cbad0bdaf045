"""Item vectors for semantic IDs: text (sentence encoder), collaborative (what users watch together) or both.

Collaborative vectors come from the TRAINING interactions only (pass the training part of a split, never the
validation/test targets): a truncated SVD of the item x user matrix, so items watched by the same users get
nearby vectors. `text+collaborative` concatenates the two, each L2-normalised, as LETTER combines semantic and
collaborative signals.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

EMBEDDINGS = ("text", "collaborative", "text+collaborative")
COLD_NEIGHBOURS = 10


def check_embedding(embedding: str) -> None:
    if embedding not in EMBEDDINGS:
        raise ValueError(f"semantic_ids.embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}.")


def collaborative_embeddings(
    item_ids: Sequence[str], train_histories: Mapping[str, Sequence[str]], dim: int = 64, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """L2-normalised item vectors `[len(item_ids), dim']` from a truncated SVD of the binary item x user matrix of
    `train_histories` (`dim' = min(dim, users - 1, items - 1)`), and the positions of items no user interacted
    with (their rows are zero: see :func:`item_embeddings` for what they get instead)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD

    index = {item: i for i, item in enumerate(item_ids)}
    unknown = sorted({item for items in train_histories.values() for item in items} - index.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} training items are not in `item_ids` (e.g. {unknown[:5]}): pass every item.")
    rows, cols = [], []
    for column, items in enumerate(train_histories.values()):
        for item in set(items):
            rows.append(index[item])
            cols.append(column)
    matrix = csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(item_ids), len(train_histories))
    )
    components = max(1, min(dim, min(matrix.shape) - 1))
    vectors = TruncatedSVD(n_components=components, random_state=seed).fit_transform(matrix)
    vectors = torch.nn.functional.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=-1)
    cold = sorted(set(range(len(item_ids))) - set(rows))
    return vectors, cold


def fill_cold_items(collaborative: torch.Tensor, text: torch.Tensor, cold: list[int]) -> torch.Tensor:
    """Cold items (no training interactions) get the mean collaborative vector of their `COLD_NEIGHBOURS` nearest
    warm items by text similarity: their likely audience, guessed from what they are."""
    if not cold:
        return collaborative
    warm = torch.ones(len(collaborative), dtype=torch.bool)
    warm[cold] = False
    if not warm.any():
        raise ValueError("No item has a training interaction: collaborative item vectors need some; use 'text'.")
    similarity = text[cold] @ text[warm].T
    nearest = similarity.topk(min(COLD_NEIGHBOURS, int(warm.sum())), dim=-1).indices
    filled = collaborative.clone()
    filled[cold] = torch.nn.functional.normalize(collaborative[warm][nearest].mean(1), dim=-1)
    return filled


def item_embeddings(
    embedding: str,
    text_vectors,
    item_ids: Sequence[str],
    train_histories: Mapping[str, Sequence[str]] | None,
    dim: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """The vectors `semantic_ids.embedding` names. `text_vectors` is a tensor or a zero-argument function giving
    one (the sentence embeddings of the items' texts, L2-normalised)."""
    text = text_vectors() if callable(text_vectors) else text_vectors
    return combine(embedding, text, collaborative_part(embedding, text, item_ids, train_histories, dim, seed))


def collaborative_part(
    embedding: str,
    text: torch.Tensor,
    item_ids: Sequence[str],
    train_histories: Mapping[str, Sequence[str]] | None,
    dim: int = 64,
    seed: int = 0,
) -> torch.Tensor | None:
    """The items' collaborative vectors, cold items filled from their text neighbours (`None` for `'text'`)."""
    check_embedding(embedding)
    if embedding == "text":
        return None
    if train_histories is None:
        raise ValueError(f"semantic_ids.embedding={embedding!r} needs the training interactions (train_histories).")
    collaborative, cold = collaborative_embeddings(item_ids, train_histories, dim, seed)
    if cold:
        message = (
            f"semantic_ids.embedding={embedding!r}: {len(cold)} of {len(item_ids)} items have no training "
            f"interactions (e.g. {[item_ids[i] for i in cold[:5]]}); their collaborative vector is the mean of their "
            f"{COLD_NEIGHBOURS} nearest items' by text."
        )
        warnings.warn(message, stacklevel=3)  # once in a run's output (a log line too would print it twice)
    return fill_cold_items(collaborative, text, cold)


def combine(embedding: str, text: torch.Tensor, collaborative: torch.Tensor | None) -> torch.Tensor:
    """What the quantizer codes: the text vectors, the collaborative ones, or both (each L2-normalised)."""
    check_embedding(embedding)
    if embedding == "text":
        return text
    if embedding == "collaborative":
        return collaborative
    return torch.cat([torch.nn.functional.normalize(text, dim=-1), collaborative], dim=-1) / np.sqrt(2)


def new_item_vectors(
    embedding: str, new_text: torch.Tensor, known_text: torch.Tensor, known_collaborative: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A growing catalog's new items have no interactions: each gets what a cold item got when the IDs were built,
    the mean collaborative vector of its `COLD_NEIGHBOURS` nearest known items by text. Returns the vectors to
    code and the collaborative vectors (kept with the IDs for the next extension)."""
    text = torch.cat([known_text, new_text])
    zeros = known_collaborative.new_zeros(len(new_text), known_collaborative.shape[1])
    cold = list(range(len(known_text), len(text)))
    collaborative = fill_cold_items(torch.cat([known_collaborative, zeros]), text, cold)[cold]
    return combine(embedding, new_text, collaborative), collaborative
