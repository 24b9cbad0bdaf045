"""GTI against every baseline on MovieLens-100k, through the recipe's own code (one recipe run per arm and seed).

    .venv/bin/python benchmarks/quality.py --profile cpu            # SmolLM2-135M, 2 CPU cores, every arm
    .venv/bin/python benchmarks/quality.py --profile cpu-long       # 5x the fine-tuning budget, 4 arms, ~4 h
    # ~2.5 h on 2 cores as 1-thread processes that share the results file and split the work, e.g.
    #   OMP_NUM_THREADS=1 ... --profile cpu-long --arms gti_mean,gti_mix --no-curve
    #   OMP_NUM_THREADS=1 ... --profile cpu-long --arms mean --no-curve, then --arms mean_compute_matched --no-curve
    #   (it needs gti_mean seed 0's timings), then both: --arms gti_mean,mean (the curve; each claims its points)
    .venv/bin/python benchmarks/quality.py --profile gpu            # Qwen3-0.6B QLoRA, full budget

Every arm shares the semantic IDs, data and fine-tuning budget; only `init`, grounding and continual grounding
(`gti_mix`: `finetune.grounding_mix`) differ, plus one arm (`mean_compute_matched`) that spends grounding's wall
time on extra fine-tuning steps. Every test user is evaluated. After each run the adapter is probed (title -> ID
hit@10, singular values of the new rows), and the budget curve evaluates the fine-tuning checkpoints of the
profile's seeded arms. Runs resume (each is a recipe output folder, each probe is cached), so
rerunning the command continues where it stopped. Results: benchmarks/results/quality-<profile>.json, .md, .png.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import time
from pathlib import Path

from environment import run_environment
from paired import average_hits, bootstrap_difference, load_hits
from render_results import format_quality, plot_quality

from gti_peft.recsys import per_user_hits

ROOT = Path(__file__).resolve().parents[1]
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

    from gti_peft import new_token_rows
    from gti_peft.recipe.data import load_data, semantic_ids_stage
    from gti_peft.recipe.evaluation import title_to_id_hits
    from gti_peft.recipe.model import build_model
    from gti_peft.recipe.stages import evaluate_stage
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
    if not all(ra and rb and "rankings" in ra and "rankings" in rb for ra, rb in runs):
        return None
    ha = average_hits([load_hits(ra["rankings"]) for ra, _ in runs])
    hb = average_hits([load_hits(rb["rankings"]) for _, rb in runs])
    return {"seeds": seeds, **bootstrap_difference(ha, hb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--arms", default=None, help="comma-separated (default: the profile's, else all)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "quality"))
    parser.add_argument("--results", default=None, help="JSON path (default: results/quality-<profile>)")
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
    out_root = Path(args.out) / args.profile
    wanted = args.arms.split(",") if args.arms else profile.get("arms", list(ARMS))
    unknown = sorted(set(wanted) - set(ARMS))
    if unknown:
        raise ValueError(f"--arms has unknown arm(s) {unknown}; known: {list(ARMS)}.")
    path = Path(args.results or ROOT / "benchmarks" / "results" / f"quality-{args.profile}.json")
    # finished runs are kept in the results JSON (rankings included), so a run resumes on another machine too
    previous = json.loads(path.read_text()) if path.exists() else {}
    keep = previous.get("settings", {}).get("overrides") == profile["overrides"]
    results = {
        "profile": args.profile,
        "settings": {**profile, "arms": wanted},
        **run_environment(),
        "runs": previous.get("runs", {}) if keep else {},
        "curve": previous.get("curve", {}) if keep else {},
        "curve_rankings": previous.get("curve_rankings", {}) if keep else {},
        "bootstrap": {},
    }
    # seed-major: an interrupted run has every arm of its first seed
    seeds = profile["seeds"]
    order = [(s, n) for s in sorted(set(_all_seeds(profile))) for n in wanted if s in _arm_seeds(profile, n)]
    for seed, name in order:
        extra = _compute_matched_steps(results) if name == "mean_compute_matched" else []
        if extra is None or "rankings" in results["runs"].get(f"{name}/seed{seed}", {}):
            continue
        config = arm_config(profile, out_root, name, seed, extra)
        folder = Path(config.output.output_dir)
        start = time.perf_counter()
        run = run_arm(config)
        final = probe(config, folder / "adapter", profile["probe_items"], False)
        summary = _summary(run) | {"final": _probe_summary(final)}
        summary["rankings"] = json.loads((folder / "rankings.json").read_text())
        if ARMS[name][1]:
            # gti_mix grounds exactly as gti_mean (same seed and grounding stage): only its title probe runs
            evaluate = name == "gti_mean" and seed in profile["grounded_eval_seeds"]
            grounded = probe(config, folder / "grounded", profile["probe_items"], evaluate)
            summary["grounded"] = _probe_summary(grounded)
            if "metrics" in grounded:  # the budget curve's step 0: grounded, not yet fine-tuned
                results["curve"][f"{name}/seed{seed}/step0"] = grounded["metrics"]
        results["runs"][f"{name}/seed{seed}"] = summary
        _write(results, path, seeds)
        print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    # the budget curve comes after every run: an interrupted benchmark has its comparisons first
    curves = [
        arm_config(profile, out_root, name, seed)
        for seed, name in order
        if f"{name}/seed{seed}" in results["runs"]
        and name in profile["seeded_arms"]
        and seed in profile["curve_seeds"]
    ]
    _curve_rankings(results, curves)
    if not args.no_curve:
        budget_curve(results, curves, profile["probe_items"], lambda: _write(results, path, seeds))
    _write(results, path, seeds)  # bootstraps over every seed, also when every run was already there
    print(format_quality(results), flush=True)


def budget_curve(results: dict, configs: list, probe_items: int, save) -> None:
    """Next-item metrics of the fine-tuning checkpoints of the runs in `configs` (step 0, grounded only, comes from
    the probe); `save()` after each point. Every run's middle checkpoint comes first, then the points farthest from
    those measured, the runs interleaved: an interrupted curve still spans the budget for every arm. Processes
    sharing a results file split the points: each claims a point before measuring it, and one another process
    measured meanwhile comes back from its checkpoint's probe cache."""
    queues = []
    for config in configs:
        folder = Path(config.output.output_dir) / "checkpoints-finetune"
        steps = {int(p.name.split("-")[1]): p for p in folder.glob("checkpoint-*")}
        queues.append([(config, step, steps[step]) for step in _spread_order(steps, config.finetune.max_steps)])
    for rank in range(max(map(len, queues), default=0)):
        for config, step, checkpoint in (q[rank] for q in queues if rank < len(q)):
            key = f"{_run_key(config)}/step{step}"
            if key in results["curve"] or not _claim(checkpoint):
                continue
            try:
                point = probe(config, checkpoint, probe_items, True)
                results["curve"][key], results["curve_rankings"][key] = point["metrics"], point["rankings"]
                save()
            finally:
                (checkpoint / ".curve-claim").unlink(missing_ok=True)


def _curve_rankings(results: dict, configs: list) -> None:
    """Per-user rankings of the curve points measured before they were kept (from each checkpoint's probe cache)."""
    for config in configs:
        for cache in (Path(config.output.output_dir) / "checkpoints-finetune").glob("checkpoint-*/quality_probe.json"):
            key = f"{_run_key(config)}/step{cache.parent.name.split('-')[1]}"
            if key in results["curve"] and key not in results["curve_rankings"]:
                results["curve_rankings"][key] = json.loads(cache.read_text())["rankings"]


def _run_key(config) -> str:
    """`arm/seedN` of a run, from its output folder (`<arm>-seed<N>`, as arm_config names it)."""
    name, seed = Path(config.output.output_dir).name.rsplit("-seed", 1)
    return f"{name}/seed{seed}"


def _claim(checkpoint: Path) -> bool:
    """Take a checkpoint's curve point for this process; False while another live process holds it."""
    claim = checkpoint / ".curve-claim"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = claim.read_text()
        try:
            os.kill(int(holder or 0), 0)  # an empty claim is being written: pid 0 is this process group, alive
            return False
        except (ProcessLookupError, ValueError):  # its process is gone: take the point over
            claim.unlink(missing_ok=True)
            return _claim(checkpoint)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


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


def _write(results: dict, path: Path, seeds: list[int]) -> None:
    """Bootstraps for each seed and pooled over all seeds (where both arms ran), then JSON, Markdown and PNG.
    Processes sharing one results file take turns (a lock file) and keep what the others wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            on_disk = json.loads(path.read_text())
            if on_disk.get("settings", {}).get("overrides") == results["settings"]["overrides"]:
                for key in ("runs", "curve", "curve_rankings"):
                    results[key] = {**on_disk.get(key, {}), **results[key]}
        for group in [*([s] for s in seeds), seeds]:
            pairs = [
                ("mean", "gti_mean"),
                ("mean_compute_matched", "gti_mean"),
                ("mean", "gti_mix"),
                ("gti_mean", "gti_mix"),
            ]
            for a, b in [*pairs, ("mean_compute_matched", "gti_mix"), ("mean", "gti_description")]:
                comparison = compare(results, a, b, group)
                if comparison is not None:
                    results["bootstrap"][f"{b} - {a} (seeds {','.join(map(str, group))})"] = comparison
        for key, ranking in results.get("curve_rankings", {}).items():  # GTI against mean at each curve point
            arm, seed, step = key.split("/")
            mean = results["curve_rankings"].get(f"mean/{seed}/{step}")
            if arm == "gti_mean" and mean is not None:
                targets = {u: r["target"] for u, r in results["runs"][f"mean/{seed}"]["rankings"].items()}
                hits_mean, hits_gti = (per_user_hits(r, targets, 10) for r in (mean, ranking))
                difference = bootstrap_difference(hits_mean, hits_gti)
                results["bootstrap"][f"gti_mean - mean ({seed}, {step})"] = {"seeds": [int(seed[4:])], **difference}
        partial = path.with_suffix(".json.partial")  # a reader never sees a half-written file
        partial.write_text(json.dumps(results, indent=2))
        os.replace(partial, path)
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
