"""GTIConfig: LoRA settings plus the new tokens and how their rows start."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from peft.utils.constants import EMBEDDING_LAYER_NAMES

from .peft_type import PEFT_TYPE_GTI

INIT_METHODS = ("mean", "hf_mean", "random", "description")


@dataclass
class GTIConfig(LoraConfig):
    """Configuration of a GTI adapter: LoRA on the transformer plus trainable rows for new tokens.

    Every `LoraConfig` field is accepted. The new tokens' input-embedding rows (and, for untied models, their
    LM-head rows) are trained alongside LoRA; all other embedding rows stay frozen and bit-identical. Rows start
    from `init` and are then grounded with `gti_peft.ground` before task fine-tuning.

    Example:
        ```py
        >>> tokenizer.add_tokens(["<a_0>", "<a_1>"])
        >>> config = GTIConfig(new_token_ids=tokenizer.convert_tokens_to_ids(["<a_0>", "<a_1>"]), init="mean")
        >>> model = get_peft_model(base_model, config)  # resizes the base if needed
        ```
    """

    new_token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Vocabulary ids of the new tokens whose rows are trained. Ids past the model's embedding size "
            "are allowed: the base model is resized when the adapter is created or loaded."
        },
    )
    init: str = field(
        default="mean",
        metadata={
            "help": "Starting values of the new rows: 'mean' (mean of the old rows), 'hf_mean' (what transformers' "
            "`resize_token_embeddings(mean_resizing=True)` gives), 'random' (N(0, initializer_range)), or "
            "'description' (mean of the old embeddings of each token's description, see `description_token_ids`)."
        },
    )
    description_token_ids: list[list[int]] | None = field(
        default=None,
        metadata={
            "help": "For init='description': one list of old-vocabulary token ids per new token (same order as "
            "`new_token_ids`), e.g. from `gti_peft.description_token_ids(tokenizer, texts)`."
        },
    )
    init_seed: int = field(default=0, metadata={"help": "Seed for the random draws of 'random' and 'hf_mean'."})
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={"help": "When the base must be resized, pad the new vocabulary size to a multiple of this."},
    )
    grounding: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Filled by `gti_peft.ground`: how the rows were grounded (steps, lr, templates, loss)."},
    )

    base_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Set when the adapter is created: the base's embedding rows before GTI resized it."},
    )
    vocab_size: int | None = field(
        default=None,
        metadata={"help": "Set when the adapter is created: embedding rows after resizing; reloads restore them."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE_GTI
        self._validate_new_tokens()
        self._validate_init()
        self._validate_targets()
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(
                f"`pad_to_multiple_of` must be a positive integer or None, got {self.pad_to_multiple_of!r}."
            )

    def _validate_new_tokens(self) -> None:
        ids = self.new_token_ids
        if ids is None or len(ids) == 0:
            raise ValueError(
                f"`new_token_ids` must list at least one token id, got {ids!r}. Add the tokens first, e.g. "
                "`tokenizer.add_tokens(tokens)` then `new_token_ids=tokenizer.convert_tokens_to_ids(tokens)`, "
                "or use `gti_peft.add_new_tokens(tokenizer, tokens)`."
            )
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            bad = next(i for i in ids if not isinstance(i, int) or isinstance(i, bool))
            raise ValueError(f"`new_token_ids` must hold integers, got {bad!r}: pass token ids, not token strings.")
        negative = [i for i in ids if i < 0]
        if negative:
            raise ValueError(
                f"`new_token_ids` must be non-negative vocabulary ids, got {negative[:5]}; an id of -1 or None "
                "usually means the tokenizer does not know the token: add it with `tokenizer.add_tokens` first."
            )
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise ValueError(
                f"`new_token_ids` contains duplicates {duplicates[:5]}: each new token must be listed once."
            )
        self.new_token_ids = [int(i) for i in ids]

    def _validate_init(self) -> None:
        if self.init not in INIT_METHODS:
            raise ValueError(f"`init` must be one of {INIT_METHODS}, got {self.init!r}.")
        texts = self.description_token_ids
        if self.init == "description":
            if texts is None:
                raise ValueError(
                    "`init='description'` needs `description_token_ids` (one list of old token ids per new "
                    "token): build it with `gti_peft.description_token_ids(tokenizer, texts)`."
                )
            if len(texts) != len(self.new_token_ids):
                raise ValueError(
                    f"`description_token_ids` has {len(texts)} entries but `new_token_ids` has "
                    f"{len(self.new_token_ids)}: give exactly one description per new token, in the same order."
                )
            new = set(self.new_token_ids)
            for token_id, desc in zip(self.new_token_ids, texts):
                if len(desc) == 0:
                    raise ValueError(
                        f"`description_token_ids` for new token id {token_id} is empty: every new token needs a "
                        "description made of old tokens."
                    )
                if new.intersection(desc):
                    raise ValueError(
                        f"`description_token_ids` for new token id {token_id} uses new token ids "
                        f"{sorted(new.intersection(desc))[:5]}: descriptions must use old tokens only."
                    )
        elif texts is not None:
            raise ValueError(
                f"`description_token_ids` is only used with `init='description'`, but init={self.init!r}: "
                "set init='description' or drop description_token_ids."
            )

    def _validate_targets(self) -> None:
        targets = self.target_modules
        if isinstance(targets, (list, set, tuple)):
            hit = sorted({t for t in targets if t.split(".")[-1] in EMBEDDING_LAYER_NAMES})
            if hit:
                raise ValueError(
                    f"`target_modules` includes {hit}: GTI trains the new rows of the embedding and LM head "
                    "itself and keeps the old rows frozen; LoRA on those layers would change old tokens too. "
                    "Remove them from target_modules (e.g. use 'all-linear', which skips the LM head)."
                )
        saved = [m for m in (self.modules_to_save or []) if m.split(".")[-1] in EMBEDDING_LAYER_NAMES]
        if saved:
            raise ValueError(
                f"`modules_to_save` includes {saved}: that would train and save the whole embedding matrix. "
                "GTI already trains the new rows; remove these from modules_to_save."
            )
        if self.trainable_token_indices is not None:
            raise ValueError(
                "`trainable_token_indices` contradicts `new_token_ids`: GTI replaces PEFT's TrainableTokens. "
                "List the tokens in `new_token_ids` and drop `trainable_token_indices`."
            )
