"""Leave-one-out ranking metrics: one target item per user, a ranked list of recommended items per user."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence


def target_ranks(rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable]) -> list[int | None]:
    """0-based position of each user's target in their ranking (`None` when it is absent).

    Raises `ValueError` when the lists differ in length or a ranking repeats an item.
    """
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} targets: pass one ranking per target.")
    ranks = []
    for user, (ranking, target) in enumerate(zip(rankings, targets)):
        ranking = list(ranking)
        if len(set(ranking)) != len(ranking):
            repeated = sorted({i for i in ranking if ranking.count(i) > 1}, key=ranking.index)
            raise ValueError(
                f"Ranking {user} repeats items {repeated[:5]}: each item may appear once; deduplicate it "
                "(e.g. list(dict.fromkeys(ranking)))."
            )
        ranks.append(ranking.index(target) if target in ranking else None)
    return ranks


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive integer, got {k!r}.")


def _recall(ranks: list[int | None], k: int) -> float:
    return sum(r is not None and r < k for r in ranks) / len(ranks) if ranks else 0.0


def _ndcg(ranks: list[int | None], k: int) -> float:
    gains = [1 / math.log2(r + 2) for r in ranks if r is not None and r < k]
    return sum(gains) / len(ranks) if ranks else 0.0


def recall_at_k(rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], k: int) -> float:
    """Share of users whose target is among their top `k` (= hit rate with one target per user)."""
    _check_k(k)
    return _recall(target_ranks(rankings, targets), k)


def ndcg_at_k(rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], k: int) -> float:
    """Mean over users of `1 / log2(rank + 2)` when the target's 0-based rank is `< k`, else 0."""
    _check_k(k)
    return _ndcg(target_ranks(rankings, targets), k)


def evaluate_rankings(
    rankings: Sequence[Sequence[Hashable]],
    targets: Sequence[Hashable],
    ks: Sequence[int] = (5, 10, 20),
    catalog_size: int | None = None,
) -> dict[str, float]:
    """`recall@k` and `ndcg@k` for each k, `coverage@max_k` (distinct items in the top max-k lists /
    `catalog_size`; only when it is given), `distinct_top1` (distinct first items) and `n_users`."""
    if not ks:
        raise ValueError("`ks` is empty: pass the cut-offs to report, e.g. ks=(5, 10, 20).")
    for k in ks:
        _check_k(k)
    if catalog_size is not None and catalog_size < 1:
        raise ValueError(f"`catalog_size` must be a positive integer (number of items), got {catalog_size}.")
    ranks = target_ranks(rankings, targets)
    out: dict[str, float] = {}
    for k in sorted(ks):
        out[f"recall@{k}"], out[f"ndcg@{k}"] = _recall(ranks, k), _ndcg(ranks, k)
    max_k = max(ks)
    if catalog_size is not None:
        recommended = {item for ranking in rankings for item in list(ranking)[:max_k]}
        out[f"coverage@{max_k}"] = len(recommended) / catalog_size
    out["distinct_top1"] = len({ranking[0] for ranking in rankings if len(ranking)})
    out["n_users"] = len(targets)
    return out


def format_metrics_table(named: Mapping[str, Mapping[str, float]], digits: int = 4) -> str:
    """A Markdown table with one row per method (`{"popularity": {...}, "gti": {...}}`) and one column
    per metric (first-seen order; a metric a method lacks shows as `-`)."""
    if not named:
        raise ValueError("`named` is empty: pass {method_name: metrics_dict}.")
    columns = list(dict.fromkeys(key for metrics in named.values() for key in metrics))

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    rows = [["method", *columns]]
    rows += [[name, *(cell(metrics.get(c)) for c in columns)] for name, metrics in named.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) + " |"
        for row in rows
    ]
    lines.insert(
        1,
        "|"
        + "|".join((":" if i == 0 else "") + "-" * (w + 1) + ("" if i == 0 else ":") for i, w in enumerate(widths))
        + "|",
    )
    return "\n".join(lines)


def per_user_hits(
    rankings: Mapping[Hashable, Sequence[Hashable]], targets: Mapping[Hashable, Hashable], k: int
) -> dict[Hashable, tuple[float, float]]:
    """user -> (recall@k, ndcg@k) terms of that one user: their means over users are `recall_at_k` / `ndcg_at_k`."""
    _check_k(k)
    users = list(rankings)
    missing = [u for u in users if u not in targets]
    if missing:
        raise ValueError(f"`targets` has no target for users {missing[:5]}: pass one target per ranked user.")
    ranks = target_ranks([rankings[u] for u in users], [targets[u] for u in users])
    return {u: (_recall([r], k), _ndcg([r], k)) for u, r in zip(users, ranks)}


def paired_bootstrap(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], samples: int = 5000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of `b[u] - a[u]` over the users both have, with a percentile bootstrap interval (users resampled).

    Pairing by user removes the between-user variance that two independent intervals would carry.
    """
    import torch

    users = [u for u in a if u in b]
    if not users:
        raise ValueError("`a` and `b` share no user: compare two systems evaluated on the same users.")
    if not 0 < level < 1 or samples < 1:
        raise ValueError(f"`level` must lie in (0, 1) and `samples` >= 1, got level={level!r}, samples={samples!r}.")
    diffs = torch.tensor([float(b[u]) - float(a[u]) for u in users], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = diffs[torch.randint(len(users), (samples, len(users)), generator=generator)].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"mean": diffs.mean().item(), "low": low, "high": high, "n_users": len(users)}
