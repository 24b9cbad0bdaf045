"""GTI against every baseline on MovieLens-100k, through the recipe's own code (one recipe run per arm and seed).

    .venv/bin/python benchmarks/quality.py --profile cpu            # SmolLM2-135M, 2 CPU cores, ~2.5 h
    .venv/bin/python benchmarks/quality.py --profile gpu            # Qwen3-0.6B QLoRA, full budget

Every arm shares the semantic IDs, data and fine-tuning budget; only `init` and grounding differ, plus one arm
(`mean_compute_matched`) that spends grounding's wall time on extra fine-tuning steps. After each run the adapter
is probed (title -> ID hit@10, singular values of the new rows), and the budget curve evaluates the fine-tuning
checkpoints of `mean` and `gti_mean`. Runs resume (each is a recipe output folder, each probe is cached), so
rerunning the command continues where it stopped. Results: benchmarks/results/quality-<profile>.json, .md, .png.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from environment import run_environment
from render_results import format_quality, plot_quality

from gti_peft.recsys import paired_bootstrap, per_user_hits

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {
    "cpu": {
        "config": "recipes/smollm2-135m/movielens.yaml",
        "seeds": [0, 1],
        "compute_matched_seeds": [0, 1],
        "curve_seeds": [0],  # budget-curve checkpoints evaluated for mean and gti_mean
        # Cut to fit 2 hours on 2 cores: 300 test users (the first 300, fixed), 100 grounding + 100 fine-tuning
        # steps at batch 16 (1,600 of the 4,000 training windows), history 5. bf16 autocast: this CPU has AMX-bf16
        # (1.18x a fp32 step, benchmarks/results/speed.json); the rows and the optimizer stay fp32.
        "overrides": [
            "evaluation.max_users=300",
            "grounding.max_steps=100",
            "grounding.bf16=true",
            "finetune.max_steps=100",
            "finetune.save_steps=50",
            "finetune.bf16=true",
            "evaluation.bf16=true",
        ],
        "probe_items": 150,
    },
    "gpu": {
        "config": "recipes/qwen3-0.6b/movielens_qlora.yaml",
        "seeds": [0, 1, 2],
        "compute_matched_seeds": [0, 1, 2],
        "curve_seeds": [0, 1, 2],
        "overrides": ["evaluation.max_users=null"],
        "probe_items": 500,
    },
}
# arm -> (init, grounded?), in the order they run: what the comparison needs most comes first
ARMS = {
    "mean": ("mean", False),
    "gti_mean": ("mean", True),
    "mean_compute_matched": ("mean", False),
    "hf_mean": ("hf_mean", False),
    "random": ("random", False),
    "description": ("description", False),
    "gti_description": ("description", True),
}
SEEDED_ARMS = ("mean", "gti_mean")


def arm_config(profile: dict, out_root: Path, name: str, seed: int, extra=()):
    from gti_peft.recipe import load_recipe_config

    init, grounded = ARMS[name]
    overrides = [
        f"adapter.init={init}",
        f"output.seed={seed}",
        f"output.output_dir={out_root / f'{name}-seed{seed}'}",
        "semantic_ids.seed=0",  # the same semantic IDs for every arm
        *profile["overrides"],
        *extra,
    ]
    if not grounded:
        overrides.append("grounding.max_steps=0")
    return load_recipe_config(ROOT / profile["config"], overrides)


def run_arm(config) -> dict:
    from gti_peft.recipe import run_recipe

    metrics = Path(config.output.output_dir) / "metrics.json"
    if metrics.exists() and "metrics" in json.loads(metrics.read_text()):
        return json.loads(metrics.read_text())
    return run_recipe(config)


def probe(config, folder: Path, n_items: int, evaluate_users: bool) -> dict:
    """Load a saved adapter (or checkpoint) and measure it: title -> ID hits, spectrum, next-item metrics."""
    from accelerate import PartialState

    from gti_peft import diagnostics, new_token_rows
    from gti_peft.recipe.evaluation import evaluate_next_item, title_to_id_hits
    from gti_peft.recipe.pipeline import build_model, load_data, semantic_ids_stage
    from gti_peft.recsys import grounding_pairs

    cache = folder / "quality_probe.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        same_precision = cached.get("evaluation_bf16", False) == config.evaluation.bf16
        if not evaluate_users or ("metrics" in cached and same_precision):
            return cached
    data = load_data(config)
    sids = semantic_ids_stage(config, data, Path(config.output.output_dir), PartialState())
    tokenizer, model = build_model(config, sids, data, folder)
    model.eval()
    pairs = grounding_pairs(data.items, sids)
    sample = random.Random(0).sample(range(len(pairs)), n_items)
    items = [data.items["item"][i] for i in sample]
    result = title_to_id_hits(model, tokenizer, [pairs[i] for i in sample], sids.to_dict(), items)
    _, rows, _ = new_token_rows(model)
    result["singular_values"] = diagnostics.singular_values(rows.float().cpu()).tolist()
    if evaluate_users:
        metrics = evaluate_next_item(
            model, tokenizer, data.split.test, sids.to_dict(), data.split.train, config.evaluation, len(data.items)
        )
        result["metrics"] = metrics["model"]
        result["evaluation_bf16"] = config.evaluation.bf16
        result["rankings"] = dict(metrics["rankings"])
    cache.write_text(json.dumps(result))
    return result


def load_hits(folder: Path, k: int = 10) -> dict[str, tuple[float, float]]:
    """user -> (recall@k, ndcg@k) from a recipe run's rankings.json."""
    rankings = json.loads((folder / "rankings.json").read_text())
    targets = {u: r["target"] for u, r in rankings.items()}
    return per_user_hits({u: r["ranking"] for u, r in rankings.items()}, targets, k)


def average_hits(runs: list[dict]) -> dict[str, tuple[float, float]]:
    """Per-user hits averaged over seeds (users every run has)."""
    users = sorted(set.intersection(*(set(r) for r in runs)))  # a fixed order: the bootstrap is reproducible
    return {u: tuple(sum(r[u][m] for r in runs) / len(runs) for m in (0, 1)) for u in users}


def compare(results: dict, out_root: Path, a: str, b: str, seeds: list[int]) -> dict | None:
    """Paired bootstrap of arm b minus arm a on recall@10 and ndcg@10, per-user hits averaged over `seeds`."""
    folders = [(out_root / f"{a}-seed{s}", out_root / f"{b}-seed{s}") for s in seeds]
    if not all((fa / "rankings.json").exists() and (fb / "rankings.json").exists() for fa, fb in folders):
        return None
    ha = average_hits([load_hits(fa) for fa, _ in folders])
    hb = average_hits([load_hits(fb) for _, fb in folders])
    result = {"seeds": seeds}
    for i, metric in enumerate(("recall@10", "ndcg@10")):
        result[metric] = paired_bootstrap({u: h[i] for u, h in ha.items()}, {u: h[i] for u, h in hb.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "quality"))
    parser.add_argument("--results", default=None, help="JSON path (default: results/quality-<profile>)")
    parser.add_argument("--set", action="append", default=[], help="Extra recipe override, e.g. finetune.max_steps=4")
    parser.add_argument("--probe-items", type=int, default=None, help="Items for title -> ID hits (profile default)")
    args = parser.parse_args()
    profile = dict(PROFILES[args.profile])
    profile["overrides"] = [*profile["overrides"], *args.set]
    profile["probe_items"] = args.probe_items or profile["probe_items"]
    out_root = Path(args.out) / args.profile
    wanted = args.arms.split(",")
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown:
        raise ValueError(f"--arms has unknown arm(s) {unknown}; known: {list(ARMS)}.")
    path = Path(args.results or ROOT / "benchmarks" / "results" / f"quality-{args.profile}.json")
    results = {
        "profile": args.profile,
        "settings": {**profile, "arms": wanted},
        **run_environment(),
        "runs": {},
        "curve": {},
        "bootstrap": {},
    }
    for name in wanted:
        for seed in _arm_seeds(profile, name):
            extra = _compute_matched_steps(results) if name == "mean_compute_matched" else []
            if extra is None:
                continue
            config = arm_config(profile, out_root, name, seed, extra)
            folder = Path(config.output.output_dir)
            start = time.perf_counter()
            run = run_arm(config)
            final = probe(config, folder / "adapter", profile["probe_items"], False)
            summary = _summary(run) | {"final": _probe_summary(final)}
            if ARMS[name][1]:
                grounded = probe(config, folder / "grounded", profile["probe_items"], name in SEEDED_ARMS)
                summary["grounded"] = _probe_summary(grounded)
                if "metrics" in grounded:  # the budget curve's step 0: grounded, not yet fine-tuned
                    results["curve"][f"{name}/seed{seed}/step0"] = grounded["metrics"]
            results["runs"][f"{name}/seed{seed}"] = summary
            print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            _write(results, path, out_root, profile["seeds"])
    for name in SEEDED_ARMS:
        for seed in profile["curve_seeds"]:
            folder = out_root / f"{name}-seed{seed}" / "checkpoints-finetune"
            if name not in wanted or not folder.is_dir():
                continue
            config = arm_config(profile, out_root, name, seed)
            for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
                step = int(checkpoint.name.split("-")[1])
                if step < config.finetune.max_steps:
                    point = probe(config, checkpoint, profile["probe_items"], True)
                    results["curve"][f"{name}/seed{seed}/step{step}"] = point["metrics"]
            _write(results, path, out_root, profile["seeds"])
    _write(results, path, out_root, profile["seeds"])
    print(format_quality(results), flush=True)


def _compute_matched_steps(results: dict) -> list[str] | None:
    """Fine-tuning steps that cost what GTI's grounding + fine-tuning cost (measured on gti_mean seed 0)."""
    gti = results["runs"].get("gti_mean/seed0")
    if gti is None:
        return None
    ft_step = gti["timings_s"]["finetune"] / max(gti["finetune"]["steps"], 1)
    steps = gti["finetune"]["steps"] + round(gti["timings_s"]["ground"] / ft_step)
    return [f"finetune.max_steps={steps}"]


def _arm_seeds(profile: dict, name: str) -> list[int]:
    if name == "mean_compute_matched":
        return profile["compute_matched_seeds"]
    return profile["seeds"] if name in SEEDED_ARMS else profile["seeds"][:1]


def _write(results: dict, path: Path, out_root: Path, seeds: list[int]) -> None:
    """Bootstraps for each seed and pooled over all seeds (where both arms ran), then JSON, Markdown and PNG."""
    for group in [*([s] for s in seeds), seeds]:
        for a, b in (("mean", "gti_mean"), ("mean_compute_matched", "gti_mean"), ("mean", "gti_description")):
            comparison = compare(results, out_root, a, b, group)
            if comparison is not None:
                results["bootstrap"][f"{b} - {a} (seeds {','.join(map(str, group))})"] = comparison
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    path.with_suffix(".md").write_text(format_quality(results) + "\n")
    plot_quality(results, path.with_suffix(".png"))


def _probe_summary(probe_result: dict) -> dict:
    keep = ("title_to_id_hit@1", "title_to_id_hit@10", "n_items", "singular_values", "metrics")
    return {k: probe_result[k] for k in keep if k in probe_result}


def _summary(run: dict) -> dict:
    keep = ("metrics", "timings_s", "geometry", "finetune")
    grounding = run.get("grounding", {})
    return {k: run[k] for k in keep if k in run} | {
        "grounding_steps": grounding.get("steps", 0),
        "grounding_seconds_per_step": grounding.get("seconds_per_step"),
    }


if __name__ == "__main__":
    main()
