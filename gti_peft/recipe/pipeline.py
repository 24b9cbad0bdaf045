"""The recipe's stages. Each stage's result is a folder under `output_dir`; a rerun resumes where it stopped."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .. import diagnostics, offline_assets
from ..config import GTIConfig
from ..grounding import ground
from ..hub import push_to_hub, save_for_hub
from ..init import description_token_ids
from ..model import new_token_rows
from ..quantization import guard_cpu_4bit_training, load_4bit_causal_lm
from ..recsys import (
    SemanticIDs,
    format_metrics_table,
    grounding_pairs,
    item_texts,
    leave_one_out,
    load_interactions,
    load_items,
    load_movielens_100k,
    recommendation_messages,
    training_examples,
    user_histories,
)
from ..templates import DEFAULT_TEMPLATES, encode_prompt_answer
from ..tokens import add_new_tokens
from ..training import AnswerOnlyTrainer, answer_collator
from .config import RecipeConfig, recipe_to_dict
from .evaluation import TOKEN_PATTERN, evaluate_next_item

logger = logging.getLogger(__name__)
SID_FILE = "semantic_ids.safetensors"


@dataclass
class RecData:
    items: Dataset
    histories: dict
    split: object


def prepare_output_dir(config: RecipeConfig, state: PartialState) -> Path:
    """Refuse a folder holding something else (or another run's settings) unless `overwrite`."""
    out = Path(config.output.output_dir)
    saved = out / "recipe.yaml"
    current = recipe_to_dict(config)
    comparable = {k: v for k, v in current.items() if k not in ("output", "evaluation")}
    if out.exists() and any(out.iterdir()) and not config.output.overwrite:
        if not saved.exists():
            raise FileExistsError(
                f"output.output_dir={str(out)!r} holds files that are not a GTI recipe run: pick an empty or new "
                "folder, or set output.overwrite: true."
            )
        previous = yaml.safe_load(saved.read_text())
        changed = sorted(k for k in comparable if previous.get(k) != comparable[k])
        if changed:
            raise FileExistsError(
                f"output.output_dir={str(out)!r} holds a run with different {changed} settings: resuming would mix "
                "them. Use a new output_dir, or set output.overwrite: true."
            )
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(current, sort_keys=False))
    state.wait_for_everyone()
    return out


def load_data(config: RecipeConfig) -> RecData:
    args = config.data
    if args.dataset == "movielens-100k":
        interactions, items = load_movielens_100k()
    else:
        interactions = load_interactions(args.interactions_path, args.user_column, args.item_column, args.time_column)
        items = load_items(args.items_path, args.item_column, args.title_column, tuple(args.description_columns))
    histories = user_histories(interactions, items=items, min_interactions=args.min_interactions)
    if not histories:
        raise ValueError("No user has enough interactions: lower data.min_interactions or check the data.")
    return RecData(items, histories, leave_one_out(histories, max_history=args.max_history))


def semantic_ids_stage(config: RecipeConfig, data: RecData, out: Path, state: PartialState) -> SemanticIDs:
    path = out / SID_FILE
    with state.main_process_first():
        if not path.exists() and state.is_main_process:
            ids, texts = item_texts(data.items)
            args = config.semantic_ids
            sids = SemanticIDs.build(
                ids, texts, args.encoder, args.levels, args.codes_per_level, args.seed, method=args.method
            )
            sids.save(path)
    return SemanticIDs.load(path)


def _description_ids(tokenizer, sids: SemanticIDs, vocab: list[str], data: RecData, per_token: int):
    titles = dict(zip(data.items["item"], data.items["title"]))
    examples: dict[str, list[str]] = {token: [] for token in vocab}
    for item, sid in sids.to_dict().items():
        for token in TOKEN_PATTERN.findall(sid):
            if len(examples[token]) < per_token:
                examples[token].append(titles[item])
    texts = [", ".join(examples[t]) if examples[t] else "an unused item code" for t in vocab]
    return description_token_ids(tokenizer, texts)


def load_base(config: RecipeConfig):
    """The recipe's base model (4-bit when asked) and its resolved path."""
    path = offline_assets.resolve(config.model.name_or_path)
    if config.model.load_in_4bit:
        model = load_4bit_causal_lm(path, compute_dtype=getattr(torch, config.model.dtype))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, config.model.dtype))
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return path, model


def build_model(config: RecipeConfig, sids: SemanticIDs, data: RecData, resume_from: Path | None):
    """The base + GTI adapter: a fresh one, or the latest saved stage's adapter when resuming."""
    path, base = load_base(config)
    if resume_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(resume_from)
        model = PeftModel.from_pretrained(base, resume_from, is_trainable=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        rows = base.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ValueError(
                f"The tokenizer of {config.model.name_or_path!r} has {len(tokenizer)} tokens but the model has "
                f"{rows} embedding rows: they do not belong together. Load both from the same model."
            )
        vocab = sids.vocabulary()
        ids = add_new_tokens(tokenizer, vocab)
        args = config.adapter
        descriptions = None
        if args.init == "description":
            descriptions = _description_ids(tokenizer, sids, vocab, data, args.description_items_per_token)
        gti = GTIConfig(
            new_token_ids=ids,
            init=args.init,
            description_token_ids=descriptions,
            r=args.r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=args.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, gti)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    guard_cpu_4bit_training(model)
    return tokenizer, model


def _stage_args(stage, output_dir: Path, seed: int, **extra) -> dict:
    return {
        "output_dir": str(output_dir),
        "max_steps": stage.max_steps,
        "per_device_train_batch_size": stage.batch_size,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
        "learning_rate": stage.learning_rate,
        "lr_scheduler_type": stage.lr_scheduler_type,
        "warmup_steps": stage.warmup_steps,
        "logging_steps": stage.logging_steps,
        "save_strategy": "steps",
        "save_steps": stage.save_steps,
        "save_total_limit": 2,
        "bf16": stage.bf16,
        "seed": seed,
        "report_to": "none",
        "remove_unused_columns": False,
        # without use_cpu, Trainer never joins a CPU process group: every torchrun rank would think it is rank 0
        "use_cpu": not torch.cuda.is_available(),
        **extra,
    }


def _last_checkpoint(folder: Path) -> str | None:
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def grounding_templates(config: RecipeConfig) -> list:
    """The templates `grounding.templates` names (all of `DEFAULT_TEMPLATES` when it names none)."""
    names = set(config.grounding.templates or [t.name for t in DEFAULT_TEMPLATES])
    return [t for t in DEFAULT_TEMPLATES if t.name in names]


def ground_stage(config, model, tokenizer, sids, data, out: Path):
    checkpoints = out / "checkpoints-ground"
    report = ground(
        model,
        tokenizer,
        grounding_pairs(data.items, sids),
        grounding_templates(config),
        max_length=config.data.max_length,
        reference=_codebook_reference(sids, model),
        resume_from_checkpoint=_last_checkpoint(checkpoints),
        **_stage_args(config.grounding, checkpoints, config.output.seed, weight_decay=0.0),
    )
    return report


def finetune_examples(config: RecipeConfig, tokenizer, sids: SemanticIDs, data: RecData) -> Dataset:
    sid = sids.to_dict()
    windows = training_examples(data.split.train, max_history=config.data.max_history)
    limit = config.data.max_train_examples
    if limit is not None and len(windows) > limit:
        windows = random.Random(config.output.seed).sample(windows, limit)
    rows = []
    for ex in windows:
        messages = recommendation_messages([sid[i] for i in ex["history"]])
        rows.append(encode_prompt_answer(tokenizer, messages[0]["content"], sid[ex["target"]], config.data.max_length))
    return Dataset.from_list(rows)


def finetune_stage(config, model, tokenizer, sids, data, out: Path):
    checkpoints = out / "checkpoints-finetune"
    args = TrainingArguments(**_stage_args(config.finetune, checkpoints, config.output.seed))
    trainer = AnswerOnlyTrainer(
        model=model,
        args=args,
        train_dataset=finetune_examples(config, tokenizer, sids, data),
        data_collator=answer_collator(tokenizer),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoints))
    return {"steps": result.global_step, "seconds": time.perf_counter() - start}


def _codebook_reference(sids: SemanticIDs, model):
    ids = new_token_rows(model)[0]
    reference = sids.codebook_for_tokens()
    return reference if reference.shape[0] == len(ids) else None


def geometry(model, sids: SemanticIDs) -> dict:
    _, rows, _ = new_token_rows(model)
    old = model.get_input_embeddings().base_weight.detach()
    codebook = sids.codebook_for_tokens()  # rows line up with the first len(codebook) new tokens
    return diagnostics.summarize(rows[: len(codebook)].float().cpu(), old.float().cpu(), reference=codebook)


def run_recipe(config: RecipeConfig) -> dict:
    """Run the stages named in `config.output.stages`; return the metrics (also written to metrics.json)."""
    state = PartialState(cpu=not torch.cuda.is_available())
    set_seed(config.output.seed)
    out = prepare_output_dir(config, state)
    timings, results = {}, {"config": recipe_to_dict(config)}
    start = time.perf_counter()
    data = load_data(config)
    sids = semantic_ids_stage(config, data, out, state)
    timings["data_and_semantic_ids"] = time.perf_counter() - start
    grounded, adapter = out / "grounded", out / "adapter"
    resume_from = adapter if adapter.exists() else grounded if grounded.exists() else None
    tokenizer, model = build_model(config, sids, data, resume_from)
    results["geometry"] = {"start": geometry(model, sids)}
    stages = config.output.stages

    if "ground" in stages and config.grounding.max_steps > 0 and resume_from is None:
        start = time.perf_counter()
        report = ground_stage(config, model, tokenizer, sids, data, out)
        timings["ground"] = time.perf_counter() - start
        results["grounding"] = {k: v for k, v in report.to_dict().items() if k not in ("diagnostics_before",)}
        results["geometry"]["grounded"] = geometry(model, sids)
        if state.is_main_process:
            save_for_hub(model, tokenizer, grounded, extra_files=[out / SID_FILE])
        state.wait_for_everyone()
    if "finetune" in stages and config.finetune.max_steps > 0 and not adapter.exists():
        start = time.perf_counter()
        results["finetune"] = finetune_stage(config, model, tokenizer, sids, data, out)
        timings["finetune"] = time.perf_counter() - start
        results["geometry"]["finetuned"] = geometry(model, sids)
        if state.is_main_process:
            save_for_hub(model, tokenizer, adapter, extra_files=[out / SID_FILE])
        state.wait_for_everyone()
    if "evaluate" in stages and state.is_main_process:
        start = time.perf_counter()
        examples = data.split.test if config.evaluation.split == "test" else data.split.valid
        metrics = evaluate_next_item(
            model, tokenizer, examples, sids.to_dict(), data.split.train, config.evaluation, len(data.items)
        )
        timings["evaluate"] = time.perf_counter() - start
        results["metrics"] = {"model": metrics["model"], "popularity": metrics["popularity"]}
        targets = {ex["user"]: ex["target"] for ex in examples}
        rankings = {user: {"target": targets[user], "ranking": r} for user, r in metrics["rankings"].items()}
        (out / "rankings.json").write_text(json.dumps(rankings))  # per-user lists: paired statistics
        steps = config.grounding.max_steps if "ground" in config.output.stages else 0
        label = f"{config.adapter.init} init" + (f" + GTI ({steps} grounding steps)" if steps else ", no grounding")
        results["table"] = format_metrics_table({"popularity": metrics["popularity"], label: metrics["model"]})
        print(results["table"], flush=True)
    results["timings_s"] = timings
    if state.is_main_process:
        (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
        _plots(model, sids, out)
        card_metrics = {k: results[k] for k in ("metrics", "table") if k in results}
        if card_metrics and adapter.exists():  # the card shows what this adapter scored
            save_for_hub(model, tokenizer, adapter, metrics=card_metrics, extra_files=[out / SID_FILE])
        if config.output.push_to_hub:
            push_to_hub(model, tokenizer, config.output.push_to_hub, metrics=card_metrics or None)
    state.wait_for_everyone()
    return results


def _plots(model, sids: SemanticIDs, out: Path) -> None:
    _, rows, _ = new_token_rows(model)
    folder = out / "diagnostics"
    folder.mkdir(exist_ok=True)
    old = model.get_input_embeddings().base_weight.detach().float().cpu()
    diagnostics.plot_spectrum({"final": rows.float().cpu()}, folder / "spectrum.png")
    diagnostics.plot_cosine_matrix(rows.float().cpu(), folder / "cosine.png", old_rows=old)
