"""The vocabulary recipe: add tokens -> ground on their texts -> LoRA fine-tune on a corpus -> evaluate.

Each arm (GTI, and by default the same start without grounding) fine-tunes for the same steps from the same seed;
held-out corpus loss at the new tokens' positions and over all positions, text -> token accuracy and the rows'
geometry are compared, with a paired bootstrap over held-out sentences.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import AutoTokenizer, set_seed

from ..assets import offline as offline_assets
from ..method.init import description_token_ids
from ..method.tokens import add_new_tokens
from ..recsys.metrics import paired_bootstrap
from ..sharing.hub import save_for_hub
from ..training import diagnostics
from ..training.grounding import ground
from ..training.templates import IGNORE_INDEX, TEXT_TEMPLATES, encode_prompt_answer
from ..training.trainer import AnswerOnlyTrainer, answer_collator
from .config import recipe_to_dict
from .model import load_base
from .outputs import prepare_output_dir
from .parsing import adapter_for
from .vocabulary_config import VocabularyConfig
from .vocabulary_data import VocabularyData, load_vocabulary_data

logger = logging.getLogger(__name__)


def encode_corpus(tokenizer, texts: list[str], max_length: int) -> Dataset:
    """Causal-LM rows: the loss on every position of each text (plus EOS)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows = []
    for text in texts:
        ids = (tokenizer(text)["input_ids"] + eos)[:max_length]
        rows.append({"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)})
    return Dataset.from_list(rows)


def _in_arm_folder(stage, folder: Path):
    """A stage's settings for one arm: its own checkpoint folder, no checkpoints (an arm reruns whole)."""
    return dataclasses.replace(stage, output_dir=str(folder / Path(stage.output_dir).name), save_strategy="no")


@torch.no_grad()
def heldout_losses(model, tokenizer, texts: list[str], new_ids: list[int], max_length: int, batch_size: int):
    """Per held-out text: summed loss and count at new-token targets and at all targets."""
    collator = answer_collator(tokenizer)
    dataset = encode_corpus(tokenizer, texts, max_length)
    new = torch.tensor(new_ids)
    device = next(model.parameters()).device
    per_text = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        batch = {k: v.to(device) for k, v in collator(list(rows)).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        losses = F.cross_entropy(logits.float().transpose(1, 2), targets.clamp(min=0), reduction="none") * (
            targets != IGNORE_INDEX
        )
        at_new = torch.isin(targets, new.to(device))
        for row in range(targets.shape[0]):
            per_text.append(
                {
                    "new_loss": float(losses[row][at_new[row]].sum()),
                    "new_count": int(at_new[row].sum()),
                    "loss": float(losses[row].sum()),
                    "count": int((targets[row] != IGNORE_INDEX).sum()),
                }
            )
    return per_text


@torch.no_grad()
def text_to_token_accuracy(model, tokenizer, pairs: list[dict], new_ids: list[int], batch_size: int) -> float:
    """Share of texts whose own token is the argmax among the new tokens, right after the question."""
    template = TEXT_TEMPLATES[0]  # "Which token is described as follows? {text}" -> token
    collator = answer_collator(tokenizer)
    new = torch.tensor(new_ids)
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(pairs), batch_size):
        rows = [encode_prompt_answer(tokenizer, *template.render(p), 512) for p in pairs[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row in range(logits.shape[0]):
            answer = (batch["labels"][row] != IGNORE_INDEX).nonzero()[0].item()  # the token's position
            guess = new[logits[row, answer - 1, new.to(device)].argmax().item()]
            correct += int(guess == batch["labels"][row, answer].item())
    return correct / len(pairs)


def text_reference(model, tokenizer, pairs: list[dict]) -> torch.Tensor:
    """Mean base embedding of each token's text: the reference of the RSA diagnostic."""
    base = model.get_input_embeddings().base_weight.detach().float().cpu()
    ids = description_token_ids(tokenizer, [p["text"] for p in pairs])
    return torch.stack([base[torch.tensor(i)].mean(0) for i in ids])


def evaluate_arm(model, tokenizer, config: VocabularyConfig, data: VocabularyData, new_ids: list[int]) -> dict:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=config.evaluation.bf16):
        per_text = heldout_losses(
            model, tokenizer, data.heldout_texts, new_ids, config.data.max_length, config.evaluation.batch_size
        )
        accuracy = text_to_token_accuracy(model, tokenizer, data.pairs, new_ids, config.evaluation.batch_size)
    model.train(was_training)
    new_count = sum(t["new_count"] for t in per_text)
    return {
        "heldout_new_token_loss": sum(t["new_loss"] for t in per_text) / max(new_count, 1),
        "heldout_loss": sum(t["loss"] for t in per_text) / max(sum(t["count"] for t in per_text), 1),
        "text_to_token_accuracy": accuracy,
        "chance_accuracy": 1 / len(new_ids),
        "heldout_texts": len(per_text),
        "heldout_new_token_positions": new_count,
        "per_text": per_text,
    }


def build_arm_model(config: VocabularyConfig, tokenizer, new_ids: list[int], pairs: list[dict], adapter: Path):
    """The base + a fresh GTI adapter, or the adapter an earlier run saved in `adapter`."""
    _, base = load_base(config)
    if adapter.exists():
        return PeftModel.from_pretrained(base, adapter, is_trainable=True)
    descriptions = None
    if config.adapter.init == "description":
        descriptions = description_token_ids(tokenizer, [p["text"] for p in pairs])
    return get_peft_model(base, adapter_for(config.adapter, new_ids, descriptions))


def run_arm(config, tokenizer, data: VocabularyData, new_ids, grounding_steps: int, folder: Path, state) -> dict:
    """Ground (when `grounding_steps`), fine-tune and evaluate one arm; its adapter goes to `folder/adapter`."""
    seed = config.output.seed
    set_seed(seed)
    adapter = folder / "adapter"
    resumed = adapter.exists()
    model = build_arm_model(config, tokenizer, new_ids, data.pairs, adapter)
    reference = text_reference(model, tokenizer, data.pairs)
    result = {"grounding_steps": grounding_steps, "geometry": {}, "seconds": {}}
    if not resumed:
        result["geometry"]["start"] = diagnostics.summarize_model(model, reference)
    if not resumed and grounding_steps and "ground" in config.output.stages:
        start = time.perf_counter()
        report = ground(
            model,
            tokenizer,
            data.pairs,
            _in_arm_folder(config.grounding, folder),
            reference=reference,
        )
        result["seconds"]["ground"] = time.perf_counter() - start
        result["grounding_loss"] = report.loss_history
        result["geometry"]["grounded"] = diagnostics.summarize_model(model, reference)
    if not resumed and config.finetune.max_steps and "finetune" in config.output.stages:
        start = time.perf_counter()
        trainer = AnswerOnlyTrainer(
            model=model,
            args=_in_arm_folder(config.finetune, folder),
            train_dataset=encode_corpus(tokenizer, data.train_texts, config.data.max_length),
            data_collator=answer_collator(tokenizer),
            processing_class=tokenizer,
        )
        result["finetune_steps"] = trainer.train().global_step
        result["seconds"]["finetune"] = time.perf_counter() - start
        if state.is_main_process:
            save_for_hub(model, tokenizer, adapter)
    result["geometry"]["final"] = diagnostics.summarize_model(model, reference)
    if "evaluate" in config.output.stages:
        start = time.perf_counter()
        result["metrics"] = evaluate_arm(model, tokenizer, config, data, new_ids)
        result["seconds"]["evaluate"] = time.perf_counter() - start
    return result


def prepare_tokenizer(config: VocabularyConfig, data: VocabularyData):
    """The base's tokenizer with the new tokens (tokens it already has are refused here, before the model loads)."""
    tokenizer = AutoTokenizer.from_pretrained(offline_assets.resolve(config.model.name_or_path))
    vocab = tokenizer.get_vocab()
    known = [t for t in data.tokens if t in vocab]
    if known:
        raise ValueError(
            f"data.tokens: {known[:5]} already exist in the tokenizer of {config.model.name_or_path!r}: GTI "
            "would overwrite trained rows. Rename them (e.g. wrap them in <...>)."
        )
    new_ids = add_new_tokens(tokenizer, data.tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, new_ids


def format_table(arms: dict) -> str:
    columns = ["arm", "grounding steps", "held-out loss @ new tokens", "held-out loss (all)", "text -> token acc"]
    columns += ["eff. rank", "mean cos"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, arm in arms.items():
        m, g = arm.get("metrics", {}), arm["geometry"]["final"]
        lines.append(
            f"| {name} | {arm['grounding_steps']} | {m.get('heldout_new_token_loss', float('nan')):.3f} | "
            f"{m.get('heldout_loss', float('nan')):.3f} | {m.get('text_to_token_accuracy', float('nan')):.3f} | "
            f"{g['effective_rank']:.1f} | {g['mean_cosine']:.3f} |"
        )
    return "\n".join(lines)


def sentence_losses(per_text: list[dict]) -> dict[int, float]:
    """Mean new-token loss of each held-out text that holds a new token (keys: text index)."""
    return {i: t["new_loss"] / t["new_count"] for i, t in enumerate(per_text) if t["new_count"]}


def run_vocabulary(config: VocabularyConfig) -> dict:
    """Run the vocabulary recipe; return its results (also written to `output_dir/metrics.json`)."""
    data = load_vocabulary_data(config.data)  # every data error surfaces before a model loads
    tokenizer, new_ids = prepare_tokenizer(config, data)
    state = PartialState(cpu=not torch.cuda.is_available())
    out = prepare_output_dir(config, state)
    if state.is_main_process:  # the saved settings rerun as they are: `gti-peft train --config out/recipe.yaml`
        settings = {"task": "vocabulary", **recipe_to_dict(config)}
        (out / "recipe.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    steps = config.grounding.max_steps if "ground" in config.output.stages else 0
    init = config.adapter.init
    arms_to_run = {f"{init} start + GTI" if steps else f"{init} start": steps}
    if steps and config.evaluation.compare_mean_start:
        arms_to_run[f"{init} start"] = 0
    start = time.perf_counter()
    arms = {
        name: run_arm(
            config, tokenizer, data, new_ids, arm_steps, out / ("gti" if arm_steps else "no_grounding"), state
        )
        for name, arm_steps in arms_to_run.items()
    }
    results = {
        "new_tokens": len(new_ids),
        "train_texts": len(data.train_texts),
        "heldout_texts": len(data.heldout_texts),
        "arms": arms,
        "wall_seconds": time.perf_counter() - start,
    }
    if all("metrics" in arm for arm in arms.values()):
        results["table"] = format_table(arms)
        if len(arms) == 2:
            gti, baseline = (sentence_losses(arm["metrics"]["per_text"]) for arm in arms.values())
            results["paired_bootstrap_new_token_loss"] = paired_bootstrap(
                baseline, gti, samples=config.evaluation.bootstrap_samples, seed=config.output.seed
            )
        print(results["table"], flush=True)
    if state.is_main_process:
        (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    return results
