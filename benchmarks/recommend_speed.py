"""Recommender users/s at batch sizes 1, 8 and 32 on CPU, against the evaluation loop the recipe used before it.

Real SmolLM2-135M-Instruct with the MovieLens-100k semantic IDs of the shipped recipe. The run folder is built
once when `--run` does not exist: the shipped recipe with no grounding and one fine-tuning step of 2 examples
(quality does not change speed), no evaluation. Every arm ranks the same first `--users` test users (their
`data.max_history` latest items), fp32, after one warm-up call:

- `evaluation loop (before)`: what the recipe's `rank_items` ran before the Recommender, `constrained_beam_search`
  over the whole catalog (no history exclusion), top 20, 20 beams, the evaluation's default batch size 8;
- `evaluation loop, history excluded`: the same call with each user's known items left out (what the recipe's
  evaluation runs now, through `Recommender.rank_prompts`);
- `Recommender.recommend, batch B`: top `--k` (default 10) with the history left out, the run's 20 beams.

    nice .venv/bin/python benchmarks/recommend_speed.py --users 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import OUTPUTS, RESULTS, write_result

from gti_peft.recipe import load_recipe_config, run_recipe
from gti_peft.recipe.data import load_data
from gti_peft.recsys import Recommender
from gti_peft.recsys.beam_search import constrained_beam_search

RECIPE = Path(__file__).resolve().parents[1] / "gti_peft" / "configs" / "smollm2-135m" / "movielens.yaml"
CHEAP_RUN = [
    "grounding.max_steps=0",
    "finetune.max_steps=1",
    "finetune.per_device_train_batch_size=2",
    "output.stages=[ground,finetune]",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(OUTPUTS / "recommend-speed-run"))
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS / "recommend_speed.json"))
    parser.add_argument(
        "--exclusion-only",
        action="store_true",
        help="Only the history-exclusion ratio, interleaved batch by batch (robust to a CPU shared with other jobs); "
        "written to recommend_speed_exclusion.json",
    )
    return parser.parse_args()


def build_run(folder: Path) -> None:
    """The shipped SmolLM2 MovieLens recipe with (almost) no training: a real adapter, IDs and prompt settings."""
    if not (folder / "adapter" / "adapter_config.json").is_file():
        run_recipe(load_recipe_config(RECIPE, [f"output.output_dir={folder}", *CHEAP_RUN]))


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def exclusion_ratio(rec: Recommender, prompts: list, known: list, batch: int = 8) -> dict:
    """Users/s of the evaluation loop with and without the history excluded, alternating the two on each batch of
    `batch` users (which goes first alternates too), so that both see the same CPU load."""
    seconds = {"full ranking": 0.0, "history excluded": 0.0}
    for number, start in enumerate(range(0, len(prompts), batch)):
        rows, excluded = prompts[start : start + batch], known[start : start + batch]
        for name in sorted(seconds, reverse=number % 2 == 1):
            exclude = excluded if name == "history excluded" else None
            started = time.perf_counter()
            rec.rank_prompts(rows, 20, exclude, num_beams=rec.settings.num_beams, batch_size=batch)
            seconds[name] += time.perf_counter() - started
        print(f"batch {number}: {seconds}", flush=True)
    users = {name: len(prompts) / s for name, s in seconds.items()}
    ratio = users["history excluded"] / users["full ranking"]
    return {"batch_size": batch, "seconds": seconds, "users_per_s": users, "ratio": ratio}


def main() -> None:
    args = parse_args()
    run = Path(args.run)
    build_run(run)
    config = load_recipe_config(run / "recipe.yaml")
    data = load_data(config)
    examples = data.split.test[: args.users]
    rec = Recommender.from_pretrained(run)
    histories = [ex["history"] for ex in examples]
    known = [set(data.split.train[ex["user"]]) | set(ex["history"]) for ex in examples]
    prompts = [rec.prompt_ids(h) for h in histories]
    beams = rec.settings.num_beams
    arms = {
        "evaluation loop (before), batch 8": lambda: constrained_beam_search(
            rec.model, rec.tokenizer, prompts, rec.trie, beams, 20, 8, disable_tqdm=True
        ),
        "evaluation loop, history excluded, batch 8": lambda: rec.rank_prompts(
            prompts, 20, known, num_beams=beams, batch_size=8
        ),
    }
    for size in args.batch_sizes:
        arms[f"Recommender.recommend, batch {size}"] = lambda size=size: rec.recommend(
            histories, k=args.k, batch_size=size
        )
    rec.recommend(histories[:2], k=args.k)  # warm-up
    if args.exclusion_only:
        result = {"users": len(examples), "num_beams": beams, "top_k": 20, "threads": torch.get_num_threads()}
        result |= exclusion_ratio(rec, prompts, known)
        write_result(Path(args.output).with_name("recommend_speed_exclusion.json"), result)
        print(json.dumps(result, indent=2))
        return
    rows = {}
    for name, call in arms.items():
        seconds, _ = timed(call)
        rows[name] = {"seconds": seconds, "users_per_s": len(examples) / seconds}
        print(f"{name:<48} {rows[name]['users_per_s']:7.2f} users/s ({seconds:.1f} s)", flush=True)
    baseline = rows["evaluation loop (before), batch 8"]["users_per_s"]
    for row in rows.values():
        row["vs_evaluation_loop"] = row["users_per_s"] / baseline
    result = {
        "users": len(examples),
        "num_beams": beams,
        "k": args.k,
        "dtype": str(next(rec.model.parameters()).dtype),
        "threads": torch.get_num_threads(),
        "catalog_items": len(rec.items),
        "prompt_settings": vars(rec.settings),
        "arms": rows,
    }
    result = json.loads(write_result(args.output, result).read_text())
    print("\n| arm | users/s | vs evaluation loop |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['users_per_s']:.2f} | {row['vs_evaluation_loop']:.2f}x |")
    print(f"\n{result['machine']}; written to {args.output}")


if __name__ == "__main__":
    main()
