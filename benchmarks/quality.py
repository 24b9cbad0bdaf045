"""GTI against every baseline on MovieLens-100k, through the recipe's own code (one recipe run per arm and seed).

    .venv/bin/python benchmarks/quality.py --profile cpu            # SmolLM2-135M, 2 CPU cores
    .venv/bin/python benchmarks/quality.py --profile gpu            # Qwen3-0.6B, full budget

Every arm shares the semantic IDs, data and fine-tuning budget; only `init` and grounding differ, plus one arm
that spends grounding's compute on extra fine-tuning steps. Runs resume (each is a recipe output folder), so
rerunning the command continues where it stopped. Results: benchmarks/results/quality-<profile>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {
    "cpu": {
        "config": "recipes/smollm2-135m/movielens.yaml",
        "seeds": [0, 1],
        "overrides": ["evaluation.max_users=300"],
    },
    "gpu": {
        "config": "recipes/qwen3-0.6b/movielens_qlora.yaml",
        "seeds": [0, 1, 2],
        "overrides": ["evaluation.max_users=null"],
    },
}
# arm -> (init, grounding on?)
ARMS = {
    "mean": ("mean", False),
    "hf_mean": ("hf_mean", False),
    "random": ("random", False),
    "description": ("description", False),
    "gti_mean": ("mean", True),
    "gti_description": ("description", True),
}
SEEDED_ARMS = ("mean", "gti_mean")


def run_arm(profile: dict, out_root: Path, name: str, init: str, grounded: bool, seed: int, extra=()) -> dict:
    from gti_peft.recipe import load_recipe_config, run_recipe

    overrides = [
        f"adapter.init={init}",
        f"output.seed={seed}",
        f"output.output_dir={out_root / f'{name}-seed{seed}'}",
        # the semantic IDs are the same for every arm: seed 0 of the quantizer
        "semantic_ids.seed=0",
        *profile["overrides"],
        *extra,
    ]
    if not grounded:
        overrides.append("grounding.max_steps=0")
    config = load_recipe_config(ROOT / profile["config"], overrides)
    folder = Path(config.output.output_dir)
    if (folder / "metrics.json").exists() and "metrics" in json.loads((folder / "metrics.json").read_text()):
        return json.loads((folder / "metrics.json").read_text())
    return run_recipe(config)


def per_user_hits(folder: Path, k: int) -> dict[str, tuple[float, float]]:
    """user -> (recall@k, ndcg@k) from the recipe's rankings.json."""
    rankings = json.loads((folder / "rankings.json").read_text())
    hits = {}
    for user, row in rankings.items():
        ranking = row["ranking"][:k]
        rank = ranking.index(row["target"]) if row["target"] in ranking else None
        hits[user] = (float(rank is not None), 1 / math.log2(rank + 2) if rank is not None else 0.0)
    return hits


def paired_bootstrap(a: dict, b: dict, metric: int, samples: int = 2000, seed: int = 0) -> dict:
    """95% interval of mean(b - a) over the same users (metric 0: recall, 1: ndcg)."""
    users = sorted(set(a) & set(b))
    diffs = [b[u][metric] - a[u][metric] for u in users]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(samples))
    return {"mean": sum(diffs) / len(diffs), "low": means[int(0.025 * samples)], "high": means[int(0.975 * samples)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--arms", default=",".join([*ARMS, "mean_compute_matched"]))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "quality"))
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    out_root = Path(args.out) / args.profile
    wanted = args.arms.split(",")
    runs = {}
    for name, (init, grounded) in ARMS.items():
        if name not in wanted:
            continue
        for seed in profile["seeds"] if name in SEEDED_ARMS else profile["seeds"][:1]:
            start = time.perf_counter()
            runs[f"{name}/seed{seed}"] = run_arm(profile, out_root, name, init, grounded, seed)
            print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if "mean_compute_matched" in wanted and "gti_mean/seed0" in runs:
        gti = runs["gti_mean/seed0"]
        # grounding's wall time, converted into fine-tuning steps at the measured fine-tuning step time
        ft_step = gti["timings_s"]["finetune"] / max(gti["finetune"]["steps"], 1)
        extra_steps = round(gti["timings_s"]["ground"] / ft_step)
        steps = gti["finetune"]["steps"] + extra_steps
        for seed in profile["seeds"]:
            runs[f"mean_compute_matched/seed{seed}"] = run_arm(
                profile, out_root, "mean_compute_matched", "mean", False, seed, [f"finetune.max_steps={steps}"]
            )
    results = {"profile": args.profile, "runs": {k: _summary(v) for k, v in runs.items()}, "bootstrap": {}}
    for seed in profile["seeds"]:
        base, gti = out_root / f"mean-seed{seed}", out_root / f"gti_mean-seed{seed}"
        if (base / "rankings.json").exists() and (gti / "rankings.json").exists():
            a, b = per_user_hits(base, 10), per_user_hits(gti, 10)
            results["bootstrap"][f"seed{seed}"] = {
                "recall@10 gti-mean": paired_bootstrap(a, b, 0),
                "ndcg@10 gti-mean": paired_bootstrap(a, b, 1),
            }
    path = ROOT / "benchmarks" / "results" / f"quality-{args.profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["bootstrap"], indent=2))


def _summary(run: dict) -> dict:
    keep = ("metrics", "timings_s", "geometry", "finetune")
    return {k: run[k] for k in keep if k in run} | {"grounding_steps": run.get("grounding", {}).get("steps", 0)}


if __name__ == "__main__":
    main()
