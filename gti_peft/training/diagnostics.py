"""Geometry of new-token embedding rows: spectrum, effective rank, cosine structure, RSA, plots.

All functions take torch tensors or numpy arrays of shape `(n_rows, dim)` and compute in float64 on CPU,
except the large old-vocabulary matmuls, which run in float32 chunks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

Rows = torch.Tensor | np.ndarray
_CHUNK = 8192
_CHUNK_ELEMENTS = 2**24  # old-row blocks of at most 64 MB in float32, whatever the hidden size


def _as_rows(rows: Rows, name: str = "rows", min_rows: int = 1, dtype=torch.float64) -> torch.Tensor:
    """Validate a `(n_rows, dim)` matrix and return it as a CPU tensor of `dtype`."""
    t = rows.detach() if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows))
    if t.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D (n_rows, dim) matrix, got shape {tuple(t.shape)}; "
            "pass one row per token (use .reshape(1, -1) for a single row)."
        )
    if t.shape[0] < min_rows:
        raise ValueError(f"`{name}` has {t.shape[0]} row(s), needs at least {min_rows}; pass more rows.")
    t = t.to("cpu", dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` contains NaN or inf values; check the training run that produced them.")
    return t


def _normalize(t: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows; zero rows stay zero (cosine 0 to everything) instead of becoming NaN."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)


def _sample(n: int, size: int, seed: int) -> torch.Tensor:
    """`size` sorted indices out of `n` (all of them when `n <= size`), reproducible by `seed`."""
    if n <= size:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def singular_values(rows: Rows) -> torch.Tensor:
    """Singular values of `rows`, in descending order (float64)."""
    return torch.linalg.svdvals(_as_rows(rows))


def _eps(rows: Rows) -> float:
    """Rank tolerance unit: float64's eps for float64 input, float32's for anything less precise."""
    dtype = rows.dtype if hasattr(rows, "dtype") else np.asarray(rows).dtype
    is_double = dtype in (torch.float64, np.dtype(np.float64))
    return torch.finfo(torch.float64 if is_double else torch.float32).eps


def _kept(s: torch.Tensor, shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """Singular values above the numerical-rank tolerance `s_1 * max(n, d) * eps`."""
    return s[s > s[0] * max(shape) * eps] if s.numel() else s


def _entropy_rank(s: torch.Tensor, shape: tuple[int, ...], eps: float) -> float:
    s = _kept(s, shape, eps)
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank(rows: Rows) -> float:
    """Effective rank (Roy & Vetterli 2007): `exp(-sum p_i log p_i)` with `p_i = s_i / sum_j s_j`.

    Singular values below `s_1 * max(n, d) * eps` (eps of the input's precision, at most float32's) count
    as zero, so float rounding does not add rank. An all-zero matrix has effective rank 0.
    """
    t = _as_rows(rows)
    return _entropy_rank(torch.linalg.svdvals(t), tuple(t.shape), _eps(rows))


def cosine_matrix(rows: Rows) -> torch.Tensor:
    """`(n, n)` cosine similarities between rows; a zero row has cosine 0 to every row, itself included."""
    u = _normalize(_as_rows(rows))
    return u @ u.T


def cosine_stats(rows: Rows) -> dict[str, float]:
    """Mean and max cosine over distinct pairs of rows (off-diagonal), computed in chunks."""
    u = _normalize(_as_rows(rows, min_rows=2))
    n = u.shape[0]
    total = u.sum(0)
    mean = (total @ total - (u * u).sum()) / (n * (n - 1))
    best = -math.inf
    for start in range(0, n, _CHUNK):
        sims = u[start : start + _CHUNK] @ u.T
        idx = torch.arange(sims.shape[0])
        sims[idx, idx + start] = -math.inf
        best = max(best, float(sims.max()))
    return {"mean_cosine": float(mean), "max_cosine": best}


def nearest_old_tokens(
    new_row_or_rows: Rows, old_rows: Rows, k: int = 10, exclude_ids: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and cosines of the `k` old rows nearest to each new row, best first.

    A single 1-D row gives 1-D results, a `(n, d)` matrix gives `(n, k)`. `old_rows` (e.g. the full
    `V x d` embedding matrix) is processed in float32 chunks, never as one dense `V x n` float64 matrix.
    Ids in `exclude_ids` (e.g. the new tokens' own rows in the base matrix) are never returned.
    """
    new = new_row_or_rows if isinstance(new_row_or_rows, torch.Tensor) else np.asarray(new_row_or_rows)
    single = new.ndim == 1
    new = new.reshape(1, -1) if single else new
    q = _normalize(_as_rows(new, "new_row_or_rows", dtype=torch.float32))
    old = old_rows.detach() if isinstance(old_rows, torch.Tensor) else torch.as_tensor(np.asarray(old_rows))
    if old.ndim != 2 or old.shape[1] != q.shape[1]:
        raise ValueError(
            f"`old_rows` must be a 2-D (n_old, {q.shape[1]}) matrix matching the new rows' width, got shape "
            f"{tuple(old.shape)}; pass the base embedding matrix of the same model."
        )
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}; ask for at least one neighbour.")
    excluded = torch.as_tensor(list(exclude_ids) if exclude_ids is not None else [], dtype=torch.long)
    if excluded.numel() and (excluded.min() < 0 or excluded.max() >= old.shape[0]):
        raise ValueError(
            f"`exclude_ids` must lie in [0, {old.shape[0]}), got values {excluded.min()}..{excluded.max()}; "
            "pass token ids of `old_rows`."
        )
    k = min(k, old.shape[0] - int(excluded.unique().numel()))
    if k < 1:
        raise ValueError("`exclude_ids` excludes every old row; exclude fewer ids.")
    best_sims = torch.full((q.shape[0], 0), -math.inf)
    best_idx = torch.zeros((q.shape[0], 0), dtype=torch.long)
    chunk = max(1, min(_CHUNK, _CHUNK_ELEMENTS // q.shape[1]))
    for start in range(0, old.shape[0], chunk):
        block = _normalize(old[start : start + chunk].to("cpu", torch.float32))
        sims = q @ block.T
        local = excluded[(excluded >= start) & (excluded < start + block.shape[0])] - start
        sims[:, local] = -math.inf
        cat_sims = torch.cat([best_sims, sims], dim=1)
        cat_idx = torch.cat([best_idx, torch.arange(start, start + block.shape[0]).expand(q.shape[0], -1)], 1)
        best_sims, pos = cat_sims.topk(min(k, cat_sims.shape[1]), dim=1)
        best_idx = cat_idx.gather(1, pos)
    return (best_idx[0], best_sims[0]) if single else (best_idx, best_sims)


def _token_str(tokenizer: Any, token_id: int) -> str:
    """Readable text of one token: decoded when that is clean, the raw vocabulary entry otherwise."""
    if tokenizer is None:
        return f"#{token_id}"
    text = tokenizer.decode([token_id])
    return text if text.strip() and "\ufffd" not in text else str(tokenizer.convert_ids_to_tokens(token_id))


def nearest_tokens_table(
    tokenizer: Any, new_ids: list[int], new_rows: Rows, old_rows: Rows, k: int = 5, exclude_ids: Any = None
) -> list[tuple[str, list[tuple[str, float]]]]:
    """For each new token: its text and its `k` nearest old tokens as `(text, cosine)`.

    `old_rows` is indexed by token id; `exclude_ids` defaults to `new_ids` (their stale base rows).
    """
    if len(new_ids) != np.shape(new_rows)[0]:
        raise ValueError(
            f"`new_ids` has {len(new_ids)} ids but `new_rows` has {np.shape(new_rows)[0]} rows; "
            "pass one row per id, in the same order."
        )
    exclude = new_ids if exclude_ids is None else exclude_ids
    idx, sims = nearest_old_tokens(new_rows, old_rows, k=k, exclude_ids=exclude)
    return [
        (_token_str(tokenizer, int(tid)), [(_token_str(tokenizer, int(j)), float(c)) for j, c in zip(ri, rs)])
        for tid, ri, rs in zip(new_ids, idx, sims)
    ]


def _rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks; ties get the average of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(x))
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (no structure to correlate)."""
    a, b = a - a.mean(), b - b.mean()
    na, nb = np.sqrt(a @ a), np.sqrt(b @ b)
    if na < 1e-12 * math.sqrt(len(a)) or nb < 1e-12 * math.sqrt(len(b)):
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def rsa(rows: Rows, reference: Rows, max_rows: int | None = None, seed: int = 0) -> dict[str, float]:
    """Representational similarity analysis between `rows` and `reference` (same row count, any width).

    Correlates the off-diagonal upper triangles of both cosine matrices (Pearson and Spearman; ties get
    average ranks). If `max_rows` is set and smaller than the row count, the same random `max_rows` rows
    are taken from both. A constant cosine matrix (e.g. mean-initialized rows) scores 0.0, not NaN.
    """
    a = _as_rows(rows, "rows", min_rows=3)
    b = _as_rows(reference, "reference", min_rows=3)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`rows` has {a.shape[0]} rows but `reference` has {b.shape[0]}; RSA needs one reference row "
            "per token, in the same order (e.g. stack the codebooks level by level)."
        )
    if max_rows is not None:
        keep = _sample(a.shape[0], max(max_rows, 3), seed)
        a, b = a[keep], b[keep]
    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    # rounding makes float-noise near-ties exact ties, so they cannot produce a spurious rank order
    ta = np.round(cosine_matrix(a)[iu[0], iu[1]].numpy(), 12)
    tb = np.round(cosine_matrix(b)[iu[0], iu[1]].numpy(), 12)
    return {"pearson": _pearson(ta, tb), "spearman": _pearson(_rank(ta), _rank(tb))}


def summarize(
    new_rows: Rows,
    old_rows: Rows | None = None,
    reference: Rows | None = None,
    n_old: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """JSON-serializable summary: rank, spectrum head, cosine structure, similarity to old rows, RSA."""
    t = _as_rows(new_rows, "new_rows", min_rows=2)
    s = torch.linalg.svdvals(t)
    rank = _entropy_rank(s, tuple(t.shape), _eps(new_rows))
    out: dict[str, Any] = {"n_rows": int(t.shape[0]), "dim": int(t.shape[1]), "effective_rank": rank}
    out["top_singular_values"] = [float(v) for v in s[:10]]
    out.update(cosine_stats(t))
    out["mean_norm"] = float(t.norm(dim=1).mean())
    if old_rows is not None:
        n_all = np.shape(old_rows)[0]
        old = _as_rows(old_rows[_sample(n_all, n_old, seed).numpy()], "old_rows")
        if old.shape[1] != t.shape[1]:
            raise ValueError(f"`old_rows` width {old.shape[1]} != `new_rows` width {t.shape[1]}; same model?")
        out["mean_cosine_to_old"] = float((_normalize(t) @ _normalize(old).T).mean())
        out["old_mean_cosine"] = cosine_stats(old)["mean_cosine"] if old.shape[0] > 1 else None
        out["old_mean_norm"] = float(old.norm(dim=1).mean())
    if reference is not None:
        n_ref = np.shape(reference)[0]
        if n_ref > t.shape[0]:
            raise ValueError(f"`reference` has {n_ref} rows but there are only {t.shape[0]} new rows; align them.")
        r = rsa(t[:n_ref], reference, max_rows=4096, seed=seed)
        out.update(rsa_pearson=r["pearson"], rsa_spearman=r["spearman"], rsa_rows=min(n_ref, 4096))
    return out


def summarize_model(model, reference: Rows | None = None, n_old: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`summarize` of a GTI model's (input) new rows against a sample of its old rows.

    `reference` rows line up with the first `len(reference)` new tokens (e.g. a quantizer's codebook vectors:
    tokens without one, such as disambiguation codes, come last and are left out of RSA only).
    """
    from ..method.model import new_token_rows

    ids, rows, _ = new_token_rows(model)
    weight = model.get_input_embeddings().base_weight.detach()
    is_new = torch.zeros(weight.shape[0], dtype=torch.bool)
    is_new[ids] = True
    old_ids = (~is_new).nonzero().squeeze(-1)
    sample = old_ids[_sample(len(old_ids), n_old, seed)].to(weight.device)
    return summarize(rows.detach().float().cpu(), weight[sample].float().cpu(), reference, n_old=n_old, seed=seed)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " ".join(_fmt(v) for v in value[:3]) + (" ..." if len(value) > 3 else "")
    if isinstance(value, (bool, int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_table(summaries: dict[str, dict]) -> str:
    """Plain-text table of `summarize` outputs: one row per metric, one column per stage."""
    metrics: list[str] = []
    for summary in summaries.values():
        metrics += [m for m in summary if m not in metrics]
    header = ["metric", *summaries]
    body = [[m, *(_fmt(s.get(m)) for s in summaries.values())] for m in metrics]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *body]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectrum(stage_to_rows: dict[str, Rows], path: str | Path) -> Path:
    """Normalized singular values `s_i / s_1` (log y), one line per stage, effective ranks in the legend."""
    if not stage_to_rows:
        raise ValueError("`stage_to_rows` is empty; pass e.g. {'init': rows0, 'grounded': rows1}.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, rows in stage_to_rows.items():
        t = _as_rows(rows, f"stage_to_rows[{stage!r}]")
        s = _kept(torch.linalg.svdvals(t), tuple(t.shape), _eps(rows))  # float-rounding tail dropped
        rank = _entropy_rank(s, tuple(t.shape), 0.0)
        y = (s / s[0]).numpy() if s.numel() else s.numpy()
        marker = "o" if len(y) <= 20 else None
        ax.plot(np.arange(1, len(y) + 1), y, marker=marker, label=f"{stage} (eff. rank {rank:.1f})")
    ax.set(yscale="log", xlabel="index i", ylabel="s_i / s_1", title="Singular value spectrum of new-token rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_cosine_matrix(
    new_rows: Rows,
    path: str | Path,
    old_rows: Rows | None = None,
    n_old: int = 64,
    labels: list[str] | None = None,
    max_new: int = 1024,
    seed: int = 0,
) -> Path:
    """Heatmap of cosines among new rows, with `n_old` sampled old rows appended for contrast.

    More than `max_new` new rows are thinned evenly (keeping their order, e.g. the SID hierarchy).
    """
    new = _as_rows(new_rows, "new_rows")
    if labels is not None and len(labels) != new.shape[0]:
        raise ValueError(f"`labels` has {len(labels)} entries for {new.shape[0]} rows; pass one label per row.")
    keep = np.unique(np.linspace(0, new.shape[0] - 1, min(max_new, new.shape[0])).round().astype(int))
    new, labels = new[keep], [labels[i] for i in keep] if labels is not None else None
    blocks, n_new = [new], new.shape[0]
    if old_rows is not None and n_old > 0:
        blocks.append(_as_rows(old_rows[_sample(np.shape(old_rows)[0], n_old, seed).numpy()], "old_rows"))
    sims = cosine_matrix(torch.cat(blocks)).numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(sims, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="cosine")
    if len(blocks) > 1:
        for f in (ax.axhline, ax.axvline):
            f(n_new - 0.5, color="black", linewidth=1)
    if labels is not None:  # at most ~16 labels per axis, evenly spaced, so they stay legible
        ticks = list(range(0, n_new, math.ceil(sims.shape[0] / 16)))
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
    ax.set(xlabel="token (new first, then sampled old)", ylabel="token")
    extra = f" + {sims.shape[0] - n_new} sampled old tokens (after the line)" if len(blocks) > 1 else ""
    ax.set_title(f"Cosine similarity: {n_new} new tokens{extra}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
