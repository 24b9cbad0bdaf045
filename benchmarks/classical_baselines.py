"""Classical baselines on the recipe's own split, users and metrics: popularity, BPR and SASRec (Cornac).

MovieLens-100k -> ``user_histories(min_interactions=3)`` -> ``leave_one_out`` (test target = last item, valid =
second to last, train = the rest), full ranking over all 1,682 items for every test user, metrics from
``evaluate_rankings`` on the top-20 lists. Nothing is excluded from a ranking (items already in the history
may be recommended), as in the LLM arms' constrained beam search; the rows "(history excluded)" add the
RecBole/Cornac convention (the user's history items removed) from the same trained models.

BPR's few settings are chosen on the valid targets (NDCG@10); SASRec keeps its best epoch on them. The JSON
holds every user's top-20 list with its target, in the shape of the recipe's ``rankings.json``, for paired
bootstraps against the LLM arms.

    flock /tmp/gti-heavy.lock python benchmarks/classical_baselines.py   # about 15-20 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from environment import run_environment

from gti_peft.recsys import (
    evaluate_rankings,
    format_metrics_table,
    leave_one_out,
    load_movielens_100k,
    popularity_ranking,
    user_histories,
)
from gti_peft.recsys.baselines import BPRConfig, SASRecConfig, bpr_rankings, require_baseline_library, sasrec_rankings

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
    args = parser.parse_args()
    cornac = require_baseline_library()  # before any data work or training

    interactions, items = load_movielens_100k()
    split = leave_one_out(user_histories(interactions, items, min_interactions=3))
    catalog = items.with_format("arrow")["item"].to_pylist()
    test = split.test
    runs, timings, settings = {}, {}, {}

    popular = popularity_ranking(split.train, k=TOP_K)
    runs["popularity"] = {ex["user"]: popular for ex in test}
    timings["popularity"] = 0.0

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
