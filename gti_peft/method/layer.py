"""New-token layers: a frozen base embedding / LM head plus trainable rows for the new token ids only.

Unlike PEFT's TrainableTokens, no vocab x hidden matrix is built per forward: the embedding swaps in the new
rows at the positions that hold new ids, and the head overwrites only the new ids' logits.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..compat import BufferDict, embed_scale


def _rows_dtype(weight: torch.Tensor) -> torch.dtype:
    # like PEFT's autocast_adapter_dtype: train half-precision bases' adapter rows in fp32
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def check_disjoint_new_tokens(token_ids: dict[str, torch.Tensor], adapter_names: Iterable[str]) -> None:
    """Refuse adapters that share new ids from being active (or merged) together, as PEFT's TrainableTokens does.

    Each new id has one row per adapter; with two adapters on the same id the embedding could take only one row
    while the head would add both deltas. Adapters that are never active together may share ids.
    """
    owner: dict[int, str] = {}
    for name in dict.fromkeys(adapter_names):
        if name not in token_ids:
            continue
        shared = sorted(i for i in token_ids[name].tolist() if i in owner)
        if shared:
            other = owner[shared[0]]
            raise ValueError(
                f"GTI adapters {other!r} and {name!r} both have rows for the new token ids {shared[:5]}"
                f"{' ...' if len(shared) > 5 else ''} ({len(shared)} shared): they cannot be active or merged "
                "together. Activate one of them (`set_adapter`), or give them disjoint `new_token_ids`."
            )
        owner.update(dict.fromkeys(token_ids[name].tolist(), name))


class NewTokenLayer(nn.Module, BaseTunerLayer):
    """Shared bookkeeping of the embedding and head layers: per-adapter new ids, rows and merge backups.

    Several adapters may live on one layer. Active adapters must have disjoint new ids (`set_adapter` refuses
    others); each adapter's rows then serve its own ids, in the embedding and the head alike.
    """

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

    def __setattr__(self, name: str, value) -> None:
        # transformers' `tie_weights()` (also run by accelerate's FSDP2 preparation) ties the head by assigning
        # `lm_head.weight`; here `weight` is the base layer's (read-only property): tie the base layer instead
        if name == "weight" and isinstance(value, nn.Parameter) and "base_layer" in self._modules:
            setattr(self.get_base_layer(), name, value)
        else:
            super().__setattr__(name, value)

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

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        check_disjoint_new_tokens(self.gti_token_ids, names)
        super().set_adapter(names, inference_mode=inference_mode)

    def new_rows(self, adapter_name: str) -> torch.Tensor:
        return self.gti_rows[adapter_name]

    def merged_values(self, adapter_name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What merging `adapter_name` writes: `(rows, bias entries)` in the base's dtypes (None: nothing)."""
        weight, bias = self.base_weight, getattr(self.get_base_layer(), "bias", None)
        rows = self.new_rows(adapter_name).detach().to(weight.dtype) if self._writes_weight_on_merge() else None
        has_bias = bias is not None and adapter_name in self.gti_bias
        return rows, self.gti_bias[adapter_name].detach().to(bias.dtype) if has_bias else None

    @staticmethod
    def _all_finite(values: tuple[torch.Tensor | None, ...]) -> bool:
        return all(v is None or bool(torch.isfinite(v).all()) for v in values)

    def non_finite_adapters(self, adapter_names: Iterable[str]) -> list[str]:
        """The adapters whose merged rows or bias entries would hold NaN or inf (in the base's dtype)."""
        return [n for n in adapter_names if n in self.gti_token_ids and not self._all_finite(self.merged_values(n))]

    def _merge_weights(self, adapter_names: list[str] | None, safe_merge: bool) -> None:
        names = adapter_names if adapter_names is not None else self.active_adapters
        names = [n for n in names if n in self.gti_token_ids and n not in self.merged_adapters]
        check_disjoint_new_tokens(self.gti_token_ids, self.merged_adapters + names)
        values = {name: self.merged_values(name) for name in names}  # merge into copies, check, then write
        broken = [name for name, v in values.items() if not self._all_finite(v)] if safe_merge else []
        if broken:
            raise ValueError(
                f"NaN or inf in the new-token rows of GTI adapter(s) {broken}: the adapter seems broken; nothing "
                "was merged."
            )
        weight, bias = self.base_weight, getattr(self.get_base_layer(), "bias", None)
        for name, (rows, bias_entries) in values.items():
            ids = self.gti_token_ids[name]
            with torch.no_grad():
                self._merge_backup[name] = (
                    weight[ids].clone(),
                    bias[ids].clone() if bias_entries is not None else None,
                )
                if rows is not None:
                    weight[ids] = rows
                if bias_entries is not None:
                    bias[ids] = bias_entries
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
        """Write the new rows into the base layer (old rows are never touched).

        With `safe_merge`, the rows are checked for NaN / inf first: a refused merge changes nothing.
        """
        self._merge_weights(adapter_names, safe_merge)


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
            scale = embed_scale(self)
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
