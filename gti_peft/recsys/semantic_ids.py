"""Semantic IDs: item text -> sentence embedding -> residual quantizer codes -> new LM tokens.

Each item gets one code per level (`<a_12><b_7><c_3>`); each (level, code) pair is one new token. If some items
share all codes, EVERY ID gets one more level (`<d_0>`, `<d_1>`, ... numbering the items that share a prefix,
in item order), so IDs are unique and all have the same length. Saved as one `.safetensors` file that also
keeps the codebooks, the quantizer, the encoder's name and, for IDs that encode what users watch together, the
items' collaborative vectors, so a catalog can grow (:meth:`SemanticIDs.extend`)."""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..assets.offline import resolve
from ..sharing.adapter_format import SEMANTIC_IDS_NAME
from .collaborative import check_embedding
from .quantizers import (
    METHODS,
    Projection,
    assign_codes,
    balanced_residual_kmeans,
    check_quantizer_args,
    residual_kmeans,
    rqvae,
)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SAVE_NAME = SEMANTIC_IDS_NAME  # the file's name in an adapter or run folder
_FORMAT = "gti_peft.semantic_ids"


def embed_texts(
    texts: Sequence[str],
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_length: int = 256,
    show_progress: bool = True,
) -> torch.Tensor:
    """Sentence embeddings `[len(texts), hidden]`: mean of the last hidden state over the attention mask,
    L2-normalised. `encoder` is any Hub id or local folder of an `AutoModel` (`offline:*` names too)."""
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not texts or bad:
        raise ValueError(f"`texts` must be a non-empty list of strings; got {len(texts)}, bad entries {bad[:5]}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    # longest texts first: batches of similar length waste less padding; the order is restored below
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), model.config.hidden_size)
    for start in tqdm(range(0, len(texts), batch_size), desc="Embedding texts", disable=not show_progress):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
    return out


def _default_level_names(n: int) -> list[str]:
    return [string.ascii_lowercase[i] if i < 26 else f"l{i}" for i in range(n)]


@dataclass(eq=False, repr=False)
class SemanticIDs:
    """Items' semantic IDs and the quantizer codebooks they come from.

    Args:
        item_ids: one unique id per item.
        codes: `LongTensor[n_items, levels]` quantizer codes.
        codebooks: one `[codes_per_level, dim]` tensor per level.
        level_names: token prefix per level (default `a, b, c, ...`); may name the disambiguation level
            too, otherwise it gets the next free letter.
        method: the builder of the codes, one of `METHODS`.
        encoder: the sentence encoder that embedded the item texts (needed to code new items).
        projection: RQ-VAE's encoder layers `[(weight, bias), ...]` into the codebooks' space, else `None`.
        embedding: what the coded vectors hold (`semantic_ids.embedding`): `"text"`, `"collaborative"` or
            `"text+collaborative"`.
        collaborative: `[n_items, dim]` the items' collaborative vectors (any embedding but `"text"`): a new
            item's comes from its text neighbours' (:func:`~gti_peft.recsys.collaborative.new_item_vectors`).
    """

    item_ids: list[str]
    codes: torch.LongTensor
    codebooks: list[torch.Tensor]
    level_names: list[str] | None = None
    method: str = "residual_kmeans"
    encoder: str | None = None
    projection: Projection | None = None
    embedding: str = "text"
    collaborative: torch.Tensor | None = None
    # set in __post_init__: codes plus the disambiguation column when items collide
    full_codes: torch.LongTensor = field(init=False)

    def __post_init__(self):
        self.item_ids = _check_item_ids(self.item_ids, allow_empty=True)
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}.")
        self.codes = torch.as_tensor(self.codes, dtype=torch.long)
        n, levels = self.codes.shape
        if len(self.item_ids) != n or len(self.codebooks) != levels:
            raise ValueError(
                f"{len(self.item_ids)} `item_ids` and {len(self.codebooks)} `codebooks` do not match "
                f"`codes` of shape {tuple(self.codes.shape)} (one row per item, one codebook per level)."
            )
        check_embedding(self.embedding)
        if (self.embedding == "text") != (self.collaborative is None) or (
            self.collaborative is not None and len(self.collaborative) != n
        ):
            raise ValueError(
                f"`collaborative` must hold one vector per item ({n}) for embedding={self.embedding!r} IDs and be "
                f"None for 'text' IDs, got {None if self.collaborative is None else tuple(self.collaborative.shape)}."
            )
        for level, book in enumerate(self.codebooks):
            if n and not 0 <= self.codes[:, level].min() <= self.codes[:, level].max() < book.shape[0]:
                raise ValueError(f"`codes` of level {level} fall outside its {book.shape[0]}-row codebook.")
        seen: dict[tuple[int, ...], int] = {}
        extra = []
        for row in self.codes.tolist():
            extra.append(seen.get(tuple(row), 0))
            seen[tuple(row)] = extra[-1] + 1
        self.full_codes = self.codes
        if extra and max(extra) > 0:
            self.full_codes = torch.cat([self.codes, torch.tensor(extra)[:, None]], dim=1)
        n_total = self.full_codes.shape[1]
        names = list(self.level_names) if self.level_names is not None else _default_level_names(levels)
        if len(names) == levels < n_total:
            names.append(next(c for c in _default_level_names(2 * n_total) if c not in names))
        if len(names) != n_total or len(set(names)) != n_total:
            raise ValueError(f"`level_names` must be {n_total} distinct names (one per level), got {names}.")
        self.level_names = names
        rows = self.full_codes.tolist()
        self._sids = ["".join(self.token(lv, c) for lv, c in enumerate(row)) for row in rows]
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        self._by_sid = dict(zip(self._sids, self.item_ids))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SemanticIDs):
            return NotImplemented
        mine, theirs = self._fields_and_tensors(), other._fields_and_tensors()
        same_sizes = len(mine[1]) == len(theirs[1]) and mine[0] == theirs[0]
        return same_sizes and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(mine[1], theirs[1]))

    def _fields_and_tensors(self) -> tuple[list, list[torch.Tensor]]:
        fields = [self.item_ids, self.level_names, self.method, self.encoder, self.projection is None, self.embedding]
        layers = [t for layer in self.projection or [] for t in layer]
        collaborative = [] if self.collaborative is None else [self.collaborative]
        return fields, [self.codes, *self.codebooks, *layers, *collaborative]

    def __repr__(self) -> str:
        sizes, names = self.level_sizes, self.level_names
        return (
            f"SemanticIDs(n_items={len(self)}, method={self.method!r}, levels={names}, sizes={sizes}, "
            f"collisions={self.n_collisions})"
        )

    @classmethod
    def from_embeddings(
        cls,
        item_ids: Sequence[str],
        embeddings: torch.Tensor,
        levels: int = 3,
        codes_per_level: int = 32,
        seed: int = 0,
        method: str = "residual_kmeans",
        encoder: str | None = None,
        embedding: str = "text",
        collaborative: torch.Tensor | None = None,
    ) -> SemanticIDs:
        """Quantize precomputed item embeddings `[n_items, dim]` with `method`: `"residual_kmeans"`
        (:func:`residual_kmeans`), `"balanced"` (:func:`balanced_residual_kmeans`) or `"rqvae"`
        (:func:`rqvae`). `encoder` names the sentence encoder of the items' texts, `embedding` what the vectors
        hold and `collaborative` the items' collaborative vectors (all kept for :meth:`extend`)."""
        item_ids = _check_item_ids(item_ids)
        if len(item_ids) != len(embeddings):
            raise ValueError(f"{len(item_ids)} `item_ids` but {len(embeddings)} `embeddings`: they must match.")
        check_quantizer_args(len(item_ids), levels, codes_per_level, method)
        projection = None
        if method == "rqvae":
            codes, codebooks, projection = rqvae(embeddings, levels, codes_per_level, seed)
        elif method == "balanced":
            codes, codebooks = balanced_residual_kmeans(embeddings, levels, codes_per_level, seed)
        else:
            codes, codebooks = residual_kmeans(embeddings, levels, codes_per_level, seed)
        return cls(item_ids, codes, codebooks, None, method, encoder, projection, embedding, collaborative)

    @classmethod
    def build(
        cls,
        item_ids: Sequence[str],
        texts: Sequence[str],
        encoder: str = DEFAULT_ENCODER,
        levels: int = 3,
        codes_per_level: int = 32,
        seed: int = 0,
        batch_size: int = 64,
        device: str | None = None,
        method: str = "residual_kmeans",
    ) -> SemanticIDs:
        """Embed each item's text with `encoder`, then quantize (see :meth:`from_embeddings`)."""
        item_ids = _check_item_ids(item_ids)
        if len(texts) != len(item_ids):
            raise ValueError(f"{len(item_ids)} `item_ids` but {len(texts)} `texts`: pass one text per item.")
        check_quantizer_args(len(item_ids), levels, codes_per_level, method)  # before loading any model
        embeddings = embed_texts(texts, encoder, batch_size=batch_size, device=device)
        return cls.from_embeddings(item_ids, embeddings, levels, codes_per_level, seed, method, encoder)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def has_disambiguation(self) -> bool:
        """Whether some items share all quantizer codes, so every ID carries one more level."""
        return self.full_codes.shape[1] > self.codes.shape[1]

    @property
    def level_sizes(self) -> list[int]:
        """Tokens per level (the disambiguation level has as many as the largest collision group)."""
        sizes = [book.shape[0] for book in self.codebooks]
        return sizes + [int(self.full_codes[:, -1].max()) + 1] if self.has_disambiguation else sizes

    @property
    def n_collisions(self) -> int:
        """Items whose quantizer codes repeat an earlier item's (their `<d_k>` has `k > 0`)."""
        return int((self.full_codes[:, -1] > 0).sum()) if self.has_disambiguation else 0

    def token(self, level: int, code: int) -> str:
        return f"<{self.level_names[level]}_{code}>"

    def tokens_for(self, item_id: str) -> str:
        """The item's ID as one string of new tokens, e.g. `"<a_12><b_7><c_3>"`."""
        if item_id not in self._index:
            raise KeyError(f"Unknown item {item_id!r}: it has no semantic ID.")
        return self._sids[self._index[item_id]]

    def item_for(self, sid: str) -> str | None:
        """The item whose ID is `sid` (a string of tokens), or `None` when no item has it."""
        return self._by_sid.get(sid)

    def token_lists(self) -> dict[str, list[str]]:
        """`{item_id: [token, ...]}` for every item, in item order: the ID as its new tokens, one per level."""
        return {
            item: [self.token(level, code) for level, code in enumerate(row)]
            for item, row in zip(self.item_ids, self.full_codes.tolist())
        }

    def to_dict(self) -> dict[str, str]:
        """`{item_id: sid_string}` for every item, in item order."""
        return dict(zip(self.item_ids, self._sids))

    def vocabulary(self, include_disambiguation: bool = True) -> list[str]:
        """Every new token, level by level then code by code, including codes that no item uses."""
        sizes = self.level_sizes[: len(self.codebooks)] if not include_disambiguation else self.level_sizes
        return [self.token(level, code) for level, size in enumerate(sizes) for code in range(size)]

    def codebook_for_tokens(self) -> torch.Tensor:
        """`[L*K, dim]`: the codebook vector of each token of `vocabulary(include_disambiguation=False)`
        (the disambiguation tokens have none and are left out), for RSA diagnostics."""
        return torch.cat(self.codebooks, dim=0)

    def assign(self, embeddings: torch.Tensor) -> torch.LongTensor:
        """Quantizer codes `[n, levels]` of new embeddings from the saved codebooks (nothing is re-clustered)."""
        return assign_codes(embeddings, self.codebooks, self.projection)[0]

    def extend(
        self, item_ids: Sequence[str], embeddings: torch.Tensor, collaborative: torch.Tensor | None = None
    ) -> SemanticIDs:
        """These IDs plus new items coded from the saved codebooks; every old item keeps its ID.

        `embeddings` must come from the same encoder (and, for IDs that are not text-only, be built by
        :func:`~gti_peft.recsys.collaborative.new_item_vectors`, whose `collaborative` vectors go along). With a
        disambiguation level, a new item whose codes are taken gets the next free `<d_k>` (a new token only when
        `k` is past the last one). Without one, it takes the nearest last-level code that is still free under its
        prefix (no new token); when every one is taken a `ValueError` says so. Balanced IDs code new items by the
        nearest centroid (no capacity limit).
        """
        item_ids = _check_item_ids(item_ids)
        known = [i for i in item_ids if i in self._index]
        if known:
            raise ValueError(f"{len(known)} new items already have semantic IDs, e.g. {known[:5]}: drop them.")
        if len(item_ids) != len(embeddings):
            raise ValueError(f"{len(item_ids)} `item_ids` but {len(embeddings)} `embeddings`: they must match.")
        expected = self.projection[0][0].shape[1] if self.projection else self.codebooks[0].shape[1]
        if embeddings.ndim != 2 or embeddings.shape[1] != expected:
            raise ValueError(
                f"`embeddings` have shape {tuple(embeddings.shape)} but the codebooks take {expected}-dim vectors: "
                f"embed the new items with the encoder the IDs were built with ({self.encoder!r}). Collaborative "
                "IDs saved before they kept their items' collaborative vectors cannot grow: rebuild them."
            )
        if (self.collaborative is None) != (collaborative is None):
            raise ValueError(
                f"These are {self.embedding!r} IDs: pass `collaborative` vectors for the new items exactly when the "
                "IDs keep them (any embedding but 'text'; see gti_peft.recsys.collaborative.new_item_vectors)."
            )
        codes, last_distances = assign_codes(embeddings, self.codebooks, self.projection)
        if not self.has_disambiguation:
            codes = self._free_last_codes(codes, last_distances)
        return SemanticIDs(
            [*self.item_ids, *item_ids],
            torch.cat([self.codes, codes]),
            self.codebooks,
            self.level_names,
            self.method,
            self.encoder,
            self.projection,
            self.embedding,
            None if collaborative is None else torch.cat([self.collaborative, collaborative.float()]),
        )

    def _free_last_codes(self, codes: torch.LongTensor, last_distances: torch.Tensor) -> torch.LongTensor:
        taken = {tuple(row) for row in self.codes.tolist()}
        codes = codes.clone()
        for row, distances in zip(codes, last_distances):
            prefix = tuple(row[:-1].tolist())
            free = [c for c in distances.argsort().tolist() if prefix + (c,) not in taken]
            if not free:
                raise ValueError(
                    f"Every last-level code under the prefix {list(prefix)} is taken and these IDs have no "
                    "disambiguation level: rebuild the semantic IDs with more codes_per_level."
                )
            row[-1] = free[0]
            taken.add(prefix + (free[0],))
        return codes

    def save(self, path: str | Path) -> Path:
        """Write ONE `.safetensors` file: codes and codebooks as tensors, item ids and level names as JSON in
        its metadata. A path not ending in `.safetensors` is a folder that gets `semantic_ids.safetensors`."""
        from safetensors.torch import save_file

        path = Path(path) if str(path).endswith(".safetensors") else Path(path) / SAVE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"codes": self.codes.contiguous()}
        tensors.update({f"codebook_{i}": book.detach().float().contiguous() for i, book in enumerate(self.codebooks)})
        for i, (weight, bias) in enumerate(self.projection or []):
            tensors |= {f"projection_{i}.weight": weight.contiguous(), f"projection_{i}.bias": bias.contiguous()}
        if self.collaborative is not None:
            tensors["collaborative"] = self.collaborative.detach().float().contiguous()
        meta = {"format": _FORMAT, "version": 2, "item_ids": self.item_ids, "level_names": self.level_names}
        meta |= {"method": self.method, "encoder": self.encoder, "embedding": self.embedding}
        save_file(tensors, str(path), metadata={_FORMAT: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SemanticIDs:
        """Read what :meth:`save` wrote (a `.safetensors` file or the folder holding it)."""
        from safetensors import safe_open

        path = Path(path) / SAVE_NAME if Path(path).is_dir() else Path(path)
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_FORMAT)
            if header is None:
                raise ValueError(f"{path} is not a semantic-IDs file (no {_FORMAT!r} metadata).")
            meta = json.loads(header)
            keys = set(f.keys())
            codebooks = [f.get_tensor(f"codebook_{i}") for i in range(sum(k.startswith("codebook_") for k in keys))]
            layers = sum(k.startswith("projection_") for k in keys) // 2
            projection = [
                (f.get_tensor(f"projection_{i}.weight"), f.get_tensor(f"projection_{i}.bias")) for i in range(layers)
            ]
            codes = f.get_tensor("codes")
            collaborative = f.get_tensor("collaborative") if "collaborative" in keys else None
        # version 1 files (no method/encoder) were residual k-means; their encoder is unknown. Files without an
        # embedding hold text IDs, or collaborative ones saved without their vectors (which cannot grow)
        method, encoder = meta.get("method", "residual_kmeans"), meta.get("encoder")
        names, embedding = meta["level_names"], meta.get("embedding", "text")
        return cls(
            meta["item_ids"], codes, codebooks, names, method, encoder, projection or None, embedding, collaborative
        )


def _check_item_ids(item_ids: Sequence[str], allow_empty: bool = False) -> list[str]:
    item_ids = [str(i) for i in item_ids]
    if not item_ids and not allow_empty:
        raise ValueError("`item_ids` is empty: pass the catalog's item ids (one per item).")
    duplicates = [item for item, count in Counter(item_ids).items() if count > 1]
    if duplicates:
        raise ValueError(f"`item_ids` has {len(duplicates)} duplicates, e.g. {duplicates[:5]}; deduplicate the items.")
    return item_ids
