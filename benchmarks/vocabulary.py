"""The vocabulary demo, measured: GTI against the same mean start without grounding, at equal fine-tuning steps.

    .venv/bin/python benchmarks/vocabulary.py                      # seeds 0 and 1, ~2 x 10 min on 2 cores
    .venv/bin/python benchmarks/vocabulary.py --avx2-seeds 1       # seed 1 with AVX2 kernels only (wall time)

Each seed is `gti-peft train --config smollm2-135m/wordnet --set output.seed=N` in its own process (wall time
includes start-up; both arms of a seed share words, corpus split and fine-tuning seed). A finished seed is not
run again. The held-out sentences are the same for every seed, so the paired bootstrap over them pools the seeds
(each sentence's new-token loss averaged over seeds, GTI minus mean start: negative favours GTI). Writes
benchmarks/results/vocabulary-smollm2-wordnet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUTPUTS, ROOT, result_path, write_result

CONFIG = "smollm2-135m/wordnet"
OUT = OUTPUTS / "vocabulary"
# kernels limited to AVX2 on an AVX512 machine: what a laptop-class CPU runs
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
METRICS = ("heldout_new_token_loss", "heldout_loss", "text_to_token_accuracy")


def cpu_capability(env: dict) -> str:
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def run_seed(seed: int, avx2: bool, extra: list[str], root: Path = OUT) -> dict:
    """The recipe for one seed in a fresh process; its metrics.json plus wall time and instruction set."""
    out = root / f"seed{seed}"
    wall_file = out / "wall.json"
    command = [sys.executable, "-m", "gti_peft.cli", "train", "--config", CONFIG, "--set", f"output.seed={seed}"]
    command += ["--set", f"output.output_dir={out}", *extra]
    env = {**os.environ, **(AVX2_ENV if avx2 else {})}
    if not wall_file.exists():
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        wall = {"wall_seconds": time.perf_counter() - start, "cpu_capability": cpu_capability(env)}
        wall["isa_env"] = AVX2_ENV if avx2 else {}
        wall_file.write_text(json.dumps(wall))
    return json.loads((out / "metrics.json").read_text()) | json.loads(wall_file.read_text())


def pooled_bootstrap(runs: dict[int, dict], gti: str, baseline: str, samples: int = 5000) -> dict:
    """Paired bootstrap over held-out sentences of the seed-averaged new-token loss (GTI minus baseline)."""
    from gti_peft.recipe.vocabulary import sentence_losses
    from gti_peft.recsys.metrics import paired_bootstrap

    def averaged(arm: str) -> dict[int, float]:
        per_seed = [sentence_losses(run["arms"][arm]["metrics"]["per_text"]) for run in runs.values()]
        return {k: sum(s[k] for s in per_seed) / len(per_seed) for k in per_seed[0]}

    return paired_bootstrap(averaged(baseline), averaged(gti), samples=samples, seed=0)


def table(runs: dict[int, dict]) -> str:
    lines = ["| seed | arm | held-out loss @ new tokens | held-out loss (all) | text -> token acc | eff. rank |"]
    lines.append("|---|---|---|---|---|---|")
    for seed, run in runs.items():
        for arm, result in run["arms"].items():
            m = result["metrics"]
            lines.append(
                f"| {seed} | {arm} | {m['heldout_new_token_loss']:.3f} | {m['heldout_loss']:.3f} | "
                f"{m['text_to_token_accuracy']:.3f} | {result['geometry']['final']['effective_rank']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--avx2-seeds", type=int, nargs="*", default=[], help="Seeds run with AVX2 kernels only.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Recipe override (all seeds).")
    parser.add_argument("--out", type=Path, default=OUT, help="Folder of the runs (one per seed).")
    parser.add_argument("--results", type=Path, default=result_path("vocabulary-smollm2-wordnet"))
    args = parser.parse_args(argv)
    extra = [x for override in args.overrides for x in ("--set", override)]
    runs = {seed: run_seed(seed, seed in args.avx2_seeds, extra, args.out) for seed in args.seeds}
    gti, baseline = list(runs[args.seeds[0]]["arms"])
    chance = runs[args.seeds[0]]["arms"][gti]["metrics"]["chance_accuracy"]
    result = {
        "config": CONFIG,
        "overrides": args.overrides,
        "new_tokens": runs[args.seeds[0]]["new_tokens"],
        "train_texts": runs[args.seeds[0]]["train_texts"],
        "heldout_texts": runs[args.seeds[0]]["heldout_texts"],
        "chance_accuracy": chance,
        "per_seed": {
            seed: {
                "wall_seconds": run["wall_seconds"],
                "cpu_capability": run["cpu_capability"],
                "isa_env": run["isa_env"],
                "seconds": {arm: r["seconds"] for arm, r in run["arms"].items()},
                "paired_bootstrap_new_token_loss": run.get("paired_bootstrap_new_token_loss"),
                "arms": {arm: {k: r["metrics"][k] for k in METRICS} for arm, r in run["arms"].items()},
                "geometry": {arm: r["geometry"] for arm, r in run["arms"].items()},
            }
            for seed, run in runs.items()
        },
        "pooled_paired_bootstrap_new_token_loss": pooled_bootstrap(runs, gti, baseline),
        "table": table(runs),
    }
    write_result(args.results, result)
    print(result["table"])
    print(
        "pooled paired bootstrap (GTI - mean start, new-token loss):", result["pooled_paired_bootstrap_new_token_loss"]
    )
    for seed, run in result["per_seed"].items():
        print(f"seed {seed}: {run['wall_seconds'] / 60:.1f} min wall, {run['cpu_capability']}")
    return result


if __name__ == "__main__":
    main()
