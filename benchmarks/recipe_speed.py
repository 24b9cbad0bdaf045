"""Examples/s and tokens/s of the SmolLM2 recipe's own fine-tuning and grounding steps, before and after each change.

    .venv/bin/python benchmarks/recipe_speed.py                # ~10 min on 2 cores
    .venv/bin/python benchmarks/recipe_speed.py --threads 1 --stages finetune --arms "group_by_length,sequence"
        # next-item targets per CPU-second: windows (the recipe before) against sequence examples
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        .venv/bin/python benchmarks/recipe_speed.py --tag avx2  # an AVX2-only CPU, approximately

Every arm trains the same model (SmolLM2-135M + GTI, the recipe's build_model) on the same training windows and
grounding pairs; only the setting named by the arm changes, cumulatively, starting from the recipe as it was
(chat template with its default system prompt, ", " between IDs, lora_dropout 0.05, fp32). The last arm trains on
sequence examples (`data.examples: sequences`): each example holds many next-item targets, so its rows report
next-item targets per (CPU-)second beside examples per second. Interleaved rounds; the first step of each round is
not timed. Writes benchmarks/results/recipe_speed[-<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import PartialState
from environment import run_environment
from transformers import TrainerCallback, TrainingArguments

from gti_peft.recipe.config import load_recipe_config
from gti_peft.recipe.data import finetune_dataset, load_data, semantic_ids_stage
from gti_peft.recipe.model import build_model
from gti_peft.recsys import grounding_pairs
from gti_peft.training.grounding import grounding_dataset, only_new_rows_trainable
from gti_peft.training.precision import bf16_is_faster
from gti_peft.training.trainer import AnswerOnlyTrainer, answer_collator, answer_loss

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "smollm2-135m" / "movielens.yaml"
# the windows examples the speed arms were measured on (the recipe YAML itself now trains on sequences)
WINDOWS = [
    "data.examples=windows",
    "data.max_history=5",
    "data.max_train_examples=4000",
    "data.max_chunks_per_user=null",
    "finetune.per_device_train_batch_size=16",
]
# cumulative: each arm adds one change to the one before
ARMS = {
    "before (chat + system prompt, ', ', dropout 0.05, fp32)": [
        *WINDOWS,
        "data.prompt_style=chat",
        "data.history_separator=', '",
        "adapter.lora_dropout=0.05",
    ],
    "+ plain prompts, no separator": [
        *WINDOWS,
        "data.prompt_style=plain",
        "data.history_separator=''",
        "adapter.lora_dropout=0.05",
    ],
    "+ lora_dropout 0": [*WINDOWS, "data.prompt_style=plain", "data.history_separator=''", "adapter.lora_dropout=0.0"],
}


SEQUENCE_ARM = "+ sequence examples (chunks of 20 items, batch 8)"
SEQUENCE_OVERRIDES = [
    "data.examples=sequences",
    "data.max_history=20",
    "data.max_train_examples=null",
    "data.max_chunks_per_user=null",  # every chunk of every user, as measured
    "finetune.per_device_train_batch_size=8",
]


def sids_of(tokenizer) -> set[int]:
    """Token ids of the semantic-ID vocabulary (`<a_12>`-style tokens)."""
    return {i for token, i in tokenizer.get_added_vocab().items() if re.fullmatch(r"<[a-z]_\d+>", token)}


def next_item_targets(dataset, sid_ids: set[int]) -> float:
    """Mean next-item targets per example: labelled ID tokens / tokens per ID (one target per ID)."""
    labelled = [sum(1 for label in labels if label in sid_ids) for labels in dataset["labels"]]
    per_id = min(n for n in labelled if n)  # a window labels one ID, the shortest chunk (2 items) one ID too
    return statistics.mean(labelled) / per_id


class StepTimer(TrainerCallback):
    """Wall and process CPU seconds of every step. On a busy machine the wall time drifts with the other load;
    the CPU time of a 1-thread run (`--threads 1`) counts only this run's own work."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        self.cpu_times.append(time.process_time() - self._cpu)


def _timed_steps(model, dataset, collator, options: dict, steps: int, rows_only: bool) -> StepTimer:
    timer = StepTimer()
    args = TrainingArguments(max_steps=steps, **options)
    trainer = AnswerOnlyTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer]
    )
    model.train()
    if rows_only:
        with only_new_rows_trainable(model):
            trainer.train()
    else:
        trainer.train()
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per round; the first is not timed")
    parser.add_argument("--tag", default="")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time is contention-proof)")
    parser.add_argument("--stages", default="finetune,ground", help="comma-separated: finetune, ground")
    parser.add_argument(
        "--arms", default=None, help="comma-separated substrings of the arm names to run (default all)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="gti-recipe-speed-"))
    bf16 = bf16_is_faster()
    arms = dict(ARMS)
    if bf16:
        arms["+ bf16 (auto: faster on this CPU)"] = [
            *ARMS["+ lora_dropout 0"],
            "finetune.bf16=true",
            "grounding.bf16=true",
        ]
    arms["+ group_by_length"] = [
        *list(arms.values())[-1],
        "finetune.train_sampling_strategy=group_by_length",
        "grounding.train_sampling_strategy=group_by_length",
    ]
    arms[SEQUENCE_ARM] = [*arms["+ group_by_length"], *SEQUENCE_OVERRIDES]
    if args.arms:
        arms = {name: o for name, o in arms.items() if any(part in name for part in args.arms.split(","))}
    stages = args.stages.split(",")
    built, losses = {}, {}
    for name, overrides in arms.items():
        config = load_recipe_config(CONFIG, [f"output.output_dir={out}", *overrides])
        data = load_data(config)
        sids = semantic_ids_stage(config, data, out, PartialState())
        torch.manual_seed(0)
        tokenizer, model = build_model(config, sids, data, None)
        finetune = finetune_dataset(config, tokenizer, sids, data)
        pairs = grounding_pairs(data.items, sids)
        grounding = grounding_dataset(
            tokenizer, pairs, config.grounding.grounding_templates(), config.data.max_length, config.data.prompt_style
        ).remove_columns(["template"])
        built[name] = (config, tokenizer, model, finetune, grounding)
        for stage, dataset in [(s, d) for s, d in (("finetune", finetune), ("ground", grounding)) if s in stages]:
            section = config.finetune if stage == "finetune" else config.grounding
            first = answer_collator(tokenizer)([dataset[i] for i in range(section.per_device_train_batch_size)])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=section.bf16 is True):
                model.eval()
                losses[(name, stage)] = float(answer_loss(model, first))
    times = {(name, stage): [] for name in arms for stage in stages}
    cpu_times = {key: [] for key in times}
    for round_ in range(args.rounds):
        keys = list(times)
        keys = keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
        for name, stage in keys:
            config, tokenizer, model, finetune, grounding = built[name]
            section = config.finetune if stage == "finetune" else config.grounding
            options = {
                "output_dir": str(out / "trainer"),
                "per_device_train_batch_size": section.per_device_train_batch_size,
                "learning_rate": 1e-4,
                "bf16": section.bf16 is True,
                "train_sampling_strategy": section.train_sampling_strategy,
                "save_strategy": "no",
                "report_to": "none",
                "disable_tqdm": True,
                "logging_strategy": "no",
                "remove_unused_columns": False,
                "use_cpu": True,
                "seed": round_,
            }
            dataset = finetune if stage == "finetune" else grounding
            timer = _timed_steps(
                model, dataset, answer_collator(tokenizer), options, args.steps, rows_only=stage == "ground"
            )
            times[(name, stage)] += timer.times[1:]  # the first step builds the optimizer state
            cpu_times[(name, stage)] += timer.cpu_times[1:]
            print(
                f"round {round_} {stage:8s} {name}: {statistics.median(timer.times[1:]):.2f} s/step, "
                f"{statistics.median(timer.cpu_times[1:]):.2f} CPU s/step",
                flush=True,
            )
    rows = []
    for (name, stage), t in times.items():
        config, tokenizer, model, finetune, grounding = built[name]
        dataset = finetune if stage == "finetune" else grounding
        batch = (config.finetune if stage == "finetune" else config.grounding).per_device_train_batch_size
        tokens = statistics.mean(len(ids) for ids in dataset["input_ids"])
        targets = next_item_targets(dataset, sids_of(tokenizer)) if stage == "finetune" else 1.0
        seconds, cpu_seconds = statistics.median(t), statistics.median(cpu_times[(name, stage)])
        rows.append(
            {
                "arm": name,
                "stage": stage,
                "median_s_per_step": seconds,
                "examples_per_s": batch / seconds,
                "tokens_per_s": batch * tokens / seconds,
                "median_cpu_s_per_step": cpu_seconds,
                "examples_per_cpu_s": batch / cpu_seconds,
                "next_item_targets_per_example": targets,
                "targets_per_s": batch * targets / seconds,
                "targets_per_cpu_s": batch * targets / cpu_seconds,
                "mean_tokens_per_example": tokens,
                "first_batch_loss_before_training": losses[(name, stage)],
                "steps_timed": len(t),
            }
        )
    for stage in stages:
        stage_rows = [r for r in rows if r["stage"] == stage]
        for r in stage_rows:
            r["examples_per_s_vs_before"] = r["examples_per_s"] / stage_rows[0]["examples_per_s"]
            r["examples_per_cpu_s_vs_before"] = r["examples_per_cpu_s"] / stage_rows[0]["examples_per_cpu_s"]
            r["targets_per_cpu_s_vs_first_arm"] = r["targets_per_cpu_s"] / stage_rows[0]["targets_per_cpu_s"]
    result = run_environment() | {"rows": rows, "rounds": args.rounds, "steps_per_round": args.steps, "bf16": bf16}
    result["threads"] = torch.get_num_threads()
    result["arms_run"], result["stages_run"] = list(arms), stages
    name = "recipe_speed" + (f"-{args.tag}" if args.tag else "")
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(
            f"{r['stage']:8s} {r['arm']:55s} {r['examples_per_s']:6.2f} ex/s {r['tokens_per_s']:7.0f} tok/s "
            f"x{r['examples_per_s_vs_before']:.2f} | {r['examples_per_cpu_s']:6.2f} ex/CPU-s "
            f"x{r['examples_per_cpu_s_vs_before']:.2f} | {r['targets_per_cpu_s']:6.2f} targets/CPU-s "
            f"x{r['targets_per_cpu_s_vs_first_arm']:.2f} | loss {r['first_batch_loss_before_training']:.4f}"
        )


if __name__ == "__main__":
    main()
