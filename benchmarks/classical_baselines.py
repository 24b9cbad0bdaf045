"""Classical baselines on the recipe's own split, users and metrics: popularity, BPR and SASRec (Cornac).

MovieLens-100k -> ``user_histories(min_interactions=3)`` -> ``leave_one_out`` (test target = last item, valid =
second to last, train = the rest), full ranking over all 1,682 items for every test user, metrics from
``evaluate_rankings`` on the top-20 lists. Nothing is excluded from a ranking (items already in the history
may be recommended), as in the LLM arms' constrained beam search; the rows "(history excluded)" add the
RecBole/Cornac convention (the user's history items removed) from the same trained models.

BPR's few settings are chosen on the valid targets (NDCG@10); SASRec keeps its best epoch on them. The JSON
holds every user's top-20 list with its target, in the shape of the recipe's ``rankings.json``, and every
method's per-user hit ranks (``hit_ranks_gz``: gzip, see hit_ranks.py), for paired bootstraps against the LLM arms.
Popularity, too, is reported with each user's history excluded (the recipe's `evaluation.exclude_history`).
``--from-results`` reuses the BPR and SASRec rankings of an earlier results file (same split and targets) instead
of training them again: popularity and the tables are recomputed.

    flock /tmp/gti-heavy.lock python benchmarks/classical_baselines.py   # about 15-20 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from baselines import BPRConfig, SASRecConfig, bpr_rankings, require_baseline_library, sasrec_rankings
from environment import run_environment
from hit_ranks import hit_ranks, pack

from gti_peft.recsys import (
    evaluate_rankings,
    format_metrics_table,
    leave_one_out,
    load_movielens_100k,
    popularity_ranking,
    user_histories,
)

RESULTS = Path(__file__).parent / "results" / "classical_baselines.json"
TOP_K = 20
UNSEEN = "{} (history excluded)"  # not the LLM arms' convention: shown to separate model from convention
KS = (5, 10, 20)
BPR_GRID = [{"learning_rate": lr, "max_iter": n} for lr in (0.01, 0.05) for n in (100, 300)]  # factors 64


def metrics_of(rankings: dict[str, list[str]], examples, catalog_size: int) -> dict:
    users = [ex["user"] for ex in examples]
    return evaluate_rankings(
        [rankings[u] for u in users], [ex["target"] for ex in examples], ks=KS, catalog_size=catalog_size
    )


def tune_bpr(split, catalog, seed: int) -> tuple[BPRConfig, list[dict]]:
    """The BPR setting with the best valid NDCG@10 (ties: the first in ``BPR_GRID``)."""
    trials, configs = [], [BPRConfig(**point, seed=seed) for point in BPR_GRID]
    for config in configs:
        run = bpr_rankings(split.train, catalog, split.valid, config, top_k=TOP_K)
        score = metrics_of(run.rankings, split.valid, len(catalog))["ndcg@10"]
        trials.append({"settings": vars(config), "valid_ndcg@10": score, "train_seconds": run.train_seconds})
        print(f"BPR {vars(config)}: valid NDCG@10 {score:.4f} ({run.train_seconds:.1f} s)", flush=True)
    best = max(range(len(trials)), key=lambda j: (trials[j]["valid_ndcg@10"], -j))
    return configs[best], trials


def unseen_top(ranking: list[str], history: list[str]) -> list[str]:
    seen = set(history)
    return [item for item in ranking if item not in seen][:TOP_K]


def reuse(earlier: dict, split, runs: dict, timings: dict, settings: dict) -> None:
    """BPR's and SASRec's rankings, timings and settings from an earlier results file of the same split."""
    targets = {ex["user"]: ex["target"] for ex in split.test}
    for name in ("BPR", UNSEEN.format("BPR"), "SASRec", UNSEEN.format("SASRec")):
        stored = earlier["rankings"][name]
        if {u: r["target"] for u, r in stored.items()} != targets:
            raise ValueError(f"--from-results: {name}'s targets differ from this split's: train the models again.")
        runs[name] = {u: r["ranking"] for u, r in stored.items()}
        timings[name] = earlier["metrics"][name]["train_seconds"]
    settings.update({k: earlier["settings"][k] for k in ("BPR", "SASRec")})
    settings["reused_from"] = {"date": earlier.get("date"), "machine": earlier.get("machine")}


def dump(result: dict, path: Path) -> None:
    """Indented JSON, with one line per user in the rankings (943 users x 3 methods stay readable)."""
    rankings = result.pop("rankings")
    text = json.dumps(result, indent=2)[:-2] + ',\n  "rankings": {\n'
    text += ",\n".join(
        f"    {json.dumps(method)}: {{\n"
        + ",\n".join(f"      {json.dumps(user)}: {json.dumps(entry)}" for user, entry in per_user.items())
        + "\n    }"
        for method, per_user in rankings.items()
    )
    path.write_text(text + "\n  }\n}\n")


def write(path: Path, runs: dict, timings: dict, settings: dict, split, catalog: list, version: str) -> None:
    """Metrics table, settings and every user's top-20 list (with its target) of the methods run so far."""
    test = split.test
    metrics = {name: metrics_of(r, test, len(catalog)) | {"train_seconds": timings[name]} for name, r in runs.items()}
    table = format_metrics_table(metrics)
    print(table, flush=True)
    popular_recall = metrics["popularity"]["recall@10"]
    targets = {ex["user"]: ex["target"] for ex in test}
    result = {
        **run_environment(),
        "library": {"cornac": version},
        "split": {
            "dataset": "MovieLens-100k (recbole 1.2.1 data files)",
            "protocol": "user_histories(min_interactions=3) -> leave_one_out: test = last item, valid = second "
            "to last, train = the rest; full ranking over the catalog; nothing excluded from rankings except in the "
            "rows '(history excluded)', which drop the user's history items",
            "n_users": len(test),
            "n_items": len(catalog),
        },
        "metrics": metrics,
        "recall@10_vs_popularity": {n: m["recall@10"] / popular_recall for n, m in metrics.items()},
        "settings": settings,
        "table": table,
        "hit_ranks_gz": {
            name: pack(hit_ranks({u: {"target": targets[u], "ranking": ranking} for u, ranking in r.items()}))
            for name, r in runs.items()
        },
        "rankings": {
            name: {user: {"target": targets[user], "ranking": ranking} for user, ranking in r.items()}
            for name, r in runs.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    dump(result, path)
    print(f"wrote {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sasrec-epochs", type=int, default=SASRecConfig.n_epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--from-results", type=Path, help="reuse BPR and SASRec rankings of this results file")
    args = parser.parse_args()
    cornac = require_baseline_library()  # before any data work or training
    earlier = json.loads(args.from_results.read_text()) if args.from_results else None

    interactions, items = load_movielens_100k()
    split = leave_one_out(user_histories(interactions, items, min_interactions=3))
    catalog = items.with_format("arrow")["item"].to_pylist()
    test = split.test
    runs, timings, settings = {}, {}, {}

    popular = popularity_ranking(split.train, k=TOP_K)
    runs["popularity"] = {ex["user"]: popular for ex in test}
    everything = popularity_ranking(split.train)
    runs[UNSEEN.format("popularity")] = {ex["user"]: unseen_top(everything, ex["history"]) for ex in test}
    timings["popularity"] = timings[UNSEEN.format("popularity")] = 0.0
    if earlier is not None:
        reuse(earlier, split, runs, timings, settings)
        write(args.output, runs, timings, settings, split, catalog, earlier["library"]["cornac"])
        return

    start = time.perf_counter()
    bpr_config, bpr_trials = tune_bpr(split, catalog, args.seed)
    bpr = bpr_rankings(split.train, catalog, test, bpr_config, top_k=TOP_K)
    runs["BPR"], timings["BPR"] = bpr.rankings, bpr.train_seconds
    runs[UNSEEN.format("BPR")], timings[UNSEEN.format("BPR")] = bpr.rankings_unseen, bpr.train_seconds
    settings["BPR"] = bpr.settings | {"grid": bpr_trials, "tuning_seconds": time.perf_counter() - start}
    write(args.output, runs, timings, settings, split, catalog, cornac.__version__)  # a partial result first

    sasrec_config = SASRecConfig(n_epochs=args.sasrec_epochs, seed=args.seed, verbose=True)
    sasrec = sasrec_rankings(split.train, catalog, test, sasrec_config, valid=split.valid, top_k=TOP_K)
    runs["SASRec"], timings["SASRec"] = sasrec.rankings, sasrec.train_seconds
    runs[UNSEEN.format("SASRec")], timings[UNSEEN.format("SASRec")] = sasrec.rankings_unseen, sasrec.train_seconds
    settings["SASRec"] = sasrec.settings
    write(args.output, runs, timings, settings, split, catalog, cornac.__version__)


if __name__ == "__main__":
    main()
