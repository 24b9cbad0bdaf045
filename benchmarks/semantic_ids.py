"""The three semantic-ID builders on MovieLens-100k: code usage, collisions, tokens per item, build time.

Every builder quantizes the same all-MiniLM-L6-v2 embeddings of the 1,682 item texts ("{title}. {description}")
at the same levels x codes. Per level: perplexity of the code usage (exp of its entropy; the maximum is the
number of codes). Collision rate: items whose quantizer codes repeat an earlier item's (each needs a
disambiguation token). Also: tokens per item, largest group sharing all codes, new tokens in the vocabulary,
build time (quantization only; the embedding is shared), and whether a second build with the same seed gives
the same IDs. The effect on recall@10 is `benchmarks/semantic_id_recall.py` (one recipe training per builder).

    .venv/bin/python benchmarks/semantic_ids.py --levels 3 --codes 32
    .venv/bin/python benchmarks/semantic_ids.py --scale 2000 8000   # build time as the catalog grows (synthetic)
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

from common import load_result, result_path, run_environment, write_result

from gti_peft.recsys import SemanticIDs, embed_texts, item_texts, load_movielens_100k
from gti_peft.recsys.quantizers import METHODS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="offline:all-minilm-l6-v2")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--check-determinism", action="store_true", help="build each twice (doubles the time)")
    parser.add_argument(
        "--scale", nargs="*", type=int, default=None, help="also time each builder on this many synthetic items"
    )
    parser.add_argument("--output", default=str(result_path("semantic_ids")))
    return parser.parse_args()


def perplexity(codes: list[int]) -> float:
    counts = Counter(codes)
    total = sum(counts.values())
    return math.exp(-sum(c / total * math.log(c / total) for c in counts.values()))


def describe(sids: SemanticIDs, seconds: float) -> dict:
    groups = Counter(map(tuple, sids.codes.tolist()))
    return {
        "perplexity_per_level": [
            round(perplexity(sids.codes[:, lv].tolist()), 2) for lv in range(len(sids.codebooks))
        ],
        "codes_used_per_level": [len(set(sids.codes[:, lv].tolist())) for lv in range(len(sids.codebooks))],
        "collision_rate": sids.n_collisions / len(sids),
        "colliding_items": sids.n_collisions,
        "largest_group": max(groups.values()),
        "tokens_per_item": sids.full_codes.shape[1],
        "new_tokens": len(sids.vocabulary()),
        "build_seconds": round(seconds, 2),
    }


def build_scaling(sizes: list[int], methods, levels: int, codes: int, seed: int) -> dict:
    """Build seconds of each builder on `n` random unit vectors (MiniLM's 384 dimensions) for each `n`."""
    import torch

    times: dict[str, dict[int, float]] = {m: {} for m in methods}
    for n in sizes:
        x = torch.nn.functional.normalize(torch.randn(n, 384, generator=torch.Generator().manual_seed(seed)), dim=-1)
        for method in methods:
            start = time.perf_counter()
            SemanticIDs.from_embeddings([str(i) for i in range(n)], x, levels, codes, seed, method)
            times[method][n] = round(time.perf_counter() - start, 1)
            print(f"{n} items, {method}: {times[method][n]} s", flush=True)
    return times


def main() -> None:
    args = parse_args()
    if args.scale:
        report = load_result(Path(args.output)) or {}
        scaling = build_scaling(args.scale, args.methods, args.levels, args.codes, args.seed)
        report["build_seconds_by_size"] = {**run_environment(), "seconds": scaling}  # the builders' run keeps its own
        write_result(args.output, report, environment=False)
        return
    _, items = load_movielens_100k()
    ids, texts = item_texts(items)
    start = time.perf_counter()
    embeddings = embed_texts(texts, args.encoder, show_progress=False)
    embed_seconds = time.perf_counter() - start
    print(f"{len(ids)} items embedded in {embed_seconds:.1f} s; {args.levels} levels x {args.codes} codes")
    results = {}
    for method in args.methods:
        start = time.perf_counter()
        sids = SemanticIDs.from_embeddings(ids, embeddings, args.levels, args.codes, args.seed, method, args.encoder)
        results[method] = describe(sids, time.perf_counter() - start)
        if args.check_determinism:
            again = SemanticIDs.from_embeddings(ids, embeddings, args.levels, args.codes, args.seed, method)
            results[method]["same_seed_same_ids"] = again.to_dict() == sids.to_dict()
        print(method, results[method], flush=True)
    print(
        f"\n| builder | perplexity per level (max {args.codes}) | collision rate | largest group | tokens/item | "
        "new tokens | build s |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        perplexities = " / ".join(f"{p:.1f}" for p in r["perplexity_per_level"])
        print(
            f"| {method} | {perplexities} | {r['collision_rate']:.1%} ({r['colliding_items']}) | "
            f"{r['largest_group']} | {r['tokens_per_item']} | {r['new_tokens']} | {r['build_seconds']:.1f} |"
        )
    report = {
        "dataset": "movielens-100k",
        "items": len(ids),
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "embed_seconds": round(embed_seconds, 2),
        "builders": results,
        "recall_at_10": "benchmarks/results/semantic_id_recall.json",
    }
    previous = load_result(Path(args.output)) or {}
    if "build_seconds_by_size" in previous:  # written by --scale
        report["build_seconds_by_size"] = previous["build_seconds_by_size"]
    print(f"wrote {write_result(args.output, report)}")


if __name__ == "__main__":
    main()
