"""Per-user hits and paired-bootstrap comparisons shared by the benchmarks that compare runs on the same users."""

from __future__ import annotations

from collections.abc import Iterable

from hit_ranks import hits_from_ranks, unpack

from gti_peft.recsys import paired_bootstrap, per_user_hits

METRICS = ("recall@10", "ndcg@10")


def load_hits(rankings: dict, k: int = 10) -> dict[str, tuple[float, float]]:
    """user -> (recall@k, ndcg@k) from a run's rankings ({user: {"target", "ranking"}}, as in rankings.json)."""
    targets = {u: r["target"] for u, r in rankings.items()}
    return per_user_hits({u: r["ranking"] for u, r in rankings.items()}, targets, k)


def packed_hits(packed: str, users: Iterable[str] | None = None, k: int = 10) -> dict[str, tuple[float, float]]:
    """user -> (recall@k, ndcg@k) from packed hit ranks (`hit_ranks.pack`), in `users`' order where given (a
    bootstrap resamples users in the order of its first argument)."""
    hits = hits_from_ranks(unpack(packed), k)
    return hits if users is None else {u: hits[u] for u in users if u in hits}


def average_hits(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """Per-user hits averaged over seeds (users every run has)."""
    users = sorted(set.intersection(*(set(r) for r in runs)))  # a fixed order: the bootstrap is reproducible
    return {u: tuple(sum(r[u][m] for r in runs) / len(runs) for m in (0, 1)) for u in users}


def format_difference(bootstrap: dict, digits: int = 4) -> str:
    """`+mean [+low, +high]` of one `paired_bootstrap` result."""
    return "{mean:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]".format(d=digits, **bootstrap)


def bootstrap_difference(a: dict, b: dict) -> dict:
    """Paired bootstrap of b minus a (per-user hits from `load_hits` / `average_hits`) on recall@10 and ndcg@10."""
    return {
        metric: paired_bootstrap({u: h[i] for u, h in a.items()}, {u: h[i] for u, h in b.items()})
        for i, metric in enumerate(METRICS)
    }
