"""The budget curve in docs/results.md: GTI and the mean start from 0 to 5x the recipe's fine-tuning steps.

Joins `results/quality-cpu.json` (100 fine-tuning steps) and `results/quality-cpu-long.json` (500 steps, checkpoints
every 100). Fine-tuning runs a constant schedule after warmup with the same seed and data order in both profiles, so
a checkpoint at step N of the long run is the run a budget of N steps would have made.
"""

from __future__ import annotations

from pathlib import Path

from common import ARM_LABELS, RESULTS, load_result
from paired import format_difference

PROFILES = ("cpu", "cpu-long")


def curve_points() -> dict[tuple[str, int], dict[int, float]]:
    """(arm, seed) -> {fine-tuning step: recall@10}; step 0 of a GTI arm is its grounded-only adapter."""
    points: dict[tuple[str, int], dict[int, float]] = {}
    for profile in PROFILES:
        data = load_result(f"quality-{profile}")
        if data is None:
            continue
        for key, metrics in data.get("curve", {}).items():
            arm, seed, step = key.split("/")
            points.setdefault((arm, int(seed[4:])), {}).setdefault(int(step[4:]), metrics["recall@10"])
        for key, run in data["runs"].items():
            arm, seed = key.split("/")
            points.setdefault((arm, int(seed[4:])), {})[run["finetune"]["steps"]] = run["metrics"]["model"][
                "recall@10"
            ]
    return {k: points[k] for k in sorted(points) if k[0] in ARM_LABELS}


def _bootstrap(data: dict, name: str) -> str:
    pooled = [k for k in data["bootstrap"] if k.startswith(f"{name} (seeds ")]
    if not pooled:
        return "-"
    key = max(pooled, key=len)  # the most seeds
    return f"{format_difference(data['bootstrap'][key]['recall@10'])} (seeds {key.split('seeds ')[1][:-1]})"


def _mean_recall(data: dict, arm: str) -> str:
    runs = [r for k, r in data["runs"].items() if k.split("/")[0] == arm]
    if not runs:
        return "-"
    return f"{sum(r['metrics']['model']['recall@10'] for r in runs) / len(runs):.4f} ({len(runs)})"


def _seed0_gap(step: int) -> str:
    """recall@10 of GTI minus the mean start at one fine-tuning step, seed 0 (a run's end or a checkpoint)."""
    for profile in PROFILES:
        data = load_result(f"quality-{profile}") or {"bootstrap": {}, "runs": {}}
        at_end = data["runs"].get("mean/seed0", {}).get("finetune", {}).get("steps") == step
        found = data["bootstrap"].get(f"gti_mean - mean (seed0, step{step})")
        found = found or (data["bootstrap"].get("gti_mean - mean (seeds 0)") if at_end else None)
        if found:
            return format_difference(found["recall@10"])
    return "-"


def budget_section() -> list[str]:
    """Markdown: GTI's lead per budget (paired bootstraps) and the recall@10 curve per run."""
    long = load_result("quality-cpu-long")
    if long is None or not long["runs"]:
        return []
    lines = [
        "### Budget: does GTI's lead last? (`benchmarks/quality.py --profile cpu` and `--profile cpu-long`)",
        f"The recipe at 100 and at 500 fine-tuning steps (batch 16), every arm grounded for 100 steps where it is "
        f"grounded; every test user; {long['machine']}; {long['date']}. recall@10 averaged over seeds (number of "
        "seeds), differences paired bootstraps over the users with per-user hits averaged over the seeds named.",
        "",
        "| fine-tuning steps | GTI | mean start | GTI - mean [95% CI] | compute-matched mean | GTI - compute-matched "
        "| GTI + continual grounding | continual - GTI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for profile in PROFILES:
        data = load_result(f"quality-{profile}")
        if data is None or "mean/seed0" not in data["runs"]:
            continue
        cells = [
            str(data["runs"]["mean/seed0"]["finetune"]["steps"]),
            _mean_recall(data, "gti_mean"),
            _mean_recall(data, "mean"),
            _bootstrap(data, "gti_mean - mean"),
        ]
        cells += [_mean_recall(data, "mean_compute_matched"), _bootstrap(data, "gti_mean - mean_compute_matched")]
        cells += [_mean_recall(data, "gti_mix"), _bootstrap(data, "gti_mix - gti_mean")]
        lines.append("| " + " | ".join(cells) + " |")
    points = curve_points()
    steps = sorted({s for (arm, _), run in points.items() if arm != "mean_compute_matched" for s in run})
    lines += [
        "",
        "recall@10 after N fine-tuning steps, per run (step 0: grounded, not yet fine-tuned; `-`: not measured). "
        "Plot: `benchmarks/results/budget-curve.png`.",
        "",
        "| run | " + " | ".join(map(str, steps)) + " |",
        "|---" * (len(steps) + 1) + "|",
    ]
    for (arm, seed), run in points.items():
        if arm == "mean_compute_matched":
            continue
        cells = [f"{run[s]:.4f}" if s in run else "-" for s in steps]
        lines.append(f"| {ARM_LABELS[arm]}, seed {seed} | " + " | ".join(cells) + " |")
    gaps = [_seed0_gap(step) for step in steps]
    lines.append("| GTI - mean, seed 0 [95% CI] | " + " | ".join(gaps) + " |")
    matched = [(seed, run) for (arm, seed), run in points.items() if arm == "mean_compute_matched"]
    lines += [
        "",
        *(
            f"Compute-matched mean, seed {s}: "
            + ", ".join(f"{r:.4f} at {n} steps" for n, r in sorted(run.items()))
            + "."
            for s, run in matched
        ),
    ]
    plot_budget(points, RESULTS / "budget-curve.png")
    lines += [
        "",
        "Every arm's table (new rows' geometry, title -> ID hits, costs): `benchmarks/results/quality-cpu-long.md`.",
    ]
    return [*lines, ""]


def plot_budget(points: dict[tuple[str, int], dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (arm, seed), run in points.items():
        steps = sorted(run)
        label = ARM_LABELS[arm]
        style = {"gti_mean": "C0", "gti_mix": "C2", "mean": "C1", "mean_compute_matched": "C3"}[arm]
        ax.plot(
            steps, [run[s] for s in steps], "o-" if seed == 0 else "s--", color=style, label=f"{label}, seed {seed}"
        )
    popularity = load_result("classical_baselines")
    if popularity is not None:
        ax.axhline(popularity["metrics"]["popularity"]["recall@10"], color="k", ls=":", label="popularity")
    ax.set_xlabel("fine-tuning steps (batch 16)")
    ax.set_ylabel("recall@10, every test user")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
