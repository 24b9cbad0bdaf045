from __future__ import annotations

import math
import statistics

import pytest

from gti_peft.recsys.metrics import (
    evaluate_rankings,
    format_metrics_table,
    ndcg_at_k,
    paired_bootstrap,
    per_user_hits,
    recall_at_k,
    target_ranks,
)

# four users, one target each
RANKINGS = [
    ["a", "b", "c", "d"],  # target a at rank 0
    ["b", "c", "a", "e"],  # target a at rank 2
    ["c", "d", "e", "f"],  # target b absent
    ["d", "a", "b", "c"],  # target c at rank 3
]
TARGETS = ["a", "a", "b", "c"]


def test_target_ranks():
    assert target_ranks(RANKINGS, TARGETS) == [0, 2, None, 3]


def test_recall_by_hand():
    assert recall_at_k(RANKINGS, TARGETS, 1) == 1 / 4  # only user 0
    assert recall_at_k(RANKINGS, TARGETS, 3) == 2 / 4  # users 0 and 1
    assert recall_at_k(RANKINGS, TARGETS, 4) == 3 / 4  # users 0, 1 and 3
    assert recall_at_k(RANKINGS, TARGETS, 100) == 3 / 4  # rankings shorter than k are fine


def test_ndcg_by_hand():
    # gains 1/log2(rank + 2): rank 0 -> 1/log2(2) = 1; rank 2 -> 1/log2(4) = 0.5; rank 3 -> 1/log2(5) = 0.430677
    assert ndcg_at_k(RANKINGS, TARGETS, 1) == pytest.approx(1 / 4)
    assert ndcg_at_k(RANKINGS, TARGETS, 3) == pytest.approx((1 + 0.5) / 4)  # 0.375
    assert ndcg_at_k(RANKINGS, TARGETS, 4) == pytest.approx(
        (1 + 0.5 + 1 / math.log2(5)) / 4
    )  # 1.930677 / 4 = 0.482669
    assert ndcg_at_k(RANKINGS, TARGETS, 4) == pytest.approx(0.482669, abs=1e-6)


def test_evaluate_rankings_by_hand():
    out = evaluate_rankings(RANKINGS, TARGETS, ks=(3, 1), catalog_size=10)
    assert list(out) == ["recall@1", "ndcg@1", "recall@3", "ndcg@3", "coverage@3", "distinct_top1", "n_users"]
    assert out["recall@1"] == 0.25 and out["ndcg@1"] == pytest.approx(0.25)
    assert out["recall@3"] == 0.5 and out["ndcg@3"] == pytest.approx(0.375)
    # top-3 lists: {a,b,c} | {b,c,a} | {c,d,e} | {d,a,b} = {a,b,c,d,e}: 5 of 10 catalog items
    assert out["coverage@3"] == pytest.approx(0.5)
    assert out["distinct_top1"] == 4  # a, b, c, d
    assert out["n_users"] == 4
    # same first item for everyone (a popularity ranking) -> one distinct top-1 item
    assert evaluate_rankings([["x", "y"]] * 3, ["x", "y", "z"], ks=(1,))["distinct_top1"] == 1
    assert "coverage@1" not in evaluate_rankings([["x"]], ["x"], ks=(1,))  # no catalog size given


def test_empty_ranking_counts_as_miss():
    out = evaluate_rankings([[], ["a"]], ["a", "a"], ks=(1,), catalog_size=2)
    assert out["recall@1"] == 0.5 and out["distinct_top1"] == 1 and out["coverage@1"] == 0.5


def test_duplicate_items_in_a_ranking_raise():
    with pytest.raises(ValueError, match=r"Ranking 1 repeats items \['b'\]"):
        recall_at_k([["a", "b"], ["b", "c", "b"]], ["a", "b"], 2)
    with pytest.raises(ValueError, match="repeats items"):
        evaluate_rankings([["a", "a"]], ["a"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: recall_at_k(RANKINGS, TARGETS[:3], 5), "4 rankings for 3 targets"),
        (lambda: ndcg_at_k(RANKINGS, TARGETS, 0), "`k` must be a positive integer"),
        (lambda: evaluate_rankings(RANKINGS, TARGETS, ks=()), "`ks` is empty"),
        (lambda: evaluate_rankings(RANKINGS, TARGETS, catalog_size=0), "`catalog_size` must be a positive"),
    ],
)
def test_invalid_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_format_metrics_table():
    table = format_metrics_table(
        {
            "popularity": {"recall@10": 0.0312, "ndcg@10": 0.0151, "n_users": 943},
            "gti": {"recall@10": 0.04567, "ndcg@10": 0.02, "coverage@10": 0.5, "n_users": 943},
        }
    )
    lines = table.splitlines()
    assert len(lines) == 4  # header, separator, one row per method
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "method", "recall@10", "ndcg@10", "n_users", "coverage@10",
    ]  # fmt: skip
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["popularity", "0.0312", "0.0151", "943", "-"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["gti", "0.0457", "0.0200", "943", "0.5000"]
    assert set(lines[1]) <= set("|:-")
    assert len({len(line) for line in lines}) == 1  # columns aligned
    with pytest.raises(ValueError, match="`named` is empty"):
        format_metrics_table({})


def test_per_user_hits_average_to_the_metrics():
    users = [f"u{i}" for i in range(len(RANKINGS))]
    hits = per_user_hits(dict(zip(users, RANKINGS)), dict(zip(users, TARGETS)), 3)
    assert sum(h[0] for h in hits.values()) / len(hits) == recall_at_k(RANKINGS, TARGETS, 3)
    assert math.isclose(sum(h[1] for h in hits.values()) / len(hits), ndcg_at_k(RANKINGS, TARGETS, 3))
    assert hits["u1"] == (1.0, 1 / math.log2(4)) and hits["u3"] == (0.0, 0.0)  # rank 2 in, rank 3 out of top 3
    with pytest.raises(ValueError, match="no target for users"):
        per_user_hits({"x": ["a"]}, {}, 1)


def test_paired_bootstrap_known_answers():
    a = {u: float(u % 2) for u in range(200)}
    same = paired_bootstrap(a, a)
    assert same["mean"] == same["low"] == same["high"] == 0.0
    shifted = paired_bootstrap(a, {u: v + 0.25 for u, v in a.items()})  # every user gains 0.25: no spread
    assert math.isclose(shifted["low"], 0.25) and math.isclose(shifted["high"], 0.25)
    # b is a coin flip per user, unrelated to a: the interval holds the mean and is about +-2 standard errors
    coin = {u: float((u * 7919) % 3 == 0) for u in range(200)}
    result = paired_bootstrap(a, coin, seed=1)
    diffs = [coin[u] - a[u] for u in a]
    se = statistics.pstdev(diffs) / math.sqrt(len(diffs))
    assert result["low"] < result["mean"] < result["high"]
    assert math.isclose(result["high"] - result["low"], 2 * 1.96 * se, rel_tol=0.15)
    assert paired_bootstrap(a, coin, seed=1) == result  # seeded
    assert paired_bootstrap({"x": 1.0, "y": 0.0}, {"y": 1.0})["n_users"] == 1  # only shared users count
    with pytest.raises(ValueError, match="share no user"):
        paired_bootstrap({"x": 1.0}, {"y": 1.0})
    with pytest.raises(ValueError, match="level=1.5"):
        paired_bootstrap(a, a, level=1.5)
