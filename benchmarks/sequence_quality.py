"""What each change to the SmolLM2 MovieLens recipe contributes: windows -> sequences, text vs collaborative vs
text+collaborative semantic IDs, and the fine-tuning budget, every test user (943), the user's history left out.

    .venv/bin/python benchmarks/sequence_quality.py train      # trains the arms one after another (resumable)
    .venv/bin/python benchmarks/sequence_quality.py evaluate   # evaluates every trained arm (resumable)
    .venv/bin/python benchmarks/sequence_quality.py report     # results JSON + tables, paired bootstraps vs SASRec

Each arm is one recipe run (recipes/gti.py on recipes/smollm2-135m/movielens.yaml plus the arm's overrides) under
outputs/benchmarks/sequence_quality/<arm>/. Arms with the same semantic IDs share one grounded adapter (grounding
depends on the IDs only): the first arm of each ID kind grounds, the others start from a copy of its grounded/
folder. Per-user results are kept as hit ranks (gzip, base64) in benchmarks/results/sequence_quality.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from environment import run_environment
from hit_ranks import hit_ranks, hits_from_ranks, pack, unpack
from paired import average_hits, bootstrap_difference, format_difference

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "recipes/smollm2-135m/movielens.yaml"
OUT = ROOT / "outputs" / "benchmarks" / "sequence_quality"
RESULTS = ROOT / "benchmarks" / "results" / "sequence_quality.json"
METRICS = ("recall@10", "ndcg@10")
# 943 test users, history left out (evaluation.exclude_history's default); 10 beams give the top 10 (recall/NDCG@10)
COMMON = [
    "evaluation.max_users=null",
    "evaluation.num_beams=10",
    "evaluation.top_k=10",
    "evaluation.batch_size=16",
    "grounding.max_steps=40",
    "grounding.save_steps=20",
    "finetune.save_steps=50",
    "output.seed=0",
    # the arms' own settings, whatever the YAML's defaults become: every chunk, the lr constant after warm-up
    "data.max_chunks_per_user=null",
    "finetune.lr_scheduler_type=constant_with_warmup",
]
WINDOWS = [
    "data.examples=windows",
    "data.max_history=5",
    "data.max_train_examples=4000",
    "finetune.per_device_train_batch_size=16",
    "finetune.max_steps=40",
]


def sequences(steps: int, history: int = 20, batch: int = 8) -> list[str]:
    return [
        "data.examples=sequences",
        f"data.max_history={history}",
        "data.max_train_examples=null",
        f"finetune.per_device_train_batch_size={batch}",
        f"finetune.max_steps={steps}",
        "finetune.train_sampling_strategy=group_by_length",
    ]


# two epochs: 1,400 steps of 8 chunks (~95 CPU-min per run on one thread, within a 2-hour budget), cosine decay
TWO_EPOCHS = [*sequences(1400), "finetune.lr_scheduler_type=cosine"]

# arm -> (semantic-ID embedding, overrides). The ID arms run side by side as 1-thread processes (--arms one each).
ARMS = {
    "seq_text_40": ("text", sequences(40)),
    "seq_textcollab_40": ("text+collaborative", sequences(40)),
    "windows_text_40": ("text", WINDOWS),
    "seq_collab_40": ("collaborative", sequences(40)),
    # the budget curve (one epoch of the 5,565 chunks is 696 steps of 8), a second seed, the mean start (no grounding)
    "seq_textcollab_140": ("text+collaborative", sequences(140)),
    "seq_textcollab_700": ("text+collaborative", sequences(700)),
    "seq_textcollab_700_seed1": ("text+collaborative", [*sequences(700), "output.seed=1"]),
    "mean_textcollab_140": ("text+collaborative", [*sequences(140), "grounding.max_steps=0"]),
    "mean_textcollab_40": ("text+collaborative", [*sequences(40), "grounding.max_steps=0"]),
    # the settings sweep at 140 steps (a fifth of an epoch), seed 0, against seq_textcollab_140 (lr 1e-3, r 8,
    # 20 items per chunk): the learning rate, the LoRA rank (the scale alpha/r kept at 4), the history length (50
    # items per chunk, 56 steps: the tokens of 140 steps of 20-item chunks)
    "sweep_lr3e-3_140": ("text+collaborative", [*sequences(140), "finetune.learning_rate=0.003"]),
    "sweep_lr3e-4_140": ("text+collaborative", [*sequences(140), "finetune.learning_rate=0.0003"]),
    "sweep_r32_140": ("text+collaborative", [*sequences(140), "adapter.r=32", "adapter.lora_alpha=128"]),
    "sweep_history50_56": ("text+collaborative", [*sequences(56, history=50), "data.max_length=224"]),
    # evaluation only: the trained adapters ranked with 20 or 40 beams instead of 10 (constrained beam search
    # returns the top 10 of its beams; more beams come closer to the model's exact top 10)
    "seq_textcollab_700_beams20": ("text+collaborative", [*sequences(700), "evaluation.num_beams=20"]),
    "seq_textcollab_40_beams20": ("text+collaborative", [*sequences(40), "evaluation.num_beams=20"]),
    "seq_textcollab_700_seed1_beams20": (
        "text+collaborative",
        [*sequences(700), "output.seed=1", "evaluation.num_beams=20"],
    ),
    "seq_textcollab_700_beams40": ("text+collaborative", [*sequences(700), "evaluation.num_beams=40"]),
    "mean_textcollab_700_beams20": (
        "text+collaborative",
        [*sequences(700), "grounding.max_steps=0", "evaluation.num_beams=20"],
    ),
    # the mean start at one epoch, both seeds: equal steps, and compute-matched within 1% (GTI's 40 grounding steps
    # cost ~28 CPU s of its ~2,700)
    "mean_textcollab_700": ("text+collaborative", [*sequences(700), "grounding.max_steps=0"]),
    "mean_textcollab_700_seed1": ("text+collaborative", [*sequences(700), "grounding.max_steps=0", "output.seed=1"]),
    # the schedule: cosine decay to 0 over the epoch instead of the constant lr after warm-up (same peak, 1e-3)
    "seq_textcollab_700_cosine": ("text+collaborative", [*sequences(700), "finetune.lr_scheduler_type=cosine"]),
    # each user's latest chunk only (943 chunks: 118 steps of 8 are one pass), the items closest in time to the test
    # item: at the demo's 40 steps, and one pass, against every chunk at 40 and 140 steps
    "latest_textcollab_40": ("text+collaborative", [*sequences(40), "data.max_chunks_per_user=1"]),
    "latest_textcollab_118": ("text+collaborative", [*sequences(118), "data.max_chunks_per_user=1"]),
    # the demo's budget: about 120 fine-tuning steps fit its 15 minutes on an AVX2-only CPU (benchmarks/demo.py). The
    # learning rate decaying to 0 on a cosine, every chunk or each user's latest one, peak lr 1e-3 or 3e-3
    "seq_textcollab_120_cosine": ("text+collaborative", [*sequences(120), "finetune.lr_scheduler_type=cosine"]),
    "seq_textcollab_120_cosine_lr3e-3": (
        "text+collaborative",
        [*sequences(120), "finetune.lr_scheduler_type=cosine", "finetune.learning_rate=0.003"],
    ),
    "latest_textcollab_118_cosine": (
        "text+collaborative",
        [*sequences(118), "data.max_chunks_per_user=1", "finetune.lr_scheduler_type=cosine"],
    ),
    # the demo's budget spent on grounding instead: 150 grounding steps (cheaper than fine-tuning steps; titles map to
    # codes at 5-7x chance per level by 75-150 steps, benchmarks/grounding_curves.py), then the demo's 40
    "ground150_textcollab_40": ("text+collaborative", [*sequences(40), "grounding.max_steps=150"]),
    # two epochs with the learning rate decaying to 0, GTI and the mean start at equal steps, 2 seeds: the headline
    "seq_textcollab_1400_cosine": ("text+collaborative", TWO_EPOCHS),
    "mean_textcollab_1400_cosine": ("text+collaborative", [*TWO_EPOCHS, "grounding.max_steps=0"]),
    "seq_textcollab_1400_cosine_seed1": ("text+collaborative", [*TWO_EPOCHS, "output.seed=1"]),
    "mean_textcollab_1400_cosine_seed1": (
        "text+collaborative",
        [*TWO_EPOCHS, "grounding.max_steps=0", "output.seed=1"],
    ),
}
# arm -> the arm whose trained adapter it evaluates (its own settings differ in the evaluation section only)
SAME_TRAINING = {
    "seq_textcollab_700_beams20": "seq_textcollab_700",
    "seq_textcollab_40_beams20": "seq_textcollab_40",
    "seq_textcollab_700_seed1_beams20": "seq_textcollab_700_seed1",
    "seq_textcollab_700_beams40": "seq_textcollab_700",
    "mean_textcollab_700_beams20": "mean_textcollab_700",
}


# pooled over seeds: name -> its seeds' arms
POOLED = {
    "seq_textcollab_700 (seeds 0+1)": ["seq_textcollab_700", "seq_textcollab_700_seed1"],
    "mean_textcollab_700 (seeds 0+1)": ["mean_textcollab_700", "mean_textcollab_700_seed1"],
    "seq_textcollab_700, 20 beams (seeds 0+1)": ["seq_textcollab_700_beams20", "seq_textcollab_700_seed1_beams20"],
    "seq_textcollab_1400_cosine (seeds 0+1)": ["seq_textcollab_1400_cosine", "seq_textcollab_1400_cosine_seed1"],
    "mean_textcollab_1400_cosine (seeds 0+1)": ["mean_textcollab_1400_cosine", "mean_textcollab_1400_cosine_seed1"],
}
# paired comparisons over the same users: what is measured -> (arm or pooled name, minus this arm or pooled name)
COMPARISONS = {
    "GTI minus the mean start, 40 steps each (seed 0)": ("seq_textcollab_40", "mean_textcollab_40"),
    "GTI minus the mean start, 140 steps each (seed 0)": ("seq_textcollab_140", "mean_textcollab_140"),
    "GTI's 40 + 40 steps minus the mean start given 140 (2.7x the CPU time)": (
        "seq_textcollab_40",
        "mean_textcollab_140",
    ),
    "GTI minus the mean start, 700 steps each (one epoch; compute-matched within 1%), seed 0": (
        "seq_textcollab_700",
        "mean_textcollab_700",
    ),
    "GTI minus the mean start, 700 steps each (one epoch; compute-matched within 1%), seeds 0+1": (
        "seq_textcollab_700 (seeds 0+1)",
        "mean_textcollab_700 (seeds 0+1)",
    ),
    "cosine minus constant learning rate, one epoch (seed 0)": ("seq_textcollab_700_cosine", "seq_textcollab_700"),
    "latest chunk per user minus every chunk, 40 steps (seed 0)": ("latest_textcollab_40", "seq_textcollab_40"),
    "latest chunk per user (one pass, 118 steps) minus every chunk (140 steps), seed 0": (
        "latest_textcollab_118",
        "seq_textcollab_140",
    ),
    "cosine minus constant lr, every chunk, 120 steps vs 140 (seed 0)": (
        "seq_textcollab_120_cosine",
        "seq_textcollab_140",
    ),
    "120 steps (cosine) minus the demo's 40 (constant lr), seed 0": ("seq_textcollab_120_cosine", "seq_textcollab_40"),
    "150 grounding steps minus 40, both then 40 fine-tuning steps (seed 0)": (
        "ground150_textcollab_40",
        "seq_textcollab_40",
    ),
    "peak lr 3e-3 minus 1e-3, 120 steps (cosine), seed 0": (
        "seq_textcollab_120_cosine_lr3e-3",
        "seq_textcollab_120_cosine",
    ),
    "cosine minus constant lr, one pass of the latest chunks (118 steps), seed 0": (
        "latest_textcollab_118_cosine",
        "latest_textcollab_118",
    ),
    "one pass of the latest chunks (118 steps, cosine) minus the demo's 40 steps (seed 0)": (
        "latest_textcollab_118_cosine",
        "seq_textcollab_40",
    ),
    "latest chunks minus every chunk, both cosine, 118 vs 120 steps (seed 0)": (
        "latest_textcollab_118_cosine",
        "seq_textcollab_120_cosine",
    ),
    "GTI minus the mean start, 1,400 steps each (two epochs, cosine), seed 0": (
        "seq_textcollab_1400_cosine",
        "mean_textcollab_1400_cosine",
    ),
    "GTI minus the mean start, 1,400 steps each (two epochs, cosine), seeds 0+1": (
        "seq_textcollab_1400_cosine (seeds 0+1)",
        "mean_textcollab_1400_cosine (seeds 0+1)",
    ),
    "two epochs (cosine) minus one (constant lr), GTI, seed 0": ("seq_textcollab_1400_cosine", "seq_textcollab_700"),
    "two epochs (cosine) minus one (constant lr), GTI, seeds 0+1": (
        "seq_textcollab_1400_cosine (seeds 0+1)",
        "seq_textcollab_700 (seeds 0+1)",
    ),
    "two epochs (cosine) minus one (constant lr), the mean start, seeds 0+1": (
        "mean_textcollab_1400_cosine (seeds 0+1)",
        "mean_textcollab_700 (seeds 0+1)",
    ),
    "two epochs (cosine) minus one (constant lr), the mean start, seed 0": (
        "mean_textcollab_1400_cosine",
        "mean_textcollab_700",
    ),
    "GTI minus the mean start, 700 steps each, both ranked with 20 beams (seed 0)": (
        "seq_textcollab_700_beams20",
        "mean_textcollab_700_beams20",
    ),
    "20 beams minus 10, one epoch (seed 0)": ("seq_textcollab_700_beams20", "seq_textcollab_700"),
    "20 beams minus 10, one epoch, seeds 0+1": (
        "seq_textcollab_700, 20 beams (seeds 0+1)",
        "seq_textcollab_700 (seeds 0+1)",
    ),
    "40 beams minus 20, one epoch (seed 0)": ("seq_textcollab_700_beams40", "seq_textcollab_700_beams20"),
    "40 beams minus 10, one epoch (seed 0)": ("seq_textcollab_700_beams40", "seq_textcollab_700"),
    "20 beams minus 10, 40 + 40 steps (seed 0)": ("seq_textcollab_40_beams20", "seq_textcollab_40"),
    "lr 3e-3 minus 1e-3, 140 steps (seed 0)": ("sweep_lr3e-3_140", "seq_textcollab_140"),
    "lr 3e-4 minus 1e-3, 140 steps (seed 0)": ("sweep_lr3e-4_140", "seq_textcollab_140"),
    "LoRA r 32 minus r 8, 140 steps (seed 0)": ("sweep_r32_140", "seq_textcollab_140"),
    "50-item minus 20-item chunks, equal tokens (seed 0)": ("sweep_history50_56", "seq_textcollab_140"),
}


def overrides(arm: str) -> list[str]:
    embedding, extra = ARMS[arm]
    return [*COMMON, f"semantic_ids.embedding={embedding}", *extra, f"output.output_dir={OUT / arm}"]


def recipe(arm: str, stages: str, extra: list[str] = ()) -> None:
    sets = [x for o in [*overrides(arm), f"output.stages={stages}", *extra] for x in ("--set", o)]
    subprocess.run([sys.executable, "recipes/gti.py", "--config", CONFIG, *sets], cwd=ROOT, check=True)


def share_grounding(arm: str) -> list[str]:
    """Copy the grounded adapter of an earlier arm with the same IDs into this arm's folder (if there is one)."""
    out = OUT / arm
    if (out / "grounded").exists():  # grounded here, fine-tuning (re)starts from it with this arm's settings
        return ["output.overwrite=true"]
    if (out / "adapter").exists():
        return []
    if "grounding.max_steps=0" in _grounding_key(arm):  # the mean start: nothing to share
        return []
    for other in ARMS:
        source = OUT / other
        if other != arm and _grounding_key(other) == _grounding_key(arm) and (source / "grounded").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / "grounded", out / "grounded")
            shutil.copy(source / "semantic_ids.safetensors", out / "semantic_ids.safetensors")
            (out / "shared_grounding.json").write_text(json.dumps({"from": other}))
            return ["output.overwrite=true"]
    return []


def _grounding_key(arm: str) -> tuple:
    """Arms with equal keys ground alike: the same IDs, seed, grounding and adapter settings (the last override of
    each wins). data.max_length is left out: grounding prompts (a title or description and its IDs) never reach it."""
    embedding, extra = ARMS[arm]
    last = {o.split("=")[0]: o for o in [*COMMON, *extra]}
    shaping = sorted(v for k, v in last.items() if k.startswith(("grounding.", "adapter.", "semantic_ids.")))
    return embedding, last["output.seed"], *shaping


def train(arms: list[str]) -> None:
    for arm in arms:
        if (OUT / arm / "adapter").exists():
            continue
        if arm in SAME_TRAINING:
            source, out = OUT / SAME_TRAINING[arm], OUT / arm
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "semantic_ids.safetensors", out)
            shutil.copy(source / "train_time.json", out)
            shutil.copytree(source / "adapter", out / "adapter")
            continue
        extra = share_grounding(arm)
        start, cpu = time.perf_counter(), _children_cpu()
        recipe(arm, "[ground,finetune]", extra)
        (OUT / arm / "train_time.json").write_text(
            json.dumps({"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu})
        )


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def evaluate(arms: list[str]) -> None:
    for arm in arms:
        out = OUT / arm
        if not (out / "adapter").exists() or (out / "evaluated.json").exists():
            continue
        start, cpu = time.perf_counter(), _children_cpu()
        recipe(arm, "[evaluate]", ["output.overwrite=true"])  # settings as trained; only the stage list differs
        (out / "evaluated.json").write_text(
            json.dumps({"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - cpu})
        )


def report() -> dict:
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    arms = result.setdefault("arms", {})
    for arm in ARMS:
        out = OUT / arm
        if not (out / "evaluated.json").exists():
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        rankings = json.loads((out / "rankings.json").read_text())
        train_time = json.loads((out / "train_time.json").read_text()) if (out / "train_time.json").exists() else {}
        arms[arm] = {
            "overrides": overrides(arm)[:-1],
            "metrics": metrics["metrics"],
            "finetune": metrics.get("finetune"),
            "grounding_steps": metrics["config"]["grounding"]["max_steps"],
            "shared_grounding": (out / "shared_grounding.json").exists(),
            "train_time": train_time,
            "evaluate": json.loads((out / "evaluated.json").read_text()),
            "evaluate_stage_s": metrics["timings_s"].get("evaluate"),
            "hit_ranks_gz": pack(hit_ranks(rankings)),
        }
    baselines = ROOT / "benchmarks" / "results" / "classical_baselines.json"
    sasrec = None
    if baselines.exists():
        classical = json.loads(baselines.read_text())
        ranks = classical.get("hit_ranks_gz", {}).get("SASRec (history excluded)")
        sasrec = hits_from_ranks(unpack(ranks)) if ranks else None
    hits = {arm: hits_from_ranks(unpack(entry["hit_ranks_gz"])) for arm, entry in arms.items()}
    for arm, entry in arms.items():
        for old in ("vs_mean_start", "vs_mean_start_more_compute"):  # now under result["comparisons"]
            entry.pop(old, None)
        if sasrec is not None:
            entry["vs_sasrec"] = bootstrap_difference(sasrec, hits[arm])
    pooled = result.setdefault("pooled", {})
    for name, members in POOLED.items():
        if all(m in hits for m in members):
            hits[name] = average_hits([hits[m] for m in members])
            pooled[name] = {
                "arms": members,
                "recall@10": sum(h[0] for h in hits[name].values()) / len(hits[name]),
                "ndcg@10": sum(h[1] for h in hits[name].values()) / len(hits[name]),
            }
            if sasrec is not None:
                pooled[name]["vs_sasrec"] = bootstrap_difference(sasrec, hits[name])
    comparisons = result.setdefault("comparisons", {})
    for label, (arm, baseline) in COMPARISONS.items():
        if arm in hits and baseline in hits:
            comparisons[label] = {"arm": arm, "minus": baseline} | bootstrap_difference(hits[baseline], hits[arm])
    result |= run_environment()
    RESULTS.write_text(json.dumps(result, indent=2))
    nan = float("nan")
    print(
        "| arm | recall@10 | NDCG@10 | x popularity | recall@10 - SASRec [95% CI] | NDCG@10 - SASRec [95% CI] |"
        " fine-tuning run CPU s | evaluation CPU s |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for arm, entry in arms.items():
        model, popular = entry["metrics"]["model"], entry["metrics"]["popularity"]
        versus = entry.get("vs_sasrec", {})
        cells = [format_difference(versus[m]) if m in versus else "" for m in METRICS]
        print(
            f"| {arm} | {model['recall@10']:.4f} | {model['ndcg@10']:.4f} | "
            f"{model['recall@10'] / popular['recall@10']:.2f} | {cells[0]} | {cells[1]} | "
            f"{entry['train_time'].get('cpu_s', nan):.0f} | {entry['evaluate'].get('cpu_s', nan):.0f} |"
        )
    for name, entry in pooled.items():
        cells = [format_difference(entry["vs_sasrec"][m]) if "vs_sasrec" in entry else "" for m in METRICS]
        print(f"| {name} | {entry['recall@10']:.4f} | {entry['ndcg@10']:.4f} | | {cells[0]} | {cells[1]} | | |")
    print("\n| paired comparison (943 users) | recall@10 [95% CI] | NDCG@10 [95% CI] |\n|:--|--:|--:|")
    for label, entry in comparisons.items():
        print(f"| {label} | {format_difference(entry['recall@10'])} | {format_difference(entry['ndcg@10'])} |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "evaluate", "report"])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {list(ARMS)}")
    args = parser.parse_args()
    arms = args.arms.split(",")
    {"train": train, "evaluate": evaluate, "report": lambda _: report()}[args.action](arms)


if __name__ == "__main__":
    main()
