"""Serving without gti-peft: `generate` + TrieLogitsProcessor on the merged model against `Recommender`.

    .venv/bin/python benchmarks/serving.py --run outputs/smollm2-135m-movielens --users 200

The run (a SmolLM2-135M MovieLens recipe run folder; any training budget) is loaded by `Recommender` (fp32, CPU)
and exported by `export_for_serving` (merged model + serving_catalog.json), which plain transformers then loads.
The first `--users` test users' histories are ranked by both, history excluded, `k` items with the same beam
width, in batches of `--batch-size`; the two alternate which runs a batch first. Reported: the share of users with
the same top-k set, the mean overlap@k, the share with the same top-1 and the same order, the largest score
difference on common items, and users/s of both. Result: benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, ROOT, run_environment, write_result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "outputs" / "smollm2-135m-movielens"
    parser.add_argument("--run", default=str(default), help="A recipe run folder (its adapter/ is loaded)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--num-beams", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=str(RESULTS / "serving.json"))
    return parser.parse_args()


def test_histories(run: Path, users: int) -> list[list[str]]:
    """The run's first `users` test users' histories (its recipe's data and split)."""
    from gti_peft.recipe import load_recipe_config
    from gti_peft.recipe.data import load_data

    data = load_data(load_recipe_config(run / "recipe.yaml"))
    return [example["history"] for example in data.split.test[:users]]


def agreement(ours: list[list[tuple[str, float]]], served: list[list[tuple[str, float]]], k: int) -> dict:
    same_set = same_top1 = same_order = 0
    overlap, score_gap = 0.0, 0.0
    for a, b in zip(ours, served):
        items_a, items_b = [i for i, _ in a], [i for i, _ in b]
        same_set += set(items_a) == set(items_b)
        same_top1 += items_a[:1] == items_b[:1]
        same_order += items_a == items_b
        overlap += len(set(items_a) & set(items_b)) / k
        scores_b = dict(b)
        score_gap = max([score_gap] + [abs(s - scores_b[i]) for i, s in a if i in scores_b])
    n = len(ours)
    return {
        "same_top_k_set": same_set / n, "mean_overlap_at_k": overlap / n, "same_top1": same_top1 / n,
        "same_order": same_order / n, "max_abs_score_difference": score_gap, "users": n,
    }  # fmt: skip


def main() -> None:
    args = parse_args()
    from transformers import AutoModelForCausalLM

    from gti_peft.recsys.recommender import Recommender
    from gti_peft.recsys.serving import (
        encode_history,
        export_for_serving,
        generate_recommendations,
        load_serving_catalog,
    )

    run = Path(args.run)
    load_before = os.getloadavg()
    histories = test_histories(run, args.users)
    recommender = Recommender.from_pretrained(run, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="gti-serving-") as tmp:
        start = time.perf_counter()
        folder = export_for_serving(recommender, Path(tmp) / "served")
        export_s = time.perf_counter() - start
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        catalog = load_serving_catalog(folder)
        tokenizer = recommender.tokenizer
        ours, served, seconds = [], [], {"recommender": 0.0, "generate": 0.0}
        for number, first in enumerate(range(0, len(histories), args.batch_size)):
            batch = histories[first : first + args.batch_size]

            def run_ours(batch=batch):
                result = recommender.recommend(batch, k=args.k, num_beams=args.num_beams, batch_size=len(batch))
                ours.extend([[(r.item, r.score) for r in row] for row in result])

            def run_served(batch=batch):
                prompts = [encode_history(tokenizer, history, catalog) for history in batch]
                served.extend(
                    generate_recommendations(
                        model,
                        tokenizer,
                        prompts,
                        catalog,
                        k=args.k,
                        num_beams=args.num_beams,
                        exclude=batch,
                        batch_size=len(batch),
                    )  # fmt: skip
                )

            order = [("recommender", run_ours), ("generate", run_served)]
            for name, call in order if number % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                call()
                seconds[name] += time.perf_counter() - start
            print(f"{len(ours)}/{len(histories)} users", flush=True)
            write(args, run, histories[: len(ours)], ours, served, seconds, export_s, load_before)
    result = write(args, run, histories, ours, served, seconds, export_s, load_before)
    print(json.dumps({k: result[k] for k in ("agreement", "users_per_s", "speed_ratio_generate_vs_recommender")}))


def write(args, run: Path, histories, ours, served, seconds: dict, export_s: float, load_before) -> dict:
    """The results so far (rewritten after every batch, so a long run leaves a partial result)."""
    result = {
        "environment": run_environment(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "run": str(run),
        "settings": {
            "users": len(histories),
            "users_asked": args.users,
            "k": args.k,
            "num_beams": args.num_beams,
            "batch_size": args.batch_size,
            "dtype": "float32",
            "exclude_history": True,
        },  # fmt: skip
        "agreement": agreement(ours, served, args.k),
        "users_per_s": {name: len(histories) / s for name, s in seconds.items()},
        "seconds": seconds,
        "export_s": export_s,
    }
    speed = result["users_per_s"]
    result["speed_ratio_generate_vs_recommender"] = speed["generate"] / speed["recommender"]
    write_result(args.output, result, environment=False)  # its environment is recorded above, with the load
    return result


if __name__ == "__main__":
    main()
