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
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import AutoTokenizer

from ..assets import offline as offline_assets
from ..method.init import description_token_ids
from ..method.tokens import add_new_tokens
from ..recsys.metrics import paired_bootstrap
from ..training.templates import IGNORE_INDEX, TEXT_TEMPLATES, encode_prompt_answer
from ..training.trainer import answer_collator
from .model import load_base
from .outputs import prepare_output_dir
from .parsing import adapter_for
from .pipeline import run_pipeline
from .task import Task
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


def prepare_tokenizer(config: VocabularyConfig, data: VocabularyData, source: str | Path | None = None):
    """The tokenizer with the new tokens: the base's (tokens it already has are refused here, before the model
    loads), or the one saved with an adapter (`source`)."""
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(offline_assets.resolve(config.model.name_or_path))
        known = [t for t in data.tokens if t in tokenizer.get_vocab()]
        if known:
            raise ValueError(
                f"data.tokens: {known[:5]} already exist in the tokenizer of {config.model.name_or_path!r}: GTI "
                "would overwrite trained rows. Rename them (e.g. wrap them in <...>)."
            )
        add_new_tokens(tokenizer, data.tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class VocabularyTask(Task):
    """New tokens from a (token, text) table, grounded on their texts, fine-tuned on a corpus that uses them,
    evaluated by held-out loss at their positions and text -> token accuracy."""

    name = "vocabulary"
    config: VocabularyConfig

    def __init__(self, config: VocabularyConfig, data: VocabularyData | None = None):
        super().__init__(config)
        self.data = data

    def prepare(self, out: Path, state: PartialState) -> None:
        if self.data is None:
            self.data = load_vocabulary_data(self.config.data)
        self.tokenizer = prepare_tokenizer(self.config, self.data)  # refuses tokens the base already has

    def new_tokens(self) -> list[str]:
        return list(self.data.tokens)

    def build_model(self, resume_from: Path | None):
        config = self.config
        tokenizer = self.tokenizer if resume_from is None else prepare_tokenizer(config, self.data, resume_from)
        _, base = load_base(config)
        if resume_from is not None:
            return tokenizer, PeftModel.from_pretrained(base, resume_from, is_trainable=True)
        new_ids = tokenizer.convert_tokens_to_ids(self.data.tokens)
        descriptions = None
        if config.adapter.init == "description":
            descriptions = description_token_ids(tokenizer, [p["text"] for p in self.data.pairs])
        return tokenizer, get_peft_model(base, adapter_for(config.adapter, new_ids, descriptions))

    def reference(self, model, tokenizer):
        return text_reference(model, tokenizer, self.data.pairs)

    def grounding_pairs(self) -> list[dict]:
        return self.data.pairs

    def finetune_dataset(self, tokenizer):
        return encode_corpus(tokenizer, self.data.train_texts, self.config.data.max_length)

    def evaluate(self, model, tokenizer) -> dict:
        new_ids = tokenizer.convert_tokens_to_ids(self.data.tokens)
        return {"metrics": evaluate_arm(model, tokenizer, self.config, self.data, new_ids)}


def format_table(arms: dict) -> str:
    columns = ["arm", "grounding steps", "held-out loss @ new tokens", "held-out loss (all)", "text -> token acc"]
    columns += ["eff. rank", "mean cos"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, arm in arms.items():
        m, g = arm.get("metrics", {}), list(arm["geometry"].values())[-1]  # the rows as evaluated
        lines.append(
            f"| {name} | {arm['grounding_steps']} | {m.get('heldout_new_token_loss', float('nan')):.3f} | "
            f"{m.get('heldout_loss', float('nan')):.3f} | {m.get('text_to_token_accuracy', float('nan')):.3f} | "
            f"{g['effective_rank']:.1f} | {g['mean_cosine']:.3f} |"
        )
    return "\n".join(lines)


def sentence_losses(per_text: list[dict]) -> dict[int, float]:
    """Mean new-token loss of each held-out text that holds a new token (keys: text index)."""
    return {i: t["new_loss"] / t["new_count"] for i, t in enumerate(per_text) if t["new_count"]}


def arm_config(config: VocabularyConfig, folder: Path, grounding_steps: int) -> VocabularyConfig:
    """One arm's config: its own output folder (checkpoints, adapter, metrics) and grounding steps."""
    output = dataclasses.replace(config.output, output_dir=str(folder))
    grounding = dataclasses.replace(config.grounding, max_steps=grounding_steps)
    return dataclasses.replace(config, output=output, grounding=grounding)


def run_vocabulary(config: VocabularyConfig) -> dict:
    """Run the vocabulary recipe: each arm through `run_pipeline`, then the comparison (`output_dir/metrics.json`)."""
    data = load_vocabulary_data(config.data)  # every data error surfaces before a model loads
    prepare_tokenizer(config, data)
    state = PartialState(cpu=not torch.cuda.is_available())
    out = prepare_output_dir(config, state, VocabularyTask.name)
    steps = config.grounding.max_steps if "ground" in config.output.stages else 0
    init = config.adapter.init
    arms_to_run = {f"{init} start + GTI" if steps else f"{init} start": steps}
    if steps and config.evaluation.compare_mean_start:
        arms_to_run[f"{init} start"] = 0
    start = time.perf_counter()
    arms = {}
    for name, arm_steps in arms_to_run.items():
        folder = out / ("gti" if arm_steps else "no_grounding")
        arms[name] = run_pipeline(VocabularyTask(arm_config(config, folder, arm_steps), data))
        arms[name]["grounding_steps"] = arm_steps
    results = {
        "new_tokens": len(data.tokens),
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
