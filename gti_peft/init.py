"""Starting values for new-token rows: the baselines that GTI grounding starts from (or is compared with)."""

from __future__ import annotations

import torch


def _mean_rows(old: torch.Tensor, n_new: int) -> torch.Tensor:
    return old.mean(dim=0, keepdim=True).expand(n_new, -1).clone()


def _hf_mean_rows(old: torch.Tensor, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """transformers' `mean_resizing=True`: a draw from N(mean, 1e-9 * covariance of the old rows)."""
    mean = old.mean(dim=0)
    centered = old - mean
    covariance = centered.T @ centered / old.shape[0]
    try:
        lower = torch.linalg.cholesky(1e-9 * covariance)
    except torch.linalg.LinAlgError:
        # transformers falls back to the plain mean when the covariance is not positive definite
        return _mean_rows(old, n_new)
    noise = torch.randn(n_new, old.shape[1], generator=generator, dtype=old.dtype)
    return mean + noise @ lower.T


def _description_rows(full: torch.Tensor, old_ids: torch.Tensor, description_ids: list[list[int]]) -> torch.Tensor:
    allowed = torch.zeros(full.shape[0], dtype=torch.bool)
    allowed[old_ids] = True
    rows = []
    for ids in description_ids:
        index = torch.tensor(ids, dtype=torch.long)
        if index.max() >= full.shape[0] or not allowed[index].all():
            bad = [i for i in ids if i >= full.shape[0] or not allowed[i]]
            raise ValueError(
                f"`description_token_ids` holds ids {bad[:5]} that are not old-vocabulary rows of this model "
                f"(old rows: ids below {full.shape[0]} that are not new tokens). Tokenize descriptions with the "
                "model's own tokenizer before adding anything else."
            )
        rows.append(full[index].mean(dim=0))
    return torch.stack(rows)


def initial_rows(
    method: str,
    weight: torch.Tensor,
    old_ids: torch.Tensor,
    n_new: int,
    *,
    description_ids: list[list[int]] | None = None,
    std: float = 0.02,
    seed: int = 0,
) -> torch.Tensor:
    """Rows (n_new x hidden, float32) for the new tokens of an embedding or LM-head `weight`.

    `old_ids` are the rows that count as the old vocabulary (ids that existed before resizing, minus new ids).
    """
    full = weight.detach().float().cpu()
    old = full[old_ids.cpu()]
    generator = torch.Generator().manual_seed(seed)
    if method == "mean":
        return _mean_rows(old, n_new)
    if method == "hf_mean":
        return _hf_mean_rows(old, n_new, generator)
    if method == "random":
        return torch.randn(n_new, full.shape[1], generator=generator) * std
    if method == "description":
        return _description_rows(full, old_ids, description_ids)
    raise ValueError(f"Unknown init {method!r}.")


def initial_bias(bias: torch.Tensor, old_ids: torch.Tensor, n_new: int) -> torch.Tensor:
    """New ids' LM-head bias: the mean of the old ids' bias (matches mean-initialized rows)."""
    return bias.detach().float().cpu()[old_ids.cpu()].mean().expand(n_new).clone()


def description_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens: the `description_token_ids` of `GTIConfig`."""
    if isinstance(texts, str):
        raise ValueError("`texts` must be a list with one description per new token, got a single string.")
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    empty = [t for t, i in zip(texts, ids) if not i]
    if empty:
        raise ValueError(f"`texts` has descriptions that tokenize to nothing: {empty[:3]}; give each token a text.")
    return ids
