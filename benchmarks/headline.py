"""The headline table (README, docs/results.md): GTI, mean, compute-matched mean, SASRec, BPR, popularity, same users.

Reads `results/quality-<profile>.json` (the LM arms, per-user hit ranks per seed) and
`results/classical_baselines.json` (SASRec, BPR and popularity from cornac on the same leave-one-out split). Each
row's difference to the mean start is a paired bootstrap over the users both ranked (per-user hits averaged over
the seeds they share).
"""

from __future__ import annotations

from common import ARM_LABELS, CLASSICAL_LABELS, load_result
from hit_ranks import unpack
from paired import METRICS, average_hits, bootstrap_difference, format_difference, load_hits, packed_hits

GTI_ARMS = ("gti_mix", "gti_mean")
LM_ROWS = {"mean": "mean start (no grounding)", "mean_compute_matched": "mean start, compute-matched"}


def _arm_hits(quality: dict, arm: str, seeds: list[int] | None = None) -> tuple[dict, list[int]]:
    runs = {int(k.split("seed")[1]): r for k, r in quality["runs"].items() if k.split("/")[0] == arm}
    seeds = sorted(runs) if seeds is None else [s for s in seeds if s in runs]
    return average_hits([packed_hits(runs[s]["hit_ranks_gz"]) for s in seeds]), seeds


def _classical_hits(classical: dict, method: str, users: list[str]) -> dict:
    """A classical method's per-user hits, from its hit ranks (or, in older files, its top-20 lists)."""
    if method in classical.get("hit_ranks_gz", {}):
        return packed_hits(classical["hit_ranks_gz"][method], users)
    return load_hits(classical["rankings"][method])


def _check_targets(quality: dict, classical: dict) -> None:
    """Both files must hold the same users' same test targets (checked where the classical file keeps its lists)."""
    stored = classical.get("rankings", {}).get("popularity")
    if stored is not None and any(stored.get(u, {}).get("target") != t for u, t in unpack(quality["test_targets_gz"])):
        raise ValueError("quality and classical_baselines results use different test targets: rerun one of them.")


def _row(name: str, hits: dict, seeds: str, seconds: float | None, reference: dict, popularity: float) -> str:
    recall = sum(h[0] for h in hits.values()) / len(hits)
    ndcg = sum(h[1] for h in hits.values()) / len(hits)
    if hits is reference:
        deltas = ["-", "-"]
    else:
        b = bootstrap_difference(reference, hits)
        deltas = [format_difference(b[m]) for m in METRICS]
    cost = "-" if seconds is None else f"{seconds / 60:.1f}"
    cells = [name, seeds, f"{recall:.4f}", f"{ndcg:.4f}", f"{recall / popularity:.2f}x", *deltas, cost]
    return "| " + " | ".join(cells) + " |"


def headline(profile: str = "cpu") -> list[str]:
    """Markdown lines of the headline table (empty when the quality runs or the baselines are missing)."""
    quality, classical = load_result(f"quality-{profile}"), load_result("classical_baselines")
    if quality is None or classical is None:
        return []
    quality["runs"] = {k: r for k, r in quality["runs"].items() if "hit_ranks_gz" in r}  # older results lack them
    if not any(k.startswith("mean/") for k in quality["runs"]) or not any(
        k.split("/")[0] in GTI_ARMS for k in quality["runs"]
    ):
        return []
    reference, mean_seeds = _arm_hits(quality, "mean")
    _check_targets(quality, classical)
    users = [u for u, _ in unpack(quality["test_targets_gz"])]
    popularity_hits = _classical_hits(classical, "popularity", users)
    popularity = sum(h[0] for h in popularity_hits.values()) / len(popularity_hits)
    present = [a for a in GTI_ARMS if any(k.startswith(f"{a}/") for k in quality["runs"])]
    best = max(present, key=lambda a: sum(h[0] for h in _arm_hits(quality, a)[0].values()))
    lines = [
        "| system | seeds | recall@10 | NDCG@10 | recall@10 vs popularity | recall@10 - mean [95% CI] | "
        "NDCG@10 - mean [95% CI] | training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in [best, *(a for a in present if a != best), *LM_ROWS]:
        if not any(k.startswith(f"{arm}/") for k in quality["runs"]):
            continue
        hits, seeds = (reference, mean_seeds) if arm == "mean" else _arm_hits(quality, arm)
        shared = [s for s in seeds if s in mean_seeds]
        paired = reference if arm == "mean" or not shared else _arm_hits(quality, "mean", shared)[0]
        runs = [quality["runs"][f"{arm}/seed{s}"] for s in seeds]
        seconds = sum(r["timings_s"].get("ground", 0) + r["timings_s"]["finetune"] for r in runs) / len(runs)
        name = ARM_LABELS[arm] if arm in GTI_ARMS else LM_ROWS[arm]
        name = f"**{name}** (best GTI)" if arm == best else name
        lines.append(_row(name, hits, ",".join(map(str, seeds)), seconds, paired, popularity))
    for method, name in CLASSICAL_LABELS.items():
        hits = popularity_hits if method == "popularity" else _classical_hits(classical, method, users)
        seconds = classical["metrics"][method]["train_seconds"]
        lines.append(_row(name, hits, "-", seconds if method != "popularity" else None, reference, popularity))
    excluded, users = classical["metrics"], len(reference)
    return [
        f"Every one of the {users} MovieLens-100k test users (leave-one-out, full ranking over the 1,682 items, "
        f"nothing excluded); LM arms: SmolLM2-135M-Instruct, `benchmarks/quality.py --profile {profile}` "
        f"(`{' '.join(quality['settings']['overrides'])}`), mean start seeds {','.join(map(str, mean_seeds))}; "
        "differences are paired bootstraps (5,000 resamples of the users) against the mean start averaged over the "
        f"same seeds. Training minutes: grounding + fine-tuning, each run on {quality['machine']}; cornac's on "
        f"{classical['machine']}.",
        "",
        *lines,
        "",
        "The LM arms rank the whole catalog, as the table's other rows do. Dropping each user's already-seen items "
        f"from the ranking lifts SASRec to {excluded['SASRec (history excluded)']['recall@10']:.4f} and BPR to "
        f"{excluded['BPR (history excluded)']['recall@10']:.4f} recall@10 (`benchmarks/classical_baselines.py`).",
        "",
    ]
