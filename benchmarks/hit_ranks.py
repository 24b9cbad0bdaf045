"""Per-user results kept small: the 1-based rank of each user's target in its top-k list (0: not in it), stored as
gzip'd, base64'd JSON in the results files; paired bootstraps read them back as per-user (recall@k, ndcg@k)."""

from __future__ import annotations

import base64
import gzip
import json
import math


def hit_ranks(rankings: dict) -> dict[str, int]:
    """user -> 1-based rank of the target in the user's list, 0 when absent (`rankings`: {user: {target, ranking}})."""
    return {
        u: (r["ranking"].index(r["target"]) + 1 if r["target"] in r["ranking"] else 0) for u, r in rankings.items()
    }


def pack(ranks: dict[str, int]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(ranks, sort_keys=True).encode(), mtime=0)).decode()


def unpack(text: str) -> dict[str, int]:
    return json.loads(gzip.decompress(base64.b64decode(text)))


def hits_from_ranks(ranks: dict[str, int], k: int = 10) -> dict[str, tuple[float, float]]:
    """Per-user (recall@k, ndcg@k) of one target per user, as `gti_peft.recsys.per_user_hits` gives them."""
    return {u: ((1.0, 1 / math.log2(r + 1)) if 0 < r <= k else (0.0, 0.0)) for u, r in ranks.items()}
