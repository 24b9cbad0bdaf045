"""Render the result tables from benchmarks/results/*.json (no hand-typed numbers).

.venv/bin/python benchmarks/render_results.py          # rewrites the blocks between the markers below

docs/results.md: RESULTS; docs/catalogs.md: SID-RECALL, COLD-START; README.md: HEADLINE; and each
benchmarks/results/quality-<profile>.json's tables and plots (quality-<profile>.md, .png, budget-curve.png).
"""

from __future__ import annotations

import argparse

from common import ROOT, load_result
from headline import headline
from paired import format_difference
from render_budget import budget_section
from render_catalog import cold_start, semantic_id_recall
from render_quality import by_arm, format_quality, render_quality_files

START, END = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"
RESULTS_PAGE, CATALOGS_PAGE, README = ROOT / "docs" / "results.md", ROOT / "docs" / "catalogs.md", ROOT / "README.md"


def quality() -> list[str]:
    data = load_result("quality-cpu")
    if data is None or not data["runs"]:
        return []
    v = ", ".join(f"{k} {x}" for k, x in data["versions"].items())
    return [
        "### Quality: GTI against every baseline (`benchmarks/quality.py --profile cpu`)",
        f"SmolLM2-135M-Instruct + MovieLens-100k, the same semantic IDs and fine-tuning data for every arm; first "
        f"{data['runs'][next(iter(data['runs']))]['metrics']['model']['n_users']} leave-one-out test users; "
        f"{data['machine']}, {v}, {data['date']}. Recipe overrides: `{' '.join(data['settings']['overrides'])}`. "
        "hit@10 is title -> ID with constrained decoding over all 1,682 items "
        f"({data['settings']['probe_items']} items, chance 0.006). Plots: `benchmarks/results/quality-cpu.png`.",
        *(
            []
            if "seeded_arms" in data["settings"]
            else [
                "",
                "Measured on the recipe as it was then (chat prompts with the default system prompt, lora_dropout "
                "0.05, no grounding_mix, 300 users); `benchmarks/quality.py --profile cpu` reruns it on today's.",
            ]
        ),
        "",
        format_quality(data),
        "",
    ]


def speed() -> list[str]:
    data = load_result("speed")
    if data is None or "trainer" not in data:
        return []
    t = data["trainer"]
    lines = [
        "### Training step: stock Trainer + PEFT vs ours (`benchmarks/speed.py`)",
        f"SmolLM2-135M-Instruct, the recipe's fine-tuning batches ({t['batch']} x {t['mean_tokens_per_example']:.0f} "
        f"tokens on average), {t['new_tokens']} new tokens, vocabulary {t['vocab']}; {data['machine']}; medians over "
        f"{t['rounds']} interleaved rounds; {data['date']}.",
        "",
        "| arm | median s/step | speed-up | against |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['median_s']:.2f} | {r['speedup_vs_stock']:.2f}x | {r.get('vs', 'stock')} |"
        for k, r in t["rows"].items()
    ]
    loss = ", ".join(f"{k} {x:.4f}" for k, x in t["first_batch_loss"].items())
    return lines + ["", f"Loss of the same first batch from the same init: {loss}.", ""]


def new_token_layers() -> list[str]:
    data = load_result("new_token_layers")
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
    data = load_result("constrained_decoding")
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


def vocabulary() -> list[str]:
    data = load_result("vocabulary-smollm2-wordnet")
    if data is None:
        return []
    boot = data["pooled_paired_bootstrap_new_token_loss"]
    walls = ", ".join(f"seed {seed} {run['wall_seconds'] / 60:.1f} min" for seed, run in data["per_seed"].items())
    return [
        "### Vocabulary recipe: GTI against the mean start (`benchmarks/vocabulary.py`)",
        f"SmolLM2-135M + {data['new_tokens']} rare WordNet words as new tokens, {data['train_texts']} training and "
        f"{data['heldout_texts']} held-out sentences, equal fine-tuning steps per arm; {data['machine']}; "
        f"{data['date']}. Wall time per seed (both arms, on a machine shared with other jobs): {walls}. Text -> "
        f"token accuracy chance: {data['chance_accuracy']:.3f}.",
        "",
        data["table"],
        "",
        f"Paired bootstrap over held-out sentences, seeds pooled, new-token loss GTI minus mean start: "
        f"{format_difference(boot, 3)} ({boot['n_users']} sentences; negative "
        "favours GTI).",
        "",
    ]


def recipe_speed() -> list[str]:
    runs = [d for d in (load_result("recipe_speed"), load_result("recipe_speed-avx2")) if d is not None]
    if not runs:
        return []
    lines = [
        "### The recipe's own steps, before and after (`benchmarks/recipe_speed.py`)",
        "SmolLM2-135M + GTI, the same training windows and grounding pairs in every arm; each arm adds one change to "
        "the one above it. CPU s/step is the process's CPU time at 1 thread, which the machine's other load does not "
        "inflate; wall s/step is what it took on the shared machine. Loss: the first batch's answer loss before "
        "training (it changes with the prompts, not with dropout, bf16 rounding aside, or batching).",
        "",
    ]
    for data in runs:
        lines += [
            f"{data['machine']}; {data['threads']} thread(s), {data['rounds']} round(s) of {data['steps_per_round']} "
            f"steps; {data['date']}.",
            "",
            "| stage | arm | tokens/example | CPU s/step | examples per CPU-s | vs before | wall s/step | loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["rows"]:
            loss = r.get("first_batch_loss_before_training")
            lines.append(
                f"| {r['stage']} | {r['arm']} | {r['mean_tokens_per_example']:.1f} | {r['median_cpu_s_per_step']:.2f} "
                f"| {r['examples_per_cpu_s']:.2f} | {r['examples_per_cpu_s_vs_before']:.2f}x | "
                f"{r['median_s_per_step']:.2f} | {'-' if loss is None else f'{loss:.4f}'} |"
            )
        lines.append("")
    return lines


def _demo_users(data: dict) -> str:
    """Which users the demo ranked, and how (runs before history exclusion recorded no `ranking`)."""
    n = data["metrics"]["model"]["n_users"]
    if data.get("ranking", "full") == "history_excluded":
        return f"Every ranking leaves the user's history out, the model's and popularity's alike; {n} test users."
    return (
        f"The demo evaluates its first {n} test users (`evaluation.max_users`), ranking the whole catalog; the "
        "headline table above has every user."
    )


def demo() -> list[str]:
    data = load_result("demo-smollm2-movielens-avx2") or load_result("demo-smollm2-movielens")
    if data is None:
        return []
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in data["timings_s"].items())
    return [
        "### `make demo` (SmolLM2-135M + MovieLens-100k on 2 CPU cores)",
        f"Wall time {data['wall_seconds'] / 60:.1f} min ({timings}) on {data['machine']}; {data['date']}. "
        f"Grounding: {data['grounding']['steps']} steps over {', '.join(data['grounding']['template_loss_before'])}; "
        f"fine-tuning: {data['finetune']['steps']} steps, grounding_mix {data['finetune'].get('grounding_mix', 0)}.",
        "",
        data["table"].strip(),
        "",
        _demo_users(data),
        "",
        *_baseline(data),
    ]


def _baseline(data: dict) -> list[str]:
    base = data.get("baseline_mean_no_grounding")
    if base is None:
        return []
    cols = ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20", "coverage@20", "distinct_top1"]
    rows = [("mean init, no grounding (same run settings)", base["metrics"]["model"])]
    rows.append((f"mean init + GTI ({data['grounding']['steps']} grounding steps)", data["metrics"]["model"]))
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
    data = load_result("grounding_curves")
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


def headline_section() -> list[str]:
    """The headline table of the fine-tuning budget (quality profile) where GTI scored best."""
    best = max(("cpu", "cpu-long"), key=_best_gti_recall)
    lines = headline(best)
    if not lines:
        return []
    other = load_result("quality-cpu" if best == "cpu-long" else "quality-cpu-long")
    gap = (other or {}).get("bootstrap", {}).get("gti_mean - mean (seeds 0,1)")
    if gap is not None:
        steps = other["runs"]["mean/seed0"]["finetune"]["steps"]
        lines.append(
            f"At {steps} fine-tuning steps GTI's recall@10 minus the mean start's is "
            f"{format_difference(gap['recall@10'])} (seeds 0,1): the budget table in docs/results.md has both budgets."
        )
        lines.append("")
    return ["### Headline: GTI against the mean start and classical recommenders", *lines]


def _best_gti_recall(profile: str) -> float:
    """Best seed-averaged recall@10 of a GTI arm in a profile that also ran the mean start (-1 where none did)."""
    data = load_result(f"quality-{profile}")
    if data is None or not any(k.startswith("mean/") for k in data["runs"]):
        return -1.0
    arms = by_arm({"runs": {k: r for k, r in data["runs"].items() if k.startswith("gti_")}})
    recalls = [sum(r["metrics"]["model"]["recall@10"] for r in runs) / len(runs) for runs in arms.values()]
    return max(recalls, default=-1.0)


def replace_block(readme: str, name: str, lines: list[str]) -> str:
    """Rewrite the text between `<!-- NAME:START -->` and `<!-- NAME:END -->` (kept as is when `lines` is empty)."""
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in readme or end not in readme:
        raise ValueError(f"no {start} ... {end} markers in the page to render into: restore them")
    if not lines:
        return readme
    before, rest = readme.split(start, 1)
    return before + "\n".join([start, *lines, end]) + rest.split(end, 1)[1]


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    render_quality_files()
    sections = [
        headline_section(),
        quality(),
        budget_section(),
        demo(),
        vocabulary(),
        recipe_speed(),
        speed(),
        new_token_layers(),
        constrained_decoding(),
        grounding_curves(),
    ]
    body = [START, "## Results", "", *[line for section in sections for line in section], END]
    page = RESULTS_PAGE.read_text()
    block = "\n".join(body)
    if START in page:
        before, rest = page.split(START, 1)
        page = before + block + rest.split(END, 1)[1]
    else:
        page = f"{page.rstrip()}\n\n{block}\n"
    RESULTS_PAGE.write_text(page)
    catalogs = replace_block(CATALOGS_PAGE.read_text(), "COLD-START", cold_start())
    CATALOGS_PAGE.write_text(replace_block(catalogs, "SID-RECALL", semantic_id_recall()))
    README.write_text(replace_block(README.read_text(), "HEADLINE", headline_section()))


if __name__ == "__main__":
    main()
