"""Fine-tuning a GTI model with TRL's `SFTTrainer` (`pip install gti-peft[trl]`).

What a stock `SFTTrainer` does with a GTI model, and what `GTISFTTrainer` does instead:

- it refuses the model: the LM head is a PEFT tuner layer (`NewTokenLMHead`), and TRL's fused LM head computes
  log-probabilities from `lm_head.weight` directly, which would score the new ids with their frozen base rows
  and never train the new rows through the head. `GTISFTTrainer` lets the check pass, removes the fused head and
  computes the loss through the model's own head, with logits only where labels are set (`AnswerOnlyTrainer`);
- `peft_config` would wrap the model again; `chat_template_path` may add tokens, resize the embeddings and put
  them into `trainable_token_indices` plus `modules_to_save=["lm_head"]` (a full trainable copy of the head):
  both are refused, since the GTI model already trains LoRA and exactly its new rows;
- on a quantized base TRL casts every trainable parameter to bf16: the new rows are put back in their own dtype
  (fp32 for a bf16 base), as `GTIConfig` made them.
"""

from __future__ import annotations

import contextlib

from peft import PeftModel
from trl import SFTTrainer

from ..method.layer import NewTokenLMHead
from ..method.model import new_token_parameters
from .trainer import AnswerOnlyTrainer


@contextlib.contextmanager
def _head_hidden_from_trl(model):
    """Let SFTTrainer's "no adapter on lm_head" check see the base head while it initializes."""
    head = model.get_output_embeddings()
    if not isinstance(head, NewTokenLMHead):
        yield
        return
    model.__dict__["get_output_embeddings"] = head.get_base_layer
    try:
        yield
    finally:
        model.__dict__.pop("get_output_embeddings", None)


class GTISFTTrainer(AnswerOnlyTrainer, SFTTrainer):
    """`trl.SFTTrainer` for a GTI `PeftModel`: LoRA and the new rows train, the loss goes through the GTI head.

    Takes SFTTrainer's arguments (datasets, `SFTConfig`, formatting, completion-only loss), except `peft_config`
    and `chat_template_path`; packing and padding-free batches are refused (the loss reads padded batches).
    """

    def __init__(self, model, args=None, *, peft_config=None, **kwargs):
        if not isinstance(model, PeftModel) or not new_token_parameters(model):
            raise ValueError(
                "`model` must be a GTI model: create it with `peft.get_peft_model(base, GTIConfig(...))` first."
            )
        if peft_config is not None:
            raise ValueError(
                "`peft_config` would wrap the GTI model in a second adapter: drop it (LoRA and the new rows already "
                "train), and put LoRA settings into GTIConfig."
            )
        if args is not None:
            if getattr(args, "chat_template_path", None):
                raise ValueError(
                    "SFTConfig.chat_template_path may add tokens and resize the model behind GTI's back: set the "
                    "chat template on the tokenizer before adding the new tokens, and leave chat_template_path unset."
                )
            if getattr(args, "packing", False) or getattr(args, "padding_free", False):
                raise ValueError(
                    "SFTConfig.packing / padding_free are not supported by GTISFTTrainer: set them False."
                )
        dtypes = [(p, p.dtype) for p in new_token_parameters(model)]
        with _head_hidden_from_trl(model):
            super().__init__(model, args, **kwargs)
        for parameter, dtype in dtypes:  # TRL casts trainable parameters of a quantized base to bf16
            parameter.data = parameter.data.to(dtype)
        base = self.model.get_base_model()
        base.__dict__.pop("forward", None)  # TRL's fused LM head reads lm_head.weight: the new rows would be skipped
