"""GTI against every baseline on MovieLens-100k, through the recipe's own code (one recipe run per arm and seed).

    .venv/bin/python benchmarks/quality.py --profile cpu            # SmolLM2-135M, 2 CPU cores, every arm
    .venv/bin/python benchmarks/quality.py --profile cpu-long       # 5x the fine-tuning budget, 4 arms, ~4 h
    .venv/bin/python benchmarks/quality.py --profile gpu            # Qwen3-0.6B QLoRA, full budget

Every arm shares the semantic IDs, data and fine-tuning budget; only `init`, grounding and continual grounding
(`gti_mix`: `finetune.grounding_mix`) differ, plus one arm (`mean_compute_matched`) that spends grounding's wall
time on extra fine-tuning steps. Every test user is evaluated. After each run the adapter is probed (title -> ID
hit@10, singular values of the new rows), and the budget curve evaluates the fine-tuning checkpoints of the
profile's seeded arms. Runs resume: an arm, seed or curve point already in the results file is skipped (each run
is a recipe output folder, each probe is cached), so rerunning the command continues where it stopped. One process
writes a results file (a second one stops at once: give it another --results). Results:
benchmarks/results/quality-<profile>.json, with each user's hit rank per run (gzip'd, see hit_ranks.py) instead of
their top-20 lists; `.venv/bin/python benchmarks/render_results.py` renders its tables (quality-<profile>.md) and
plots (.png).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from common import OUTPUTS, ROOT, load_result, result_path, run_environment, sole_writer, write_result
from hit_ranks import hit_ranks, pack, unpack
from paired import average_hits, bootstrap_difference, format_difference, packed_hits

_CPU_COMMON = [
    "evaluation.max_users=null",  # every test user
    "finetune.save_total_limit=null",  # every checkpoint stays for the budget curve
]
PROFILES = {
    "cpu": {
        "config": "recipes/smollm2-135m/movielens.yaml",
        "seeds": [0, 1],
        "seeded_arms": ["mean", "gti_mean", "gti_mix"],
        "compute_matched_seeds": [0],
        "curve_seeds": [],  # the budget curve is cpu-long's job
        "grounded_eval_seeds": [0],  # next-item metrics of the grounded-only adapter
        # SmolLM2 on 2 cores: every test user (943), 100 grounding + 100 fine-tuning steps at batch 16.
        "overrides": [*_CPU_COMMON, "grounding.max_steps=100", "finetune.max_steps=100", "finetune.save_steps=50"],
        "probe_items": 150,
    },
    "cpu-long": {
        # Does GTI's lead hold, grow or vanish with 5x the fine-tuning budget? ~2.5 h on 2 cores (AMX), resumable.
        "config": "recipes/smollm2-135m/movielens.yaml",
        "seeds": [0, 1],
        "seeded_arms": ["mean", "gti_mean"],
        "compute_matched_seeds": [0],
        "curve_seeds": [0],
        "grounded_eval_seeds": [0],
        "overrides": [*_CPU_COMMON, "grounding.max_steps=100", "finetune.max_steps=500", "finetune.save_steps=100"],
        "probe_items": 150,
        "arms": ["gti_mean", "mean", "gti_mix", "mean_compute_matched"],
    },
    "gpu": {
        "config": "recipes/qwen3-0.6b/movielens_qlora.yaml",
        "seeds": [0, 1, 2],
        "seeded_arms": ["mean", "gti_mean", "gti_mix"],
        "compute_matched_seeds": [0, 1, 2],
        "curve_seeds": [0, 1, 2],
        "grounded_eval_seeds": [0, 1, 2],
        "overrides": ["evaluation.max_users=null"],
        "probe_items": 500,
    },
}
# arm -> (init, grounded?, extra overrides), in the order they run: what the comparison needs most comes first
ARMS = {
    "mean": ("mean", False, ["finetune.grounding_mix=0"]),
    "gti_mean": ("mean", True, ["finetune.grounding_mix=0"]),
    "gti_mix": ("mean", True, ["finetune.grounding_mix=0.25"]),  # continual grounding, grounded as gti_mean
    "mean_compute_matched": ("mean", False, ["finetune.grounding_mix=0"]),
    "hf_mean": ("hf_mean", False, ["finetune.grounding_mix=0"]),
    "random": ("random", False, ["finetune.grounding_mix=0"]),
    "description": ("description", False, ["finetune.grounding_mix=0"]),
    "gti_description": ("description", True, ["finetune.grounding_mix=0"]),
}


def arm_config(profile: dict, out_root: Path, name: str, seed: int, extra=()):
    from gti_peft.recipe import load_recipe_config

    init, grounded, arm_overrides = ARMS[name]
    overrides = [
        f"adapter.init={init}",
        f"output.seed={seed}",
        f"output.output_dir={out_root / f'{name}-seed{seed}'}",
        "semantic_ids.seed=0",  # the same semantic IDs for every arm: those every stored run used
        "semantic_ids.method=residual_kmeans",  # (benchmarks/semantic_id_recall.py compares the builders)
        *profile["overrides"],
        *arm_overrides,
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
    from mapping import title_to_id_hits

    from gti_peft import new_token_rows
    from gti_peft.recipe.data import load_data, semantic_ids_stage
    from gti_peft.recipe.model import build_model
    from gti_peft.recipe.recommendation import evaluate_stage
    from gti_peft.recsys import grounding_pairs
    from gti_peft.training import diagnostics

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
    style = config.data.prompt_style
    result = title_to_id_hits(model, tokenizer, [pairs[i] for i in sample], sids.token_lists(), items, style)
    _, rows, _ = new_token_rows(model)
    result["singular_values"] = diagnostics.singular_values(rows.float().cpu()).tolist()
    if evaluate_users:
        evaluation = evaluate_stage(config, model, tokenizer, sids, data)
        result["metrics"] = evaluation["metrics"]["model"]
        result["evaluation_bf16"] = config.evaluation.bf16
        result["rankings"] = {user: r["ranking"] for user, r in evaluation["rankings"].items()}
    cache.write_text(json.dumps(result))
    return result


def compare(results: dict, a: str, b: str, seeds: list[int]) -> dict | None:
    """Paired bootstrap of arm b minus arm a on recall@10 and ndcg@10, per-user hits averaged over `seeds`."""
    runs = [(results["runs"].get(f"{a}/seed{s}"), results["runs"].get(f"{b}/seed{s}")) for s in seeds]
    if not all(ra and rb and "hit_ranks_gz" in ra and "hit_ranks_gz" in rb for ra, rb in runs):
        return None
    ha = average_hits([packed_hits(ra["hit_ranks_gz"]) for ra, _ in runs])
    hb = average_hits([packed_hits(rb["hit_ranks_gz"]) for _, rb in runs])
    return {"seeds": seeds, **bootstrap_difference(ha, hb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--arms", default=None, help="comma-separated (default: the profile's, else all)")
    parser.add_argument("--out", default=str(OUTPUTS / "quality"))
    parser.add_argument("--results", default=None, help="JSON path (default: results/quality-<profile>.json)")
    parser.add_argument("--set", action="append", default=[], help="Extra recipe override, e.g. finetune.max_steps=4")
    parser.add_argument("--probe-items", type=int, default=None, help="Items for title -> ID hits (profile default)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds for every arm (default: the profile's)")
    parser.add_argument("--no-curve", action="store_true", help="Runs only; a later call adds the budget curve")
    args = parser.parse_args()
    profile = dict(PROFILES[args.profile])
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
        profile |= {"seeds": seeds, "compute_matched_seeds": seeds, "curve_seeds": seeds[:1]}
        profile["grounded_eval_seeds"] = seeds
    profile["overrides"] = [*profile["overrides"], *args.set]
    profile["probe_items"] = args.probe_items or profile["probe_items"]
    wanted = args.arms.split(",") if args.arms else profile.get("arms", list(ARMS))
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown:
        raise ValueError(f"--arms has unknown arm(s) {unknown}; known: {list(ARMS)}.")
    path = Path(args.results) if args.results else result_path(f"quality-{args.profile}")
    with sole_writer(path):
        results = run_profile(args.profile, profile, wanted, Path(args.out) / args.profile, path, not args.no_curve)
    for name, b in results["bootstrap"].items():
        print(f"{name}: recall@10 {format_difference(b['recall@10'])}; ndcg@10 {format_difference(b['ndcg@10'])}")
    print(f"wrote {path}; tables and plots: .venv/bin/python benchmarks/render_results.py", flush=True)


def run_profile(name: str, profile: dict, wanted: list[str], out_root: Path, path: Path, curve: bool) -> dict:
    """Every arm x seed not in `path` yet (finished runs are kept in the results JSON, hit ranks included, so a run
    resumes on another machine too), then the budget curve; `path` is rewritten after each run and point."""
    previous = compact(load_result(path) or {})
    keep = previous.get("settings", {}).get("overrides") == profile["overrides"]
    environment = run_environment()  # the file keeps its first runs' environment; each run records its machine
    kept = {k: previous[k] for k in environment if k in previous} if keep and previous.get("runs") else {}
    results = {
        "profile": name,
        "settings": {**profile, "arms": wanted},
        **(kept or environment),
        "runs": previous.get("runs", {}) if keep else {},
        "curve": previous.get("curve", {}) if keep else {},
        "curve_hit_ranks_gz": previous.get("curve_hit_ranks_gz", {}) if keep else {},
        "bootstrap": {},
    }
    if keep and "test_targets_gz" in previous:
        results["test_targets_gz"] = previous["test_targets_gz"]
    # seed-major: an interrupted run has every arm of its first seed
    seeds = profile["seeds"]
    order = [(s, n) for s in sorted(set(_all_seeds(profile))) for n in wanted if s in _arm_seeds(profile, n)]
    for seed, arm in order:
        extra = _compute_matched_steps(results) if arm == "mean_compute_matched" else []
        if extra is None or "hit_ranks_gz" in results["runs"].get(f"{arm}/seed{seed}", {}):
            continue
        config = arm_config(profile, out_root, arm, seed, extra)
        folder = Path(config.output.output_dir)
        start = time.perf_counter()
        run = run_arm(config)
        final = probe(config, folder / "adapter", profile["probe_items"], False)
        summary = _summary(run) | {"final": _probe_summary(final), "machine": environment["machine"]}
        rankings = json.loads((folder / "rankings.json").read_text())
        _keep_targets(results, rankings)
        summary["hit_ranks_gz"] = pack(hit_ranks(rankings))
        if ARMS[arm][1]:
            # gti_mix grounds exactly as gti_mean (same seed and grounding stage): only its title probe runs
            evaluate = arm == "gti_mean" and seed in profile["grounded_eval_seeds"]
            grounded = probe(config, folder / "grounded", profile["probe_items"], evaluate)
            summary["grounded"] = _probe_summary(grounded)
            if "metrics" in grounded:  # the budget curve's step 0: grounded, not yet fine-tuned
                results["curve"][f"{arm}/seed{seed}/step0"] = grounded["metrics"]
        results["runs"][f"{arm}/seed{seed}"] = summary
        _write(results, path, seeds)
        print(f"{arm} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if curve:  # the budget curve comes after every run: an interrupted benchmark has its comparisons first
        configs = [
            arm_config(profile, out_root, arm, seed)
            for seed, arm in order
            if f"{arm}/seed{seed}" in results["runs"]
            and arm in profile["seeded_arms"]
            and seed in profile["curve_seeds"]
        ]
        budget_curve(results, configs, profile["probe_items"], lambda: _write(results, path, seeds))
    _write(results, path, seeds)  # bootstraps over every seed, also when every run was already there
    return results


def budget_curve(results: dict, configs: list, probe_items: int, save) -> None:
    """Next-item metrics of the fine-tuning checkpoints of the runs in `configs` (step 0, grounded only, comes from
    the probe); `save()` after each point, a point already in `results` is skipped. Every run's middle checkpoint
    comes first, then the points farthest from those measured, the runs interleaved: an interrupted curve still
    spans the budget for every arm."""
    queues = []
    for config in configs:
        folder = Path(config.output.output_dir) / "checkpoints-finetune"
        steps = {int(p.name.split("-")[1]): p for p in folder.glob("checkpoint-*")}
        queues.append([(config, step, steps[step]) for step in _spread_order(steps, config.finetune.max_steps)])
    targets = user_targets(results)
    for rank in range(max(map(len, queues), default=0)):
        for config, step, checkpoint in (q[rank] for q in queues if rank < len(q)):
            key = f"{_run_key(config)}/step{step}"
            if key in results["curve"]:
                continue
            point = probe(config, checkpoint, probe_items, True)
            ranked = {u: {"target": targets[u], "ranking": r} for u, r in point["rankings"].items()}
            results["curve"][key], results["curve_hit_ranks_gz"][key] = point["metrics"], pack(hit_ranks(ranked))
            save()


def compact(results: dict) -> dict:
    """Results written before hit ranks kept every user's top-20 list: keep each user's hit rank instead (and the
    test targets once). Changes `results` in place; results already compact pass through."""
    for run in results.get("runs", {}).values():
        rankings = run.pop("rankings", None)
        if rankings is not None:
            _keep_targets(results, rankings)
            run["hit_ranks_gz"] = pack(hit_ranks(rankings))
    curve = results.pop("curve_rankings", None)
    if curve:
        targets = user_targets(results)
        ranked = {k: {u: {"target": targets[u], "ranking": r} for u, r in c.items()} for k, c in curve.items()}
        results.setdefault("curve_hit_ranks_gz", {}).update({k: pack(hit_ranks(r)) for k, r in ranked.items()})
    return results


def user_targets(results: dict) -> dict[str, str]:
    """user -> test target, in the evaluation's user order (the order the bootstraps resample in)."""
    return dict(unpack(results["test_targets_gz"]))


def _keep_targets(results: dict, rankings: dict) -> None:
    """Store the runs' test targets once; a run on other targets cannot be compared with the others."""
    targets = [[u, r["target"]] for u, r in rankings.items()]
    if "test_targets_gz" not in results:
        results["test_targets_gz"] = pack(targets)  # a list: pack keeps its order
    elif user_targets(results) != dict(targets):
        raise ValueError(
            "this run's test targets differ from the other runs' in the results file: rerun every arm into a new "
            "results file (--results) or restore the data and split settings."
        )


def _run_key(config) -> str:
    """`arm/seedN` of a run, from its output folder (`<arm>-seed<N>`, as arm_config names it)."""
    name, seed = Path(config.output.output_dir).name.rsplit("-seed", 1)
    return f"{name}/seed{seed}"


def _spread_order(steps, max_steps: int) -> list[int]:
    """Checkpoint steps below `max_steps`, each next one the farthest from 0, `max_steps` and those before it."""
    todo, done = sorted(s for s in steps if s < max_steps), [0, max_steps]
    order = []
    while todo:
        step = max(todo, key=lambda s: (min(abs(s - d) for d in done), s))
        order.append(step)
        todo.remove(step)
        done.append(step)
    return order


def _compute_matched_steps(results: dict) -> list[str] | None:
    """Fine-tuning steps that cost what GTI's grounding + fine-tuning cost (measured on gti_mean seed 0)."""
    gti = results["runs"].get("gti_mean/seed0")
    if gti is None:
        return None
    ft_step = gti["timings_s"]["finetune"] / max(gti["finetune"]["steps"], 1)
    steps = gti["finetune"]["steps"] + round(gti["timings_s"]["ground"] / ft_step)
    return [f"finetune.max_steps={steps}"]


def _all_seeds(profile: dict) -> list[int]:
    return [*profile["seeds"], *profile["compute_matched_seeds"]]


def _arm_seeds(profile: dict, name: str) -> list[int]:
    if name == "mean_compute_matched":
        return profile["compute_matched_seeds"]
    return profile["seeds"] if name in profile["seeded_arms"] else profile["seeds"][:1]


def bootstraps(results: dict, seeds: list[int]) -> dict:
    """Paired bootstraps for each seed and pooled over all seeds (where both arms ran), and GTI against the mean
    start at each budget-curve point."""
    out = {}
    pairs = [("mean", "gti_mean"), ("mean_compute_matched", "gti_mean"), ("mean", "gti_mix"), ("gti_mean", "gti_mix")]
    for group in [*([s] for s in seeds), seeds]:
        for a, b in [*pairs, ("mean_compute_matched", "gti_mix"), ("mean", "gti_description")]:
            comparison = compare(results, a, b, group)
            if comparison is not None:
                out[f"{b} - {a} (seeds {','.join(map(str, group))})"] = comparison
    curve = results.get("curve_hit_ranks_gz", {})
    for key, packed in curve.items():
        arm, seed, step = key.split("/")
        mean = curve.get(f"mean/{seed}/{step}")
        if arm == "gti_mean" and mean is not None:
            users = list(user_targets(results))
            difference = bootstrap_difference(packed_hits(mean, users), packed_hits(packed, users))
            out[f"gti_mean - mean ({seed}, {step})"] = {"seeds": [int(seed[4:])], **difference}
    return out


def _write(results: dict, path: Path, seeds: list[int]) -> None:
    results["bootstrap"] = bootstraps(results, seeds)
    write_result(path, results, environment=False)  # the environment is the run's, recorded at its start


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
