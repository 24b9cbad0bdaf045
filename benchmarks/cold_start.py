"""Cold start: train on old items, add the newest 10% with `extend_catalog`, and measure the new items.

MovieLens-100k. The newest 10% of items by first interaction are held out: the SmolLM2 recipe
(`recipes/smollm2-135m/movielens.yaml`: its prompts, grounding and budget unless overridden) trains on the other
items with every interaction of the held-out items removed. The trained
adapter is then extended with the held-out items in three ways: with a rows-only grounding pass mixed with a
replay of old items' pairs, without it, and without it with new rows started at the mean of all trained rows.
Each is measured on
  (a) title -> ID hit@10 on the new items (constrained over the whole catalog),
  (b) recall@10 / NDCG@10 over every test user (leave-one-out on the full log) whose target is a new item,
plus title -> ID hit@10 on a sample of old items before and after the grounding pass (forgetting). Baselines in
the same run: the trained adapter before extension (cannot name a new item: 0 by construction) and a text kNN
(MiniLM cosine between the items and the mean of the user's history).

    .venv/bin/python benchmarks/cold_start.py                 # the SmolLM2 recipe's own budget, ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from common import OUTPUTS, ROOT, result_path, write_result
from mapping import title_to_id_hits

from gti_peft.assets.offline import MINILM, resolve
from gti_peft.recipe import load_recipe_config, run_recipe
from gti_peft.recipe.config import EvalArgs
from gti_peft.recipe.data import prompt_ids
from gti_peft.recipe.evaluation import evaluate_next_item
from gti_peft.recsys import (
    SemanticIDs,
    embed_texts,
    evaluate_rankings,
    grounding_pairs,
    item_texts,
    leave_one_out,
    load_movielens_100k,
    user_histories,
)
from gti_peft.recsys.catalog import extend_catalog

RECIPE = ROOT / "recipes" / "smollm2-135m" / "movielens.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline:smollm2-135m-instruct")
    parser.add_argument("--method", default="residual_kmeans", help="semantic_ids.method")
    parser.add_argument("--new-fraction", type=float, default=0.1)
    parser.add_argument("--ground-steps", type=int, default=None, help="recipe grounding steps (default: recipe's)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--extend-steps", type=int, default=40, help="rows-only grounding after extending")
    parser.add_argument("--batch-size", type=int, default=None, help="every training stage (default: recipe's)")
    parser.add_argument("--replay-ratio", type=float, default=1.0)
    parser.add_argument("--old-sample", type=int, default=100, help="old items checked for forgetting")
    parser.add_argument("--max-history", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=str(OUTPUTS / "cold_start"))
    parser.add_argument("--output", default=str(result_path("cold_start")))
    return parser.parse_args()


def hold_out_newest(interactions, items, fraction: float) -> set[str]:
    """The newest `fraction` of items by first interaction (ties: item order)."""
    first: dict[str, int] = {}
    for item, time_ in zip(interactions["item"], interactions["timestamp"]):
        first[item] = min(first.get(item, time_), time_)
    order = sorted(first, key=lambda i: first[i])
    return set(order[-round(fraction * len(order)) :])


def recipe_config(args, work: Path):
    """The SmolLM2 recipe (`recipes/smollm2-135m/movielens.yaml`) on the old items' files under `work`."""
    data = work / "data"
    overrides = [
        f"model.name_or_path={args.model}",
        "data.dataset=files",
        f"data.interactions_path={data / 'interactions.csv'}",
        f"data.items_path={data / 'items.csv'}",
        "data.user_column=user",
        "data.item_column=item",
        f"data.max_history={args.max_history}",
        f"semantic_ids.method={args.method}",
        f"semantic_ids.seed={args.seed}",
        f"output.output_dir={work / 'recipe'}",
        "output.stages=[ground, finetune]",
        f"output.seed={args.seed}",
    ]
    budget = {"grounding.max_steps": args.ground_steps, "finetune.max_steps": args.finetune_steps}
    budget |= {f"{s}.per_device_train_batch_size": args.batch_size for s in ("grounding", "finetune")}
    overrides += [f"{key}={value}" for key, value in budget.items() if value is not None]  # else the recipe's
    return load_recipe_config(RECIPE, overrides)


def train(config, work: Path, interactions, items, new: set[str]) -> Path:
    """The recipe on old items only (files written under `work`, outside the repo: MovieLens' licence)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    interactions.filter(lambda r: r["item"] not in new).to_csv(data / "interactions.csv")
    items.filter(lambda r: r["item"] not in new).to_csv(data / "items.csv")
    if not (work / "recipe" / "adapter").exists():
        run_recipe(config)
    return work / "recipe" / "adapter"


def load(folder: Path, model_name: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(resolve(model_name), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return PeftModel.from_pretrained(base, folder).eval(), tokenizer, SemanticIDs.load(folder)


def title_hits(model, tokenizer, sids: SemanticIDs, items, chosen: set[str], style: str) -> dict:
    """Title -> ID hit@1/@10 of the `chosen` items, decoding over the whole catalog of `sids`."""
    table = items.filter(lambda r: r["item"] in chosen)
    pairs = grounding_pairs(table, sids)
    return title_to_id_hits(model, tokenizer, pairs, sids.token_lists(), table["item"], style, num_beams=10)


def measure(folder: Path, config, items, new_ids, old_sample, examples, train_histories, check_old=True) -> dict:
    """`config`: the recipe config the adapter was trained with (its prompts are the ones measured)."""
    model, tokenizer, sids = load(folder, config.model.name_or_path)
    style = config.data.prompt_style
    sid = sids.to_dict()
    if not all(i in sid for i in new_ids):  # the adapter before extension cannot name a new item
        result = {"new_items": {"title_to_id_hit@10": 0.0}, "new_target_users": {"recall@10": 0.0, "ndcg@10": 0.0}}
    else:
        result = {"new_items": title_hits(model, tokenizer, sids, items, set(new_ids), style)}
        evaluation = EvalArgs(num_beams=20, top_k=20, max_users=None, batch_size=8)
        tokens = sids.token_lists()
        prompts = [prompt_ids(config, tokenizer, tokens, ex["history"]) for ex in examples]
        metrics = evaluate_next_item(
            model, tokenizer, prompts, examples, tokens, train_histories, evaluation, len(items)
        )
        result["new_target_users"] = metrics["model"]
    if check_old:  # only grounding moves old items' rows
        result["old_items"] = title_hits(model, tokenizer, sids, items, set(old_sample), style)
    return result


def text_knn(items, examples) -> dict:
    ids, texts = item_texts(items)
    vectors = embed_texts(texts, MINILM, show_progress=False)
    index = {item: n for n, item in enumerate(ids)}
    rankings = []
    for ex in examples:
        query = vectors[[index[i] for i in ex["history"]]].mean(0)
        scores = vectors @ query
        scores[[index[i] for i in ex["history"]]] = float("-inf")
        rankings.append([ids[n] for n in scores.topk(20).indices.tolist()])
    return evaluate_rankings(rankings, [ex["target"] for ex in examples], ks=(10, 20), catalog_size=len(ids))


def save(args, report: dict) -> None:
    """Write the results so far (a long run keeps every finished arm)."""
    write_result(args.output, report)


def print_table(results: dict) -> None:
    print(
        "\n| arm | new items: title->ID hit@10 | new-target users: recall@10 | NDCG@10 | old items: title->ID hit@10 |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        hit = r.get("new_items", {}).get("title_to_id_hit@10")
        users = r.get("new_target_users", {})
        old = r.get("old_items", {}).get("title_to_id_hit@10")
        values = (hit, users.get("recall@10"), users.get("ndcg@10"), old)
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if v is not None else "-" for v in values) + " |")


def main() -> None:
    args = parse_args()
    work = Path(args.workdir)
    interactions, items = load_movielens_100k()
    new = hold_out_newest(interactions, items, args.new_fraction)
    new_ids = [i for i in items["item"] if i in new]
    old_ids = [i for i in items["item"] if i not in new]
    old_sample = random.Random(args.seed).sample(old_ids, args.old_sample)
    full = leave_one_out(user_histories(interactions, items=items), max_history=args.max_history)
    examples = [ex for ex in full.test if ex["target"] in new]
    print(f"{len(new)} new items, {len(examples)} test users whose target is new", flush=True)
    results = {"text kNN (MiniLM)": {"new_target_users": text_knn(items, examples)}}
    report = {"config": {k: v for k, v in vars(args).items() if k not in ("output", "workdir")}}
    report |= {"new_items": len(new), "new_target_users": len(examples), "timings": {}, "arms": results}
    save(args, report)
    start = time.perf_counter()
    config = recipe_config(args, work)
    report["recipe"] = {
        "grounding_steps": config.grounding.max_steps,
        "finetune_steps": config.finetune.max_steps,
        "batch_size": config.finetune.per_device_train_batch_size,
        "prompt_style": config.data.prompt_style,
        "grounding_mix": config.finetune.grounding_mix,
    }
    adapter = train(config, work, interactions, items, new)
    report["timings"]["train_s"] = round(time.perf_counter() - start, 1)
    save(args, report)
    new_table = items.filter(lambda r: r["item"] in new)
    old_table = items.filter(lambda r: r["item"] not in new)
    # the old items' table: grounding replays their pairs, and IDs that know what users watch together code a new
    # item from its nearest old items' collaborative vectors (the recipe's text+collaborative IDs)
    arms = {
        "extended + grounding (replay)": ("grounded", {"ground_steps": args.extend_steps, "replay": old_table}),
        "extended, no grounding": ("plain", {"replay": old_table}),
        "extended, no grounding, mean rows": ("mean_rows", {"new_row_init": "mean", "replay": old_table}),
    }
    results["trained adapter (before extension)"] = measure(
        adapter, config, items, new_ids, old_sample, examples, full.train
    )
    save(args, report)
    for name, (slug, options) in arms.items():
        folder = work / f"extended-{slug}"
        start = time.perf_counter()
        if not folder.exists():
            # the recipe's grounding settings; the prompt style is the one recorded in the adapter's config
            settings = {"templates": config.grounding.templates}
            settings |= {"batch_size": config.grounding.per_device_train_batch_size}
            settings |= {"learning_rate": config.grounding.learning_rate, "seed": args.seed}
            settings |= {"max_length": config.data.max_length, "replay_ratio": args.replay_ratio}
            extension = extend_catalog(adapter, new_table, folder, **settings, **options)
            report["timings"][f"extend: {name}"] = round(time.perf_counter() - start, 1)
            report.setdefault("extension", extension.to_dict() | {"new_items": len(extension.new_items)})
        grounded = "ground_steps" in options
        results[name] = measure(folder, config, items, new_ids, old_sample, examples, full.train, grounded)
        print(name, results[name], flush=True)
        save(args, report)
    print_table(results)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
