"""The recipe, stage by stage. Each stage's result is a folder under `output_dir`; a rerun resumes where it stopped."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import set_seed

from ..sharing.hub import save_for_hub
from ..training import diagnostics
from .config import RecipeConfig, recipe_to_dict
from .data import SID_FILE, check_example_length, check_grounding_mix, load_data, semantic_ids_stage
from .evaluation import write_recommender_files
from .memory_check import check_recipe_memory
from .model import build_model
from .outputs import prepare_output_dir, write_results
from .stages import check_evaluation, evaluate_stage, finetune_stage, ground_stage

# stage -> (its function, its section in the config, the folder it saves, its key in the results, its geometry label)
TRAINING_STAGES = {
    "ground": (ground_stage, "grounding", "grounded", "grounding", "grounded"),
    "finetune": (finetune_stage, "finetune", "adapter", "finetune", "finetuned"),
}


def _resume_point(out: Path) -> Path | None:
    """The folder of the last finished training stage, if any (the adapter wins over the grounded rows)."""
    for folder in ("adapter", "grounded"):
        if (out / folder).exists():
            return out / folder
    return None


def run_recipe(config: RecipeConfig) -> dict:
    """Run the stages named in `config.output.stages`; return the results (also written to metrics.json)."""
    state = PartialState(cpu=not torch.cuda.is_available())
    run_start = time.perf_counter()
    set_seed(config.output.seed)
    out = prepare_output_dir(config, state)
    timings, results = {}, {"config": recipe_to_dict(config)}
    start = time.perf_counter()
    data = load_data(config)
    check_grounding_mix(config, data)
    check_evaluation(config, data)  # a user with too few items left to rank: refused before training
    sids = semantic_ids_stage(config, data, out, state)
    check_example_length(config, sids)  # before any weights are loaded
    timings["data_and_semantic_ids"] = time.perf_counter() - start
    resume_from = _resume_point(out)
    check_recipe_memory(config, len(sids.vocabulary()))  # before any weights are loaded
    tokenizer, model = build_model(config, sids, data, resume_from)
    reference = sids.codebook_for_tokens()
    loaded = "start" if resume_from is None else f"loaded from {resume_from.name}/"
    results["geometry"] = {loaded: diagnostics.summarize_model(model, reference)}

    for stage, (run, section, folder_name, key, label) in TRAINING_STAGES.items():
        folder = out / folder_name
        done = folder.exists() or (stage == "ground" and resume_from is not None)  # rows already grounded
        if stage not in config.output.stages or getattr(config, section).max_steps == 0 or done:
            continue
        start = time.perf_counter()
        results[key] = run(config, model, tokenizer, sids, data, out)
        timings[stage] = time.perf_counter() - start
        results["geometry"][label] = diagnostics.summarize_model(model, reference)
        if state.is_main_process:
            extra = [out / SID_FILE, *write_recommender_files(config, data.items, out)]  # for Recommender
            save_for_hub(model, tokenizer, folder, extra_files=extra)
        state.wait_for_everyone()

    if "evaluate" in config.output.stages and state.is_main_process:
        start = time.perf_counter()
        results |= evaluate_stage(config, model, tokenizer, sids, data)
        timings["evaluate"] = time.perf_counter() - start
    results["timings_s"] = timings
    results["wall_s"] = time.perf_counter() - run_start
    if state.is_main_process:
        write_results(config, model, tokenizer, results, out, out / "adapter")
        if "table" in results:
            print(summary(results), flush=True)
    state.wait_for_everyone()
    return results


def summary(results: dict) -> str:
    """The run's closing lines: model against popularity on the evaluated users, and the wall time."""
    model, popular = results["metrics"]["model"], results["metrics"]["popularity"]
    key = "recall@10" if "recall@10" in model else next(k for k in model if k.startswith("recall@"))
    ratio = model[key] / popular[key] if popular[key] else float("inf")
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results["timings_s"].items())
    return (
        f"{results['table']}\n\n{key} {model[key]:.4f} vs popularity {popular[key]:.4f} "
        f"({ratio:.2f}x) on {model['n_users']} test users. Wall time {results['wall_s'] / 60:.1f} min ({stages})."
    )
