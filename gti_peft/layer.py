"""New-token layers: a frozen base embedding / LM head plus trainable rows for the new token ids only.

Unlike PEFT's TrainableTokens, no vocab x hidden matrix is built per forward: the embedding swaps in the new
rows at the positions that hold new ids, and the head overwrites only the new ids' logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


def _rows_dtype(weight: torch.Tensor) -> torch.dtype:
    # like PEFT's autocast_adapter_dtype: train half-precision bases' adapter rows in fp32
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


class NewTokenLayer(nn.Module, BaseTunerLayer):
    """Shared bookkeeping of the embedding and head layers: per-adapter new ids, rows and merge backups."""

    adapter_layer_names = ("gti_rows", "gti_bias")
    other_param_names = ("gti_token_ids", "gti_slots")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.gti_rows = nn.ParameterDict()
        self.gti_bias = nn.ParameterDict()
        self.gti_token_ids = BufferDict(persistent=False)
        # embedding only: a vocabulary-sized map id -> row in gti_rows (-1 for old ids); ints, never vocab x hidden
        self.gti_slots = BufferDict(persistent=False)
        self.merged_adapters = []
        self._merge_backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def base_weight(self) -> torch.Tensor:
        return self.get_base_layer().weight

    def _register_ids(self, adapter_name: str, token_ids: list[int]) -> None:
        n = self.base_weight.shape[0]
        if max(token_ids) >= n:
            raise ValueError(
                f"new token id {max(token_ids)} is outside the resized {type(self.get_base_layer()).__name__} "
                f"with {n} rows; this is a bug in resizing, please report it."
            )
        self.gti_token_ids[adapter_name] = torch.tensor(token_ids, dtype=torch.long, device=self.base_weight.device)

    def _active(self) -> list[str]:
        if self.disable_adapters or self.merged:
            return []
        return [name for name in self.active_adapters if name in self.gti_token_ids]

    def new_rows(self, adapter_name: str) -> torch.Tensor:
        return self.gti_rows[adapter_name]

    def _merge_weights(self, adapter_names: list[str] | None, write_weight: bool) -> None:
        names = adapter_names if adapter_names is not None else self.active_adapters
        for name in names:
            if name not in self.gti_token_ids or name in self.merged_adapters:
                continue
            ids = self.gti_token_ids[name]
            weight, bias = self.base_weight, getattr(self.get_base_layer(), "bias", None)
            with torch.no_grad():
                self._merge_backup[name] = (
                    weight[ids].clone(),
                    bias[ids].clone() if bias is not None and name in self.gti_bias else None,
                )
                if write_weight:
                    weight[ids] = self.new_rows(name).to(weight.dtype)
                if bias is not None and name in self.gti_bias:
                    bias[ids] = self.gti_bias[name].to(bias.dtype)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Restore the base rows that `merge` overwrote."""
        weight, bias = self.base_weight, getattr(self.get_base_layer(), "bias", None)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            old_rows, old_bias = self._merge_backup.pop(name)
            ids = self.gti_token_ids[name]
            with torch.no_grad():
                if self._writes_weight_on_merge():
                    weight[ids] = old_rows
                if old_bias is not None:
                    bias[ids] = old_bias

    def _writes_weight_on_merge(self) -> bool:
        return True

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write the new rows into the base layer (old rows are never touched)."""
        self._merge_weights(adapter_names, write_weight=self._writes_weight_on_merge())
        names = [n for n in (adapter_names or self.active_adapters) if n in self.gti_token_ids]
        if safe_merge and not all(torch.isfinite(self.new_rows(n)).all() for n in names):  # the rows, not the vocab
            raise ValueError("NaNs detected in the merged new-token rows: the adapter seems broken.")


class NewTokenEmbedding(NewTokenLayer):
    """Input embedding: the base lookup, with rows of new ids taken from `gti_rows`."""

    def update_layer(self, adapter_name: str, token_ids: list[int], init_rows: torch.Tensor) -> None:
        self._register_ids(adapter_name, token_ids)
        slots = torch.full((self.base_weight.shape[0],), -1, dtype=torch.long, device=self.base_weight.device)
        slots[self.gti_token_ids[adapter_name]] = torch.arange(len(token_ids), device=slots.device)
        self.gti_slots[adapter_name] = slots
        dtype = _rows_dtype(self.base_weight)
        self.gti_rows[adapter_name] = nn.Parameter(init_rows.to(self.base_weight.device, dtype).clone())

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(input_ids, *args, **kwargs)
        for name in self._active():
            slots = self.gti_slots[name][input_ids]
            new = F.embedding(slots.clamp(min=0), self.gti_rows[name])
            scale = self._get_embed_scale()
            if scale is not None:
                new = new * scale.to(new.dtype)
            out = torch.where((slots >= 0).unsqueeze(-1), new.to(out.dtype), out)
        return out


class NewTokenLMHead(NewTokenLayer):
    """Output head: the base logits, with the new ids' logits computed from the new rows alone.

    With tied embeddings the head reads the embedding layer's rows (one set of rows is read and written);
    otherwise it owns its rows. A base bias is kept; new ids get their own trainable bias entries.
    """

    def __init__(self, base_layer: nn.Module, tied_embedding: NewTokenEmbedding | None = None) -> None:
        super().__init__(base_layer)
        # a plain attribute, not a submodule: the tied rows are saved once, under the embedding
        self.__dict__["tied_embedding"] = tied_embedding

    @property
    def is_tied(self) -> bool:
        return self.tied_embedding is not None

    def update_layer(
        self,
        adapter_name: str,
        token_ids: list[int],
        init_rows: torch.Tensor | None,
        init_bias: torch.Tensor | None,
    ) -> None:
        self._register_ids(adapter_name, token_ids)
        dtype = _rows_dtype(self.base_weight)
        if not self.is_tied:
            self.gti_rows[adapter_name] = nn.Parameter(init_rows.to(self.base_weight.device, dtype).clone())
        if init_bias is not None:
            self.gti_bias[adapter_name] = nn.Parameter(init_bias.to(self.base_weight.device, dtype).clone())

    def new_rows(self, adapter_name: str) -> torch.Tensor:
        if self.is_tied:
            return self.tied_embedding.gti_rows[adapter_name]
        return self.gti_rows[adapter_name]

    def _writes_weight_on_merge(self) -> bool:
        # tied: the embedding layer writes the shared matrix
        return not self.is_tied

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        logits = self.base_layer(hidden_states, *args, **kwargs)
        base_bias = getattr(self.get_base_layer(), "bias", None)
        for name in self._active():
            ids, rows = self.gti_token_ids[name], self.new_rows(name)
            # add (new rows - base rows) @ h to the new ids' columns: unlike overwriting them (index_copy_), whose
            # backward clones the whole logits gradient, index_add_ passes the gradient through untouched
            delta = rows - self.base_weight[ids].to(rows.dtype)
            bias = self.gti_bias.get(name)
            if bias is not None and base_bias is not None:
                bias = bias - base_bias[ids].to(bias.dtype)
            logits.index_add_(-1, ids, F.linear(hidden_states.to(rows.dtype), delta, bias).to(logits.dtype))
        return logits
