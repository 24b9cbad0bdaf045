"""The quality benchmark's own tables and plots, from benchmarks/results/quality-<profile>.json.

    .venv/bin/python benchmarks/render_quality.py                  # every results/quality-*.json
    .venv/bin/python benchmarks/render_quality.py path/to/run.json # one written with quality.py --results

Writes quality-<profile>.md (metrics per arm, geometry and costs, bootstraps, budget curve) and .png next to
each JSON; render_results.py calls it and puts the cpu profile's table into docs/results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, load_result
from paired import format_difference

METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20")


def by_arm(results: dict) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = {}
    for key, run in results["runs"].items():
        arms.setdefault(key.split("/")[0], []).append(run)
    return arms


def _spread(values: list[float]) -> str:
    mean, digits = sum(values) / len(values), 1 if all(isinstance(v, int) for v in values) else 4
    return f"{mean:.{digits}f}" + (f" ±{(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else "")


def format_quality(results: dict) -> str:
    """Markdown: metrics per arm (mean over seeds, ± half the seed range), geometry and costs, bootstrap, budget."""
    arms = by_arm(results)
    head = ["arm", "seeds", *METRICS, "cov@20", "top-1", "hit@10 grounded", "hit@10 final"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, runs in arms.items():
        m = [r["metrics"]["model"] for r in runs]
        hit_g = _spread([r["grounded"]["title_to_id_hit@10"] for r in runs]) if "grounded" in runs[0] else "-"
        cells = [arm, str(len(runs)), *(_spread([x[k] for x in m]) for k in METRICS)]
        cells += [_spread([x["coverage@20"] for x in m]), _spread([x["distinct_top1"] for x in m]), hit_g]
        lines.append("| " + " | ".join(cells + [_spread([r["final"]["title_to_id_hit@10"] for r in runs])]) + " |")
    if arms:
        pop = next(iter(arms.values()))[0]["metrics"]["popularity"]
        cells = ["popularity", "-", *(f"{pop[k]:.4f}" for k in METRICS), f"{pop['coverage@20']:.4f}"]
        lines.append("| " + " | ".join([*cells, str(pop["distinct_top1"]), "-", "-"]) + " |")
    lines += ["", "New rows (seed 0) at start / after grounding / after fine-tuning, and what each stage cost:", ""]
    head = ["arm", "eff. rank", "mean cos", "RSA to codebook (Spearman)", "ground s/step", "FT steps", "FT s/step"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, runs in arms.items():
        geo, ft = runs[0]["geometry"], runs[0]["finetune"]
        stages = [geo.get(s) for s in ("start", "grounded", "finetuned")]
        cells = [arm]
        for key, fmt in (("effective_rank", ".1f"), ("mean_cosine", ".3f"), ("rsa_spearman", ".3f")):
            cells.append(" / ".join(format(g[key], fmt) if g else "-" for g in stages))
        g_step = runs[0].get("grounding_seconds_per_step")
        cells += [f"{g_step:.2f}" if g_step else "-", str(ft["steps"]), f"{ft['seconds'] / max(ft['steps'], 1):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired bootstrap (5,000 resamples of the test users; per-user hits averaged over the named seeds):",
        "",
    ]
    for name, b in results["bootstrap"].items():
        parts = [f"{m} {format_difference(b[m])}" for m in METRICS[1::3]]
        lines.append(f"- {name}: " + "; ".join(parts) + f" ({b['recall@10']['n_users']} users)")
    curve = _curve_points(results)
    if curve:
        lines += [
            "",
            "Budget curve (recall@10 / ndcg@10 after N fine-tuning steps; step 0 of GTI = grounded only; mean's last "
            "point is the compute-matched run: same seed and constant schedule, so its first steps are mean's):",
            "",
        ]
        lines += ["| run | steps | recall@10 | ndcg@10 |", "|---|---|---|---|"]
        for run, points in curve.items():
            lines += [f"| {run} | {step} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} |" for step, m in points]
    return "\n".join(lines)


def _curve_points(results: dict) -> dict[str, list[tuple[int, dict]]]:
    points: dict[str, list[tuple[int, dict]]] = {}
    for key, metrics in results.get("curve", {}).items():
        arm, seed, step = key.split("/")
        points.setdefault(f"{arm}/{seed}", []).append((int(step[4:]), metrics))
    runs = results["runs"]
    for key, run in runs.items():  # a compute-matched run is the last point of mean at the same seed
        if key.startswith("mean_compute_matched/"):
            points.setdefault("mean/" + key.split("/")[1], []).append(
                (run["finetune"]["steps"], run["metrics"]["model"])
            )
    for key, run in runs.items():  # the final point of every run that has a curve
        if key in points:
            points[key].append((run["finetune"]["steps"], run["metrics"]["model"]))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(points.items())}


def plot_quality(results: dict, path: Path) -> None:
    """Recall@10 / NDCG@10 per arm with every seed, the new rows' spectra, and the budget curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = by_arm(results)
    if not arms:
        return
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for offset, metric in ((-0.15, "recall@10"), (0.15, "ndcg@10")):
        for i, runs in enumerate(arms.values()):
            values = [r["metrics"]["model"][metric] for r in runs]
            axes[0].bar(i + offset, sum(values) / len(values), 0.3, color="C0" if offset < 0 else "C1")
            axes[0].scatter([i + offset] * len(values), values, color="k", s=10, zorder=3)
    axes[0].set_xticks(range(len(arms)), list(arms), rotation=30, ha="right")
    axes[0].set_title("recall@10 (blue), ndcg@10 (orange); dots: seeds")
    for arm, runs in arms.items():
        s = runs[0]["final"]["singular_values"]
        axes[1].semilogy([v / s[0] for v in s], label=arm)
        if "grounded" in runs[0]:
            g = runs[0]["grounded"]["singular_values"]
            axes[1].semilogy([v / g[0] for v in g], "--", label=f"{arm} (grounded)")
    axes[1].set_title("singular values of the new rows (seed 0, normalized)")
    axes[1].legend(fontsize=7)
    for run, points in _curve_points(results).items():
        axes[2].plot([p[0] for p in points], [p[1]["recall@10"] for p in points], "o-", label=run)
    axes[2].set_xlabel("fine-tuning steps")
    axes[2].set_title("recall@10 vs fine-tuning budget")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_quality_files(paths: list[Path] | None = None) -> list[Path]:
    """Write `<name>.md` and `<name>.png` next to each quality results JSON (default: results/quality-*.json)."""
    written = []
    for path in paths if paths is not None else sorted(RESULTS.glob("quality-*.json")):
        results = load_result(Path(path))
        if results is None:
            raise FileNotFoundError(f"no quality results at {path}: pass a JSON that benchmarks/quality.py wrote.")
        Path(path).with_suffix(".md").write_text(format_quality(results) + "\n")
        plot_quality(results, Path(path).with_suffix(".png"))
        written.append(Path(path).with_suffix(".md"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="quality results JSON (default: results/quality-*.json)")
    args = parser.parse_args()
    for path in render_quality_files(args.paths or None):
        print(f"wrote {path} and {path.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
