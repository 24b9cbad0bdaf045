"""Starting values for new-token rows: the baselines that GTI grounding starts from (or is compared with).

Statistics of the old rows are computed on the weight's own device, `CHUNK_ROWS` rows at a time, accumulated in
float32: no float32 copy of the whole (vocab x hidden) matrix and no vocabulary-sized index is ever built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

CHUNK_ROWS = 4096  # rows per chunk: the largest temporary is CHUNK_ROWS x hidden float32 (64 MB at hidden 4,096)


class OldIds:
    """The old vocabulary: ids below `n_rows` that are not new tokens, described without listing them.

    Args:
        n_rows: rows of the weight before GTI resized it.
        new_ids: the adapter's new token ids (those below `n_rows` are excluded from the old rows).
    """

    def __init__(self, n_rows: int, new_ids: Iterable[int]) -> None:
        self.n_rows = int(n_rows)
        self.excluded = frozenset(int(i) for i in new_ids if 0 <= i < self.n_rows)

    def __len__(self) -> int:
        return self.n_rows - len(self.excluded)

    def __contains__(self, token_id: int) -> bool:
        return 0 <= token_id < self.n_rows and token_id not in self.excluded

    def chunks(self, weight: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> Iterator[torch.Tensor]:
        """The old rows of `weight` (or of a 1-D bias) in float32 blocks of at most `chunk_rows` rows."""
        new = torch.tensor(sorted(self.excluded), dtype=torch.long)
        for start in range(0, self.n_rows, chunk_rows):
            stop = min(start + chunk_rows, self.n_rows)
            block = weight.detach()[start:stop].float()
            inside = new[(new >= start) & (new < stop)] - start
            if inside.numel():
                keep = torch.ones(stop - start, dtype=torch.bool, device=block.device)
                keep[inside.to(block.device)] = False
                block = block[keep]
            yield block


def old_mean(weight: torch.Tensor, old_ids: OldIds, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean of the old rows (float32, on the weight's device), summed in float32 chunks."""
    total = torch.zeros(weight.shape[1:], dtype=torch.float32, device=weight.device)
    for block in old_ids.chunks(weight, chunk_rows):
        total += block.sum(dim=0)
    return total / len(old_ids)


def _old_covariance(weight: torch.Tensor, old_ids: OldIds, mean: torch.Tensor) -> torch.Tensor:
    covariance = torch.zeros(weight.shape[1], weight.shape[1], dtype=torch.float32, device=weight.device)
    for block in old_ids.chunks(weight):
        centered = block - mean
        covariance += centered.T @ centered
    return covariance / len(old_ids)


def _hf_mean_rows(weight: torch.Tensor, old_ids: OldIds, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """transformers' `mean_resizing=True`: a draw from N(mean, 1e-9 * covariance of the old rows)."""
    mean = old_mean(weight, old_ids)
    covariance = _old_covariance(weight, old_ids, mean).cpu()
    mean = mean.cpu()
    try:
        lower = torch.linalg.cholesky(1e-9 * covariance)
    except torch.linalg.LinAlgError:
        # transformers falls back to the plain mean when the covariance is not positive definite
        return mean.expand(n_new, -1).clone()
    noise = torch.randn(n_new, weight.shape[1], generator=generator, dtype=torch.float32)
    return mean + noise @ lower.T


def _description_rows(weight: torch.Tensor, old_ids: OldIds, description_ids: list[list[int]]) -> torch.Tensor:
    rows = []
    for ids in description_ids:
        bad = [i for i in ids if i not in old_ids]
        if bad:
            raise ValueError(
                f"`description_token_ids` holds ids {bad[:5]} that are not old-vocabulary rows of this model "
                f"(old rows: ids below {old_ids.n_rows} that are not new tokens). Tokenize descriptions with the "
                "model's own tokenizer before adding anything else."
            )
        index = torch.tensor(ids, dtype=torch.long, device=weight.device)
        rows.append(weight.detach()[index].float().mean(dim=0).cpu())
    return torch.stack(rows)


def initial_rows(
    method: str,
    weight: torch.Tensor,
    old_ids: OldIds,
    n_new: int,
    *,
    description_ids: list[list[int]] | None = None,
    std: float = 0.02,
    seed: int = 0,
) -> torch.Tensor:
    """Rows (n_new x hidden, float32, on CPU) for the new tokens of an embedding or LM-head `weight`.

    `old_ids` says which rows count as the old vocabulary (ids that existed before resizing, minus new ids).
    """
    generator = torch.Generator().manual_seed(seed)
    if method == "mean":
        return old_mean(weight, old_ids).cpu().expand(n_new, -1).clone()
    if method == "hf_mean":
        return _hf_mean_rows(weight, old_ids, n_new, generator)
    if method == "random":
        return torch.randn(n_new, weight.shape[1], generator=generator) * std
    if method == "description":
        return _description_rows(weight, old_ids, description_ids)
    raise ValueError(f"Unknown init {method!r}.")


def initial_bias(bias: torch.Tensor, old_ids: OldIds, n_new: int) -> torch.Tensor:
    """New ids' LM-head bias: the mean of the old ids' bias (matches mean-initialized rows)."""
    return old_mean(bias.unsqueeze(-1), old_ids).cpu().expand(n_new).clone()


def description_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens: the `description_token_ids` of `GTIConfig`."""
    if isinstance(texts, str):
        raise ValueError("`texts` must be a list with one description per new token, got a single string.")
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise ValueError(f"`texts` has descriptions that tokenize to nothing: {empty[:3]}; give each token a text.")
    return ids
