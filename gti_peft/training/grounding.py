"""The grounding stage: train ONLY the new rows on paired text <-> token data, with the LM (and LoRA) frozen."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from ..method.layer import NewTokenEmbedding
from ..method.model import new_token_parameters, new_token_rows
from ..method.tokens import check_tokenizer_fits
from . import diagnostics
from .grounding_config import GroundingConfig
from .quantization import guard_cpu_4bit_training
from .templates import DEFAULT_TEMPLATES, GroundingTemplate, encode_prompt_answer, render_examples
from .trainer import AnswerOnlyTrainer, answer_collator, answer_loss

TEXT_FIELDS = ("text", "title", "description")


@dataclass
class GroundingReport:
    """What grounding did: losses per step and per template, time, and the rows' geometry before and after."""

    steps: int
    examples: int
    examples_per_template: dict[str, int]
    loss_history: list[tuple[int, float]]
    template_loss_before: dict[str, float]
    template_loss_after: dict[str, float]
    diagnostics_before: dict
    diagnostics_after: dict
    train_seconds: float
    seconds_per_step: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def _as_dicts(pairs) -> list[dict]:
    if isinstance(pairs, Dataset):
        return [dict(row) for row in pairs]
    if isinstance(pairs, dict) or not hasattr(pairs, "__iter__"):
        raise ValueError(f"`pairs` must be a list of dicts or a datasets.Dataset, got {type(pairs).__name__}.")
    return [dict(p) for p in pairs]


def validate_pairs(pairs: list[dict], tokenizer, new_ids: set[int], templates) -> None:
    """Fail before any training on pairs that cannot ground anything."""
    if not pairs:
        raise ValueError("`pairs` is empty: give at least one {'tokens': ..., 'title'/'description'/'text': ...}.")
    for index, pair in enumerate(pairs):
        tokens = pair.get("tokens")
        if not isinstance(tokens, str) or not tokens.strip():
            raise ValueError(f"pairs[{index}] has no 'tokens' string (got {tokens!r}); e.g. '<a_3><b_1><c_7>'.")
        ids = tokenizer(tokens, add_special_tokens=False)["input_ids"]
        not_new = [i for i in ids if i not in new_ids]
        if not_new or not ids:
            pieces = tokenizer.convert_ids_to_tokens(not_new[:5])
            raise ValueError(
                f"pairs[{index}]['tokens']={tokens!r} contains {pieces} which are not new tokens of this adapter: "
                "'tokens' must consist of tokens listed in GTIConfig.new_token_ids (added with add_new_tokens)."
            )
        if not any(isinstance(pair.get(f), str) and pair[f].strip() for f in TEXT_FIELDS):
            raise ValueError(
                f"pairs[{index}] (tokens {tokens!r}) has no non-empty text field: give 'text', or 'title' and/or "
                "'description'."
            )
    for template in templates:
        missing = [f for f in template.fields - {"tokens"} if not any(p.get(f) for p in pairs)]
        if missing:
            raise ValueError(
                f"template {template.name!r} uses field(s) {missing} that no pair has: add them to the pairs or "
                "drop the template."
            )


def grounding_dataset(tokenizer, pairs: list[dict], templates, max_length: int, prompt_style: str) -> Dataset:
    """Every (pair, template) example, tokenized with the loss on the answer; a `template` column names each."""
    rendered = render_examples(pairs, templates)
    if not rendered:
        raise ValueError("No template applies to the pairs: check their fields against the templates' fields.")
    return Dataset.from_list(
        [
            encode_prompt_answer(tokenizer, ex["prompt"], ex["answer"], max_length, prompt_style)
            | {"template": ex["template"]}
            for ex in rendered
        ]
    )


@contextlib.contextmanager
def only_new_rows_trainable(model):
    """Freeze everything but the new rows; restore every parameter's requires_grad afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rows = {id(p) for p in new_token_parameters(model)}
    for p in model.parameters():
        p.requires_grad = id(p) in rows
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad = flags[name]


class GroundingTrainer(AnswerOnlyTrainer):
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # PEFT's load_adapter(is_trainable=True) marks LoRA trainable again: grounding keeps it frozen
        flags = {id(p): p.requires_grad for p in self.model.parameters()}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for p in self.model.parameters():
            p.requires_grad = flags[id(p)]


@torch.no_grad()
def template_losses(model, dataset: Dataset, collator, per_template: int = 32, batch_size: int = 16):
    """Mean answer loss of up to `per_template` examples of each template (a fixed, deterministic subset)."""
    was_training = model.training
    model.eval()
    by_template = defaultdict(list)
    for index, name in enumerate(dataset["template"]):
        if len(by_template[name]) < per_template:
            by_template[name].append(index)
    device = next(p.device for p in model.parameters())
    losses = {}
    for name, indices in by_template.items():
        total, count = 0.0, 0
        for start in range(0, len(indices), batch_size):
            rows = dataset.select(indices[start : start + batch_size]).remove_columns(["template"])
            batch = {k: v.to(device) for k, v in collator(list(rows)).items()}
            total += float(answer_loss(model, batch, num_items=1))  # summed over answer tokens
            count += int((batch["labels"][:, 1:] != -100).sum())
        losses[name] = total / max(count, 1)
    model.train(was_training)
    return losses


@contextlib.contextmanager
def _output_folder(args: GroundingConfig):
    """`args` with an `output_dir`: the caller's, or a temporary folder (for the trainer's files) removed after."""
    if args.output_dir is not None:
        yield args
        return
    with tempfile.TemporaryDirectory(prefix="gti-grounding-") as scratch:
        yield dataclasses.replace(args, output_dir=scratch)


def _resolve_args(args, templates, settings: dict) -> tuple[GroundingConfig, tuple[GroundingTemplate, ...]]:
    """One `GroundingConfig` from `args` or keyword settings, and the templates to ground with."""
    if args is not None and not isinstance(args, GroundingConfig):
        if isinstance(args, (list, tuple)) and all(isinstance(t, GroundingTemplate) for t in args):
            templates, args = args, None  # ground(model, tokenizer, pairs, templates): the earlier signature
        else:
            raise TypeError(
                f"ground()'s `args` must be a GroundingConfig, got {type(args).__name__}: pass "
                "`GroundingConfig(max_steps=..., ...)`, or the settings as keywords."
            )
    if args is None:
        args = GroundingConfig(**settings)  # bad settings fail here, before tokenizing or training
    elif settings:
        raise TypeError(
            f"ground() got both `args` and the settings {sorted(settings)}: set them on the config instead, e.g. "
            "`dataclasses.replace(args, max_steps=...)`."
        )
    if templates is not None and args.templates is not None:
        raise ValueError(
            f"ground() got template objects and GroundingConfig.templates={args.templates!r}: pass one of them."
        )
    return args, tuple(templates) if templates is not None else args.grounding_templates()


def ground(
    model,
    tokenizer,
    pairs,
    args: GroundingConfig | None = None,
    *,
    templates: tuple[GroundingTemplate, ...] | None = None,
    reference=None,
    report_path: str | Path | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: list | None = None,
    **settings,
) -> GroundingReport:
    """Ground the new rows of a GTI `model` on `pairs` and return a `GroundingReport`.

    `pairs`: dicts (or a `datasets.Dataset`) with a `"tokens"` string of new tokens and text fields (`"text"`, or
    `"title"` / `"description"`). Every template whose fields a pair has is used (both directions).
    `args`: a `GroundingConfig` (templates, prompt style, max length and every `TrainingArguments` field; the
    paper's defaults, e.g. lr 1e-3, no weight decay). Or pass its fields as keywords (`max_steps=80`,
    `learning_rate=1e-2`, `prompt_style="plain"`), not both. Set `output_dir` + `save_strategy="steps"` for
    checkpoints and `resume_from_checkpoint` to resume.
    `templates`: your own `GroundingTemplate`s instead of the named ones.
    `reference`: optional vectors for the RSA diagnostic (e.g. codebook vectors), lined up with the first
    `len(reference)` new tokens.
    `callbacks`: `transformers.TrainerCallback`s, e.g. to evaluate the mapping while grounding runs.
    """
    if not isinstance(model.get_input_embeddings(), NewTokenEmbedding):
        raise ValueError("`model` carries no GTI adapter: create it with `get_peft_model(model, GTIConfig(...))`.")
    check_tokenizer_fits(model, tokenizer)
    args, templates = _resolve_args(args, templates, settings)
    pairs = _as_dicts(pairs)
    new_ids = set(new_token_rows(model)[0])
    validate_pairs(pairs, tokenizer, new_ids, [t for t in templates if t not in DEFAULT_TEMPLATES])
    with _output_folder(args) as train_args:  # the caller's folder, or a temporary one removed after training
        dataset = grounding_dataset(tokenizer, pairs, templates, args.max_length, args.prompt_style)
        collator = answer_collator(tokenizer)
        guard_cpu_4bit_training(model)

        before = template_losses(model, dataset, collator, args.eval_examples_per_template)
        geometry_before = diagnostics.summarize_model(model, reference)
        with only_new_rows_trainable(model):
            trainer = GroundingTrainer(
                model=model,
                args=train_args,
                train_dataset=dataset.remove_columns(["template"]),
                data_collator=collator,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
            start = time.perf_counter()
            result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
            seconds = time.perf_counter() - start
    after = template_losses(model, dataset, collator, args.eval_examples_per_template)
    report = GroundingReport(
        steps=result.global_step,
        examples=len(dataset),
        examples_per_template=dict(sorted(Counter(dataset["template"]).items())),
        loss_history=[(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e],
        template_loss_before=before,
        template_loss_after=after,
        diagnostics_before=geometry_before,
        diagnostics_after=diagnostics.summarize_model(model, reference),
        train_seconds=seconds,
        seconds_per_step=seconds / max(result.global_step, 1),
        settings=args.settings(),
    )
    config = model.peft_config[model.active_adapter]
    config.grounding = {
        "steps": report.steps,
        "learning_rate": args.learning_rate,
        "batch_size": args.per_device_train_batch_size,
        "templates": sorted(report.examples_per_template),
        "examples": report.examples,
        "final_loss": report.loss_history[-1][1] if report.loss_history else None,
        "prompt_style": args.prompt_style,  # what later grounding (e.g. `extend_catalog`) must tokenize like
    }
    if report_path is not None and trainer.is_world_process_zero():
        report.save(report_path)
    return report
