"""The three semantic-ID builders' effect on recall@10: one recipe training per builder, all else equal.

Each builder's IDs train the quality benchmark's `gti_mix` arm (the recipe's default: grounding, then fine-tuning
with continual grounding; `--profile cpu` budget, seed 0) and are evaluated on every test user. The residual
k-means run IS the quality benchmark's `gti_mix/seed0` (same folder, reused when present). Paired bootstraps
against residual k-means over the same users. Runs resume (each is a recipe output folder).

    .venv/bin/python benchmarks/semantic_id_recall.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import OUTPUTS, ROOT, result_path, write_result
from paired import bootstrap_difference, load_hits
from quality import PROFILES, arm_config, run_arm

from gti_peft.recsys.quantizers import METHODS

REFERENCE = "residual_kmeans"


def method_config(method: str, out_root: Path, seed: int):
    """The quality benchmark's gti_mix arm with `method`'s IDs (the reference shares quality's own folder)."""
    root = out_root / "quality" / "cpu" if method == REFERENCE else out_root / "semantic_id_recall" / method
    return arm_config(PROFILES["cpu"], root, "gti_mix", seed, [f"semantic_ids.method={method}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != REFERENCE] + [REFERENCE])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUTPUTS))
    parser.add_argument("--output", default=str(result_path("semantic_id_recall")))
    args = parser.parse_args()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods has unknown builder(s) {unknown}; known: {list(METHODS)}.")
    runs, hits = {}, {}
    for method in args.methods:
        config = method_config(method, Path(args.out), args.seed)
        start = time.perf_counter()
        run = run_arm(config)
        folder = Path(config.output.output_dir)
        hits[method] = load_hits(json.loads((folder / "rankings.json").read_text()))
        model, popularity = run["metrics"]["model"], run["metrics"]["popularity"]
        runs[method] = {
            "recall@10": model["recall@10"],
            "ndcg@10": model["ndcg@10"],
            "coverage@20": model.get("coverage@20"),
            "popularity_recall@10": popularity["recall@10"],
            "users": len(hits[method]),
            "timings_s": run.get("timings_s"),
            "output_dir": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
        }
        print(f"{method}: recall@10 {model['recall@10']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    bootstrap = {}
    if REFERENCE in hits:
        for method in (m for m in hits if m != REFERENCE):
            bootstrap[f"{method} - {REFERENCE}"] = bootstrap_difference(hits[REFERENCE], hits[method])
    report = {"arm": "gti_mix (quality --profile cpu)", "seed": args.seed, "runs": runs, "bootstrap": bootstrap}
    write_result(args.output, report)
    print(json.dumps({"runs": runs, "bootstrap": bootstrap}, indent=1))


if __name__ == "__main__":
    main()
