"""Does grounding ground? Curves over grounding steps on SmolLM2-135M + MovieLens-100k semantic IDs.

    .venv/bin/python benchmarks/grounding_curves.py --lrs 1e-3,3e-3,1e-2 --steps 150 --eval-every 50

For each learning rate, one grounding run (mean start, the recipe's own data, IDs and model code) evaluated
every `--eval-every` steps: loss per template, effective rank and mean cosine of the new rows, per-level
accuracy of the next code given the title (teacher-forced, chance 1/K), and title -> ID hit@1/@10 with
constrained decoding. Results go to benchmarks/results/grounding_curves.json after every evaluation; a rerun
skips the learning rates already finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
from accelerate import PartialState
from common import ROOT, load_result, result_path, write_result
from mapping import code_accuracy, title_to_id_hits
from transformers import TrainerCallback, set_seed

from gti_peft import ground, new_token_rows
from gti_peft.recipe.config import load_recipe_config
from gti_peft.recipe.data import load_data, semantic_ids_stage
from gti_peft.recipe.model import build_model
from gti_peft.recsys import grounding_pairs
from gti_peft.training import diagnostics
from gti_peft.training.templates import PAPER_TEMPLATES


class CurveCallback(TrainerCallback):
    """Evaluates the mapping every `every` steps (and at step 0) while grounding trains."""

    def __init__(self, measure, every: int):
        self.measure, self.every = measure, every

    def on_train_begin(self, args, state, control, **kwargs):
        self.measure(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.measure(state.global_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "recipes" / "smollm2-135m" / "movielens.yaml"))
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-items", type=int, default=100, help="Items for title -> ID and code accuracy.")
    parser.add_argument("--templates", default="", help="Comma-separated template names (default: the paper's six).")
    parser.add_argument("--out", default=str(result_path("grounding_curves")))
    args = parser.parse_args()

    config = load_recipe_config(args.config, ["output.output_dir=outputs/benchmarks/grounding-curves"])
    state = PartialState(cpu=not torch.cuda.is_available())
    out = Path(config.output.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(config)
    sids = semantic_ids_stage(config, data, out, state)
    pairs = grounding_pairs(data.items, sids)
    sample = random.Random(0).sample(range(len(pairs)), args.eval_items)
    eval_pairs = [pairs[i] for i in sample]
    eval_items = [data.items["item"][i] for i in sample]
    levels = [[sids.token(level, code) for code in range(size)] for level, size in enumerate(sids.level_sizes)]
    levels = levels[: len(sids.codebooks)]

    names = args.templates.split(",") if args.templates else [t.name for t in PAPER_TEMPLATES]
    templates = [t for t in PAPER_TEMPLATES if t.name in names]
    path = Path(args.out)
    results = load_result(path) or {"runs": {}}
    results["settings"] = vars(args) | {
        "model": config.model.name_or_path,
        "n_new_tokens": len(sids.vocabulary()),
        "levels": [len(level) for level in levels],
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for lr in [float(x) for x in args.lrs.split(",")]:
        key = f"lr={lr:g}" + (f" [{args.templates}]" if args.templates else "")
        if results["runs"].get(key, {}).get("done"):
            print(f"{key}: done already, skipped")
            continue
        set_seed(0)
        tokenizer, model = build_model(config, sids, data, resume_from=None)
        curve = []

        def measure(step: int, model=model, tokenizer=tokenizer, curve=curve, key=key):
            start = time.perf_counter()
            _, rows, _ = new_token_rows(model)
            point = {"step": step}
            point |= diagnostics.cosine_stats(rows.float().cpu())
            point["effective_rank"] = diagnostics.effective_rank(rows.float().cpu())
            point |= code_accuracy(model, tokenizer, eval_pairs, levels, prompt_style=config.data.prompt_style)
            point |= title_to_id_hits(
                model, tokenizer, eval_pairs, sids.token_lists(), eval_items, config.data.prompt_style, num_beams=10
            )
            point["eval_seconds"] = time.perf_counter() - start
            curve.append(point)
            results["runs"][key] = {"curve": curve, "done": False}
            write_result(path, results)
            print(json.dumps(point), flush=True)

        report = ground(
            model,
            tokenizer,
            pairs,
            templates,
            max_length=config.data.max_length,
            prompt_style=config.data.prompt_style,
            max_steps=args.steps,
            learning_rate=lr,
            per_device_train_batch_size=args.batch_size,
            logging_steps=10,
            callbacks=[CurveCallback(measure, args.eval_every)],
        )
        results["runs"][key] = {
            "curve": curve,
            "loss_history": report.loss_history,
            "template_loss_before": report.template_loss_before,
            "template_loss_after": report.template_loss_after,
            "seconds_per_step": report.seconds_per_step,
            "done": True,
        }
        write_result(path, results)
    print(f"wrote {path}; table: .venv/bin/python benchmarks/render_results.py")


if __name__ == "__main__":
    main()
