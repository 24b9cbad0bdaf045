"""The one pipeline both recipes run, stage by stage. Each stage's result is a folder under `output_dir`; a rerun
resumes where it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import set_seed

from ..sharing.hub import save_for_hub
from ..training import diagnostics
from .config import RecipeConfig, recipe_to_dict
from .memory_check import check_recipe_memory
from .outputs import GROUNDED_FOLDER, prepare_output_dir
from .recommendation import RecommendationTask
from .stages import finetune_stage, ground_stage
from .task import Task


@dataclass(frozen=True)
class TrainingStage:
    name: str  # its name in `output.stages`
    section: str  # its config section, and its key in the results
    folder: str  # the folder it saves under `output_dir`
    label: str  # the geometry diagnostics' label after it
    train: Callable[..., dict]  # (task, model, tokenizer, reference) -> what it measured


TRAINING_STAGES = (
    TrainingStage("ground", "grounding", GROUNDED_FOLDER, "grounded", ground_stage),
    TrainingStage("finetune", "finetune", "adapter", "finetuned", finetune_stage),
)


def resume_point(out: Path) -> Path | None:
    """The folder of the last finished training stage, if any (later stages win)."""
    for stage in reversed(TRAINING_STAGES):
        if (out / stage.folder).exists():
            return out / stage.folder
    return None


def _runs(stage: TrainingStage, config, out: Path, resume_from: Path | None) -> bool:
    """Whether `stage` runs: named in `output.stages`, given steps, and not done (its folder saved; grounding is
    also done when the run resumes from any saved stage)."""
    if stage.name not in config.output.stages or getattr(config, stage.section).max_steps == 0:
        return False
    return not ((out / stage.folder).exists() or (stage.name == "ground" and resume_from is not None))


def run_pipeline(task: Task) -> dict:
    """Run the stages `task.config.output.stages` names; return the results (the task writes them)."""
    config = task.config
    state = PartialState(cpu=not torch.cuda.is_available())
    run_start = time.perf_counter()
    set_seed(config.output.seed)
    out = prepare_output_dir(config, state, task.name)
    timings, results = {}, {"config": recipe_to_dict(config)}
    start = time.perf_counter()
    task.prepare(out, state)  # every data error surfaces before any weights are loaded
    timings["data"] = time.perf_counter() - start
    resume_from = resume_point(out)
    check_recipe_memory(config, len(task.new_tokens()))  # before any weights are loaded
    tokenizer, model = task.build_model(resume_from)
    reference = task.reference(model, tokenizer)
    loaded = "start" if resume_from is None else f"loaded from {resume_from.name}/"
    results["geometry"] = {loaded: diagnostics.summarize_model(model, reference)}

    for stage in TRAINING_STAGES:
        if not _runs(stage, config, out, resume_from):
            continue
        start = time.perf_counter()
        results[stage.section] = stage.train(task, model, tokenizer, reference)
        timings[stage.name] = time.perf_counter() - start
        results["geometry"][stage.label] = diagnostics.summarize_model(model, reference)
        if state.is_main_process:
            save_for_hub(model, tokenizer, out / stage.folder, extra_files=task.saved_with_adapter(out))
        state.wait_for_everyone()

    if "evaluate" in config.output.stages and state.is_main_process:
        start = time.perf_counter()
        results |= task.evaluate(model, tokenizer)
        timings["evaluate"] = time.perf_counter() - start
    results["timings_s"] = timings
    results["wall_s"] = time.perf_counter() - run_start
    if state.is_main_process:
        task.write_results(model, tokenizer, results, out)
        text = task.summary(results)
        if text:
            print(text, flush=True)
    state.wait_for_everyone()
    return results


def run_recipe(config: RecipeConfig) -> dict:
    """The recommendation recipe: `run_pipeline` on its task."""
    return run_pipeline(RecommendationTask(config))
