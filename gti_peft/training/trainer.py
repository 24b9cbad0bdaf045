"""Trainer pieces shared by grounding and fine-tuning: answer-only logits, and a collator."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput

from ..compat import prepared_by_accelerate, release_from_accelerate
from .arguments import with_bf16_resolved
from .fsdp import copy_trained_parameters
from .templates import IGNORE_INDEX


def answer_collator(tokenizer) -> DataCollatorForSeq2Seq:
    """Pads input ids, attention masks and labels (with -100) to the longest example of the batch."""
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "The tokenizer has no pad token: set one first, e.g. `tokenizer.pad_token = tokenizer.eos_token`."
        )
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def answer_logits_and_targets(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model with logits only at positions that predict a labelled token.

    The LM head over a 49k-152k vocabulary is a large share of a step; prompts carry no loss, so their logits
    are never computed. Returns (logits [B, P, V], targets [B, P]) with -100 where a row has no target.
    """
    labels = inputs["labels"]
    shifted = labels[:, 1:]
    positions = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    outputs = model(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), logits_to_keep=positions
    )
    return outputs.logits, shifted[:, positions]


def answer_loss(model, inputs: dict, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over answer tokens, divided by `num_items` (default: their count)."""
    logits, targets = answer_logits_and_targets(model, inputs)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    denominator = num_items if num_items is not None else (targets != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(loss.device)
    return loss / denominator


class _NoStepsLeft(Exception):
    pass


class _StopAtMaxSteps(TrainerCallback):
    """Refuse a step past `max_steps`: transformers, resuming from a checkpoint taken at `max_steps` in the middle of
    an epoch, trains one more step before it checks (a run killed after its last checkpoint would then differ)."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise _NoStepsLeft


class AnswerOnlyTrainer(Trainer):
    """`transformers.Trainer` whose loss computes logits only where labels are set (same loss, less work).

    `train()` hands the model back as it came: a later Trainer (grounding, then fine-tuning) gets its own precision.
    Under FSDP, which shards a model in place, a copy is trained and its trained parameters are gathered back into
    the caller's model: saving, evaluation and the next stage see a plain model on every rank.
    """

    def __init__(self, *args, **kwargs):
        if "args" in kwargs:  # GroundingConfig / FinetuneConfig may say bf16="auto": settled on this device here
            kwargs["args"] = with_bf16_resolved(kwargs["args"])
        elif len(args) > 1:
            args = (args[0], with_bf16_resolved(args[1]), *args[2:])
        super().__init__(*args, **kwargs)
        # our compute_loss divides by the number of answer tokens in the (accumulated, global) batch itself
        self.model_accepts_loss_kwargs = True
        self.add_callback(_StopAtMaxSteps())

    def train(self, *args, **kwargs):
        model = self.model  # the caller's model: under FSDP, Trainer replaces self.model by the wrapper
        prepared_before = prepared_by_accelerate(model)
        sharded = self.is_fsdp_enabled and not prepared_before
        if sharded:  # FSDP2 turns the module itself into a sharded one (DTensors, a new class): shard a copy
            self.model = self.model_wrapped = copy.deepcopy(model)
        try:
            result = super().train(*args, **kwargs)
        except _NoStepsLeft:  # resumed from a finished checkpoint: its weights are loaded, nothing left to train
            losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
            result = TrainOutput(self.state.global_step, sum(losses) / max(len(losses), 1), {})
        finally:
            if not prepared_before:
                release_from_accelerate(model)
        if sharded:
            copy_trained_parameters(self.model_wrapped, model)
        return result

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = answer_loss(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss
