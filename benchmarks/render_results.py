"""Render README's "Results" section from benchmarks/results/*.json (no hand-typed numbers).

.venv/bin/python benchmarks/render_results.py          # rewrites the block between the RESULTS markers
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def new_token_layers() -> list[str]:
    data = _load("new_token_layers")
    if data is None:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    return [
        "### Training step: plain LoRA vs PEFT TrainableTokens vs GTI (`benchmarks/new_token_layers.py`)",
        f"{data['device']}, {data['cpu_threads']} thread(s), {versions}, {data['date'][:10]}; batch "
        f"{data['settings']['batch']} x {data['settings']['seq']} tokens, fp32, AdamW; medians of interleaved rounds.",
        "",
        data["table_markdown"].strip(),
        "",
        *[f"- {line}" for line in data["targets"]],
        "",
    ]


def constrained_decoding() -> list[str]:
    data = _load("constrained_decoding")
    if data is None:
        return []
    ups, best = data["users_per_second"], data["users_per_second_best"]
    return [
        "### Constrained decoding vs `generate` + `prefix_allowed_tokens_fn` (`benchmarks/constrained_decoding.py`)",
        f"{data['model']} on {data['cpus']} CPU cores ({data['torch']}); {data['config']['users']} users, "
        f"{data['config']['num_beams']} beams, {data['catalog_items']} items, "
        f"{data['prompt_tokens']['mean']:.0f}-token prompts.",
        "",
        "| method | users/s (median) | users/s (best) |",
        "|---|---|---|",
        f"| ours | {ups['ours']:.2f} | {best['ours']:.2f} |",
        f"| generate + prefix_allowed_tokens_fn | {ups['generate']:.2f} | {best['generate']:.2f} |",
        "",
        f"Speed-up {data['speedup']:.1f}x (median), {data['speedup_best']:.1f}x (best); identical top-"
        f"{data['config']['num_beams']} lists for {data['lists_identical_fraction']:.0%} of users.",
        "",
    ]


def demo() -> list[str]:
    data = _load("demo-smollm2-movielens")
    if data is None:
        return []
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in data["timings_s"].items())
    return [
        "### `make demo` (SmolLM2-135M + MovieLens-100k on 2 CPU cores)",
        f"Wall time {data['wall_seconds'] / 60:.1f} min ({timings}); {data['date']}.",
        "",
        data["table"].strip(),
        "",
        *_baseline(data),
    ]


def _baseline(data: dict) -> list[str]:
    base = data.get("baseline_mean_no_grounding")
    if base is None:
        return []
    cols = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@20", "distinct_top1"]
    rows = [("mean init, no grounding (same run settings)", base["metrics"]["model"])]
    rows.append(("mean init + GTI (40 grounding steps)", data["metrics"]["model"]))
    lines = ["Same settings without grounding (`--set grounding.max_steps=0`), one seed:", ""]
    lines += ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in rows:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{metrics[c]:.4f}" if c != "distinct_top1" else str(metrics[c]) for c in cols)
            + " |"
        )
    return lines + [
        "",
        "200 users and one seed: recall@10 has a standard error of about 0.012 (see `benchmarks/quality.py`).",
        "",
    ]


def grounding_curves() -> list[str]:
    data = _load("grounding_curves")
    if data is None:
        return []
    settings = data["settings"]
    return [
        "### Grounding on SmolLM2-135M + MovieLens-100k semantic IDs (`benchmarks/grounding_curves.py`)",
        f"{settings['n_new_tokens']} new tokens (levels {settings['levels']}), batch {settings['batch_size']}, "
        f"{settings['eval_items']} items evaluated, {settings['date']}. Chance per level is 1/K; hit@k is title -> ID "
        "with constrained decoding over all 1,682 items.",
        "",
        format_curves(data),
        "",
    ]


def format_curves(results: dict) -> str:
    lines = ["| run | step | eff. rank | mean cos | acc a | acc b | acc c | hit@1 | hit@10 |", "|---" * 9 + "|"]
    for key, run in results["runs"].items():
        for p in run["curve"]:
            accs = [p.get(f"level_{i}_accuracy", float("nan")) for i in range(3)]
            lines.append(
                f"| {key} | {p['step']} | {p['effective_rank']:.1f} | {p['mean_cosine']:.3f} | "
                + " | ".join(f"{a:.3f}" for a in accs)
                + f" | {p['title_to_id_hit@1']:.3f} | {p['title_to_id_hit@10']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    body = [START, "## Results", "", *demo(), *new_token_layers(), *constrained_decoding(), *grounding_curves(), END]
    readme = (ROOT / "README.md").read_text()
    block = "\n".join(body)
    if START in readme:
        before, rest = readme.split(START, 1)
        readme = before + block + rest.split(END, 1)[1]
    else:
        readme = readme.replace("\n## Fault log", f"\n{block}\n\n## Fault log", 1)
    (ROOT / "README.md").write_text(readme)


if __name__ == "__main__":
    main()
