"""docs/catalogs.md's "Growing catalogs" tables from results/cold_start.json and results/semantic_id_recall.json."""

from __future__ import annotations

from common import load_result
from paired import METRICS, format_difference


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cold_start() -> list[str]:
    data = load_result("cold_start")
    if data is None or len(data.get("arms", {})) < 2:
        return []
    c, r = data["config"], data.get("recipe")
    budget = (
        f"{r['grounding_steps']} grounding + {r['finetune_steps']} fine-tuning steps at batch {r['batch_size']}"
        if r
        else "its own budget (recipes/smollm2-135m/movielens.yaml)"
        if c["ground_steps"] is None
        else f"{c['ground_steps']} grounding + {c['finetune_steps']} fine-tuning steps at batch {c['batch_size']}"
    )
    lines = [
        f"{data['new_items']} new items, {data['new_target_users']} test users whose target is new; the SmolLM2 "
        f"recipe with {budget}, extension grounding {c['extend_steps']} steps (replay ratio {c['replay_ratio']}); "
        f"{data['machine']}; "
        f"{data['date']}. Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in data.get("timings", {}).items()) + ".",
        "",
        "| arm | new items: title -> ID hit@10 | new-target users: recall@10 | NDCG@10 | "
        "old items: title -> ID hit@10 |",
        "|---|---|---|---|---|",
    ]
    for name, r in data["arms"].items():
        users = r.get("new_target_users", {})
        values = (r.get("new_items", {}).get("title_to_id_hit@10"), users.get("recall@10"), users.get("ndcg@10"))
        old = r.get("old_items", {}).get("title_to_id_hit@10")  # measured where grounding may move old rows
        lines.append(f"| {name} | " + " | ".join(map(_cell, (*values, old))) + " |")
    return [*lines, ""]


def semantic_id_recall() -> list[str]:
    data = load_result("semantic_id_recall")
    if data is None or not data.get("runs"):
        return []
    lines = [
        f"Recall per builder (`benchmarks/semantic_id_recall.py`: the recipe's {data['arm']} arm, seed "
        f"{data['seed']}, every test user; paired bootstrap against residual k-means; {data['machine']}; "
        f"{data['date']}):",
        "",
        "| builder | recall@10 | NDCG@10 | coverage@20 | recall@10 - residual k-means [95% CI] | NDCG@10 - residual "
        "k-means [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in data["runs"].items():
        b = data["bootstrap"].get(f"{method} - residual_kmeans")
        deltas = [format_difference(b[m]) for m in METRICS] if b else ["-", "-"]
        cells = [method, f"{r['recall@10']:.4f}", f"{r['ndcg@10']:.4f}", _cell(r.get("coverage@20")), *deltas]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", *_build_scaling()]


def _build_scaling() -> list[str]:
    data = (load_result("semantic_ids") or {}).get("build_seconds_by_size")
    if not data:
        return []
    seconds = data["seconds"]
    methods = list(seconds)
    sizes = sorted({int(n) for per_size in seconds.values() for n in per_size})
    lines = [
        f"Build time as the catalog grows (`benchmarks/semantic_ids.py --scale`: random unit vectors, 3 x 32 codes; "
        f"{data['machine']}, shared with two training jobs, so compare within a row):",
        "",
        "| items | " + " | ".join(f"{m} s" for m in methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for n in sizes:
        lines.append(f"| {n:,} | " + " | ".join(f"{seconds[m].get(str(n), '-')}" for m in methods) + " |")
    return [*lines, ""]
