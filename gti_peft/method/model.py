"""The GTI tuner: LoRA on the transformer plus new-token layers on the input embedding and LM head."""

from __future__ import annotations

import warnings

import torch
from peft import LoraModel
from torch import nn

from ..compat import check_target_module_exists, cpu_packed_4bit_layers, get_submodules, guard_cpu_4bit_training
from .config import GTIConfig
from .init import OldIds, initial_bias, initial_rows, old_mean
from .layer import NewTokenEmbedding, NewTokenLayer, NewTokenLMHead, check_disjoint_new_tokens


def _base(module: nn.Module | None) -> nn.Module | None:
    return module.get_base_layer() if isinstance(module, (NewTokenEmbedding, NewTokenLMHead)) else module


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"Could not find the module {type(target).__name__} inside the model.")


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _fill_added_rows(model: nn.Module, n_before: int) -> None:
    """Rows from `n_before` on (and their bias entries) take the mean of the rows before: deterministic."""
    embedding, head = _base(model.get_input_embeddings()), _base(model.get_output_embeddings())
    layers = [embedding] + ([head] if head is not None and head.weight is not embedding.weight else [])
    with torch.no_grad():
        for layer in layers:
            layer.weight[n_before:] = old_mean(layer.weight, OldIds(n_before, ())).to(layer.weight.dtype)
            if getattr(layer, "bias", None) is not None:
                layer.bias[n_before:] = layer.bias[:n_before].mean()


def _restore_vocabulary(model: nn.Module, config: GTIConfig, n_before: int) -> int | None:
    """Reloading an adapter that recorded its sizes: give the base exactly the rows it was made with.

    Returns the rows before GTI's resize, or None where the recorded sizes do not apply (an older adapter, or a
    base smaller than recorded because the vocabulary was resized before the adapter was created).
    """
    n0, n = config.base_vocab_size, config.vocab_size
    if n is None or n0 is None or n_before < n0:
        return None
    if n_before > n:
        ids = config.new_token_ids
        raise ValueError(
            f"The base model has {n_before} embedding rows, but this GTI adapter was made on a base with {n0} rows "
            f"({n} with its {len(ids)} new tokens, ids {min(ids)}-{max(ids)}): this base has another vocabulary, "
            f"and its tokens would get the new rows. Load the adapter onto {config.base_model_name_or_path!r}."
        )
    if not isinstance(model.get_input_embeddings(), NewTokenEmbedding):  # not a second adapter on this model
        if n_before < n:
            model.resize_token_embeddings(n, mean_resizing=False)
        _fill_added_rows(model, n0)  # also undoes random rows of a resize by the caller (AutoPeftModel...)
    return n0


def vocabulary_size_for(new_token_ids, rows: int, pad_to_multiple_of: int | None = None) -> int:
    """The resize rule: the embedding rows a base with `rows` rows needs for `new_token_ids`.

    Unchanged where every id has a row; else the largest id + 1, rounded up to `pad_to_multiple_of` (as
    `resize_token_embeddings` rounds). `get_peft_model` resizes the base by it; `extend_catalog` grows a saved
    adapter's recorded size by it.
    """
    needed = max(new_token_ids) + 1
    if needed <= rows:
        return rows
    return -(-needed // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else needed


def resize_for_new_tokens(model: nn.Module, config: GTIConfig) -> int:
    """Grow the base vocabulary so every new id has a row; return the number of rows before.

    Rows added here start at the mean of the old rows (deterministic, so a reloaded adapter reproduces the
    logits of every id); the new ids' rows are then replaced by the adapter's own rows. The sizes before and after
    are recorded in `config` (`base_vocab_size`, `vocab_size`), so a reload restores exactly these rows.
    """
    embedding = _base(model.get_input_embeddings())
    n_before = embedding.weight.shape[0]
    restored = _restore_vocabulary(model, config, n_before)
    if restored is not None:
        return restored
    ids = config.new_token_ids
    if max(ids) < n_before:
        _record_sizes(config, n_before, n_before)
        return n_before
    if isinstance(model.get_input_embeddings(), NewTokenEmbedding):
        raise ValueError(
            f"`new_token_ids` reaches id {max(ids)} but the model, which already carries a GTI adapter, has "
            f"{n_before} embedding rows. Resize the base model (`resize_token_embeddings`) before adding adapters."
        )
    beyond = sum(i >= n_before for i in ids)
    gap = max(ids) + 1 - n_before - beyond
    if gap > max(64, len(ids)):
        raise ValueError(
            f"`new_token_ids` holds id {max(ids)}, {max(ids) + 1 - n_before} rows past the model's embedding size "
            f"{n_before}, but only {beyond} new tokens lie past it: resizing would create {gap} rows for no token. "
            "The ids probably come from another tokenizer: take them from this model's tokenizer after "
            "`tokenizer.add_tokens(...)`, or resize the model first with "
            "`model.resize_token_embeddings(len(tokenizer))`."
        )
    model.resize_token_embeddings(vocabulary_size_for(ids, n_before, config.pad_to_multiple_of), mean_resizing=False)
    _fill_added_rows(model, n_before)
    _record_sizes(config, n_before, _base(model.get_input_embeddings()).weight.shape[0])
    return n_before


def _record_sizes(config: GTIConfig, n_before: int, n_after: int) -> None:
    if config.vocab_size is None:  # creating the adapter (or loading one saved before sizes were recorded)
        config.base_vocab_size, config.vocab_size = n_before, n_after


def _keep_4bit_base_trainable(model: nn.Module, config: GTIConfig) -> None:
    """A 4-bit base on CPU: stop bitsandbytes' inference repacking, which silently breaks later training.

    A base whose layers were already repacked (evaluated before the adapter was added) is refused for a trainable
    adapter: its LoRA would get wrong gradients without any error.
    """
    packed = cpu_packed_4bit_layers(model)
    if packed and not config.inference_mode:
        raise ValueError(
            f"{len(packed)} 4-bit layers of the base model (e.g. {packed[0]!r}) were repacked by bitsandbytes for CPU "
            "inference by an evaluation (eval mode, no grad) before the GTI adapter was added: LoRA would get wrong "
            "gradients there. Load the base again and add the adapter before evaluating it (GTI then keeps it "
            "trainable), or call `gti_peft.training.quantization.guard_cpu_4bit_training(base)` right after loading."
        )
    guard_cpu_4bit_training(model)


class GTIModel(LoraModel):
    """LoRA plus `NewTokenEmbedding` / `NewTokenLMHead` for the ids in `GTIConfig.new_token_ids`.

    Created by `peft.get_peft_model(model, GTIConfig(...))`; do not instantiate it directly. Several adapters may
    share a model (`add_adapter`, `set_adapter`, `delete_adapter`); adapters active or merged together must have
    disjoint `new_token_ids`.
    """

    prefix: str = "gti_"  # the new-token parameters' prefix; LoRA's weights keep LoRA's names ("lora_A", ...)

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        config = self.peft_config[adapter_name]
        self._check_embeddings_not_targeted(model, config)
        _keep_4bit_base_trainable(model, config)
        n_before = resize_for_new_tokens(model, config)
        # LoRA's targets come from the config: PEFT would read module names out of `state_dict` keys with GTI's
        # prefix, which only the new rows carry
        super().inject_adapter(
            model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, low_cpu_mem_usage=low_cpu_mem_usage
        )
        self._inject_new_token_layers(model, config, adapter_name, n_before)

    def _check_embeddings_not_targeted(self, model: nn.Module, config: GTIConfig) -> None:
        if config.target_modules is None:  # PEFT's per-architecture defaults never name the embeddings
            return
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is None or isinstance(layer, (NewTokenEmbedding, NewTokenLMHead)):
                continue
            name = _module_name(model, layer)
            if check_target_module_exists(config, name):
                raise ValueError(
                    f"`target_modules`={config.target_modules!r} matches the model's {name!r}: GTI trains the new "
                    "rows of the embedding and LM head itself and keeps old rows frozen. Exclude that layer "
                    "(e.g. with `exclude_modules` or an explicit list of projection names)."
                )

    def _inject_new_token_layers(self, model: nn.Module, config: GTIConfig, adapter_name: str, n_before: int):
        ids = config.new_token_ids
        old_ids = OldIds(n_before, ids)  # a range minus the new ids: no vocabulary-sized list
        text_config = _text_config(model)
        std = getattr(text_config, "initializer_range", 0.02)
        kwargs = {"description_ids": config.description_token_ids, "std": std}

        embedding = model.get_input_embeddings()
        if not isinstance(embedding, NewTokenEmbedding):
            head_base = _base(model.get_output_embeddings())
            tied = head_base is not None and head_base.weight is embedding.weight
            embedding = self._replace(model, embedding, NewTokenEmbedding(embedding))
            if head_base is not None:
                self._replace(model, head_base, NewTokenLMHead(head_base, embedding if tied else None))
        emb_rows = initial_rows(config.init, embedding.base_weight, old_ids, len(ids), seed=config.init_seed, **kwargs)
        embedding.update_layer(adapter_name, ids, emb_rows)

        head = model.get_output_embeddings()
        if isinstance(head, NewTokenLMHead):
            head_rows = None
            if not head.is_tied:
                head_rows = initial_rows(
                    config.init, head.base_weight, old_ids, len(ids), seed=config.init_seed + 1, **kwargs
                )
            bias = getattr(head.get_base_layer(), "bias", None)
            head_bias = initial_bias(bias, old_ids, len(ids)) if bias is not None else None
            head.update_layer(adapter_name, ids, head_rows, head_bias)
        for layer in (embedding, head):
            if isinstance(layer, (NewTokenEmbedding, NewTokenLMHead)):
                layer.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    @staticmethod
    def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> nn.Module:
        parent, _, name = get_submodules(model, _module_name(model, old))
        setattr(parent, name, new)
        return new

    def _new_token_layers(self) -> list[NewTokenLayer]:
        return [m for m in self.model.modules() if isinstance(m, NewTokenLayer)]

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate `adapter_name` (or several, with disjoint new ids) in the LoRA and the new-token layers."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        layers = self._new_token_layers()
        for layer in layers:  # refuse before anything switches
            check_disjoint_new_tokens(layer.gti_token_ids, names)
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        for layer in layers:
            if layer.merged:
                warnings.warn("Adapter cannot be set while the model is merged: unmerging it first.", stacklevel=2)
                layer.unmerge()
            layer.set_adapter(names, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete `adapter_name` from the LoRA and the new-token layers (its rows are no longer used or saved)."""
        super().delete_adapter(adapter_name)
        for layer in self._new_token_layers():
            layer.delete_adapter(adapter_name)

    def _refuse_non_finite_rows(self, adapter_names: list[str] | None) -> None:
        """`safe_merge`: check every new-token layer before any layer (LoRA included) is merged."""
        names = adapter_names if adapter_names is not None else self.active_adapters
        broken = sorted({n for layer in self._new_token_layers() for n in layer.non_finite_adapters(names)})
        if broken:
            raise ValueError(
                f"NaN or inf in the new-token rows of GTI adapter(s) {broken}: the adapter seems broken; nothing "
                "was merged."
            )

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        if safe_merge:
            self._refuse_non_finite_rows(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        if safe_merge:
            self._refuse_non_finite_rows(adapter_names)
        return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)


def new_token_rows(model: nn.Module, adapter_name: str | None = None):
    """Return `(new_token_ids, input_rows, output_rows)` of a GTI model; `output_rows` is None when tied."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, NewTokenEmbedding):
        raise ValueError("The model carries no GTI adapter: create one with `get_peft_model(model, GTIConfig(...))`.")
    name = adapter_name or embedding.active_adapters[0]
    ids = embedding.gti_token_ids[name].tolist()
    head = model.get_output_embeddings()
    output_rows = None
    if isinstance(head, NewTokenLMHead) and not head.is_tied:
        output_rows = head.new_rows(name).detach()
    return ids, embedding.gti_rows[name].detach(), output_rows


def new_token_parameters(model: nn.Module, adapter_name: str | None = None) -> list[nn.Parameter]:
    """The trainable new-token parameters (rows and, where the head has a bias, bias entries)."""
    params = []
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        if isinstance(layer, (NewTokenEmbedding, NewTokenLMHead)):
            name = adapter_name or layer.active_adapters[0]
            for container in (layer.gti_rows, layer.gti_bias):
                if name in container:
                    params.append(container[name])
    return params
