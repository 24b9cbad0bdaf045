"""Sharing GTI adapters: Hub-ready folders, `push_to_hub`, plain-PEFT exports and merged models for serving."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, HfApi
from peft import LoraConfig, PeftConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from ..compat import TRAINABLE_TOKENS_DELTA_KEY
from ..method.layer import NewTokenLayer, NewTokenLMHead
from ..method.peft_type import PEFT_TYPE_GTI
from ..method.tokens import check_tokenizer_fits
from ..training.fsdp import is_fsdp_sharded
from .adapter_format import (
    BASE_VOCAB_SIZE_KEY,
    CARD_NAME,
    ROWS_SUFFIX,
    VOCAB_SIZE_KEY,
    WEIGHTS_NAME,
    read_adapter,
    size_metadata,
)
from .model_card import adapter_card, card_info, card_info_from_files, exported_card, layers, merged_card
from .saving import write_folder_atomically

PUSH_OPTIONS = {"private", "revision", "commit_message", "token", "metrics", "create_pr", "base_model"}


def _gti_config(model, tokenizer) -> tuple[Any, str]:
    name = getattr(model, "active_adapter", None)
    config = model.peft_config.get(name) if isinstance(model, PeftModel) else None
    if config is None or config.peft_type != PEFT_TYPE_GTI:
        raise ValueError(
            f"`model` must be a PeftModel with an active GTI adapter (`get_peft_model(base, GTIConfig(...))` or "
            f"`PeftModel.from_pretrained(base, gti_folder)`), got {type(model).__name__} "
            f"(peft_type {getattr(config, 'peft_type', None)!r})."
        )
    if is_fsdp_sharded(model):
        raise ValueError(
            "`model` is sharded by FSDP: each rank holds only pieces of its parameters. Save the unsharded model "
            "that `AnswerOnlyTrainer.train()` hands back, or gather the pieces on every rank first with "
            "`gti_peft.training.fsdp.copy_trained_parameters(sharded, unsharded_copy)` and save the copy."
        )
    if any(isinstance(m, NewTokenLayer) and m.merged for m in model.modules()):
        raise ValueError("`model` has its GTI adapter merged: call `model.unmerge_adapter()` before saving it.")
    size = len(tokenizer) if tokenizer is not None else 0
    if size <= max(config.new_token_ids):
        raise ValueError(
            f"`tokenizer` has {size} tokens but the adapter's new token ids go up to {max(config.new_token_ids)}: "
            "pass the tokenizer the new tokens were added to (e.g. with `gti_peft.add_new_tokens`)."
        )
    check_tokenizer_fits(model, tokenizer)
    return config, name


def _save_adapter(model, name: str, folder: Path) -> None:
    model.save_pretrained(folder, selected_adapters=[name])
    if name != "default":  # PEFT writes non-default adapters into a sub-folder
        for path in (folder / name).iterdir():
            path.replace(folder / path.name)
        (folder / name).rmdir()


def save_for_hub(
    model: PeftModel,
    tokenizer,
    folder: str | Path,
    metrics: Mapping[str, Any] | None = None,
    extra_files: Iterable[str | Path] | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
) -> Path:
    """Write a Hub-ready GTI adapter folder, atomically: LoRA + new rows, tokenizer, config and a model card.

    An existing adapter folder is replaced, any other non-empty folder refused. `metrics` (e.g. the recipe's
    metrics.json) go into the card, `extra_files` are copied as they are; `repo_id` names the card's load snippet
    (default: the folder) and `base_model` its metadata (default: the adapter config's base, if a Hub id).
    """
    config, name = _gti_config(model, tokenizer)
    extra = [Path(p) for p in extra_files or []]
    missing = [str(p) for p in extra if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"`extra_files` {missing} do not exist (or are not files): pass existing files.")
    info = card_info(model, tokenizer, config, repo_id or str(folder), base_model)

    def write(tmp: Path) -> None:
        _save_adapter(model, name, tmp)
        tensors = load_file(tmp / WEIGHTS_NAME)  # record the sizes the adapter expects, for `check_adapter_fits`
        sizes = size_metadata(info.vocab_size, info.hidden_size, info.base_vocab_size)
        save_file(tensors, tmp / WEIGHTS_NAME, metadata=sizes)
        tokenizer.save_pretrained(tmp)
        for path in extra:
            if (tmp / path.name).exists():
                raise ValueError(f"`extra_files` entry {str(path)!r} would overwrite the adapter's {path.name}.")
            shutil.copy2(path, tmp / path.name)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.name != CARD_NAME}
        adapter_card(info, config, metrics, files).save(tmp / CARD_NAME)

    return write_folder_atomically(folder, write, overwrite=False)


def update_card(model: PeftModel, tokenizer, folder: str | Path, metrics: Mapping[str, Any] | None = None) -> Path:
    """Rewrite only the model card (README.md) of a folder `save_for_hub` wrote, e.g. to add evaluation metrics
    once they exist; the weights are not written again. The card is replaced atomically."""
    config, _ = _gti_config(model, tokenizer)
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} holds no {WEIGHTS_NAME}: write the adapter with `save_for_hub` first."
        )
    return _replace_card(folder, card_info(model, tokenizer, config, str(folder), None), config, metrics)


def _replace_card(folder: Path, info, config, metrics: Mapping[str, Any] | None) -> Path:
    """Write the adapter card of `folder` (listing its files) in place of its README.md, atomically."""
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != CARD_NAME}
    tmp = folder / f".{CARD_NAME}.tmp"
    adapter_card(info, config, metrics, files).save(tmp)
    tmp.replace(folder / CARD_NAME)
    return folder / CARD_NAME


def write_adapter_card(
    folder: str | Path, metrics: Mapping[str, Any] | None = None, *, repo_id: str | None = None
) -> Path:
    """Write the model card (README.md) of a GTI adapter folder from its files alone, no model loaded: for a folder
    whose files changed after `save_for_hub` (e.g. grown by `extend_catalog`). `repo_id` names the card's load
    snippet (default: the folder). The card is replaced atomically."""
    folder = Path(folder)
    _, shapes, metadata = read_adapter(folder)
    config = PeftConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = card_info_from_files(config, tokenizer, shapes, metadata, repo_id or str(folder))
    return _replace_card(folder, info, config, metrics)


def push_to_hub(
    model: PeftModel,
    tokenizer,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    metrics: Mapping[str, Any] | None = None,
    create_pr: bool = False,
    base_model: str | None = None,
) -> CommitInfo:
    """Upload exactly the folder `save_for_hub` writes (never the full embedding matrix) to `repo_id`.

    Creates the repo if needed (and the branch `revision`, if it is not `main`), then commits the folder.
    """
    config, _ = _gti_config(model, tokenizer)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    message = commit_message or f"Upload GTI adapter ({len(config.new_token_ids)} new tokens)"
    with tempfile.TemporaryDirectory(prefix="gti-hub-") as tmp:
        folder = save_for_hub(
            model, tokenizer, Path(tmp) / "adapter", metrics=metrics, repo_id=repo_id, base_model=base_model
        )
        return api.upload_folder(
            folder_path=folder, repo_id=repo_id, revision=revision, commit_message=message, create_pr=create_pr
        )


def export_for_peft(
    model: PeftModel, tokenizer, folder: str | Path, *, repo_id: str | None = None, base_model: str | None = None
) -> Path:
    """Write a plain PEFT LoRA folder (`trainable_token_indices`) that loads where gti-peft is not installed.

    Users resize the base to the adapter's vocabulary, then `PeftModel.from_pretrained(base, folder)` (the folder's
    card shows the exact lines). Rows that GTI's resize added for no new token (padding) are exported too, so
    logits match exactly. Refused for a base with an LM-head bias: PEFT's TrainableTokens drops it (PEFT #3649).
    """
    config, name = _gti_config(model, tokenizer)
    embedding, head = layers(model)
    if head is not None and getattr(head.get_base_layer(), "bias", None) is not None:
        raise ValueError(
            f"The base model's LM head ({type(head.get_base_layer()).__name__}) has a bias, which PEFT's "
            "TrainableTokens ignores (PEFT issue 3649): an exported adapter would change every logit. Share "
            "this adapter with `save_for_hub` (needs gti-peft to load) or `save_merged` instead."
        )
    info = card_info(model, tokenizer, config, repo_id or str(folder), base_model)
    new = set(config.new_token_ids)
    filler = [i for i in range(info.base_vocab_size or info.vocab_size, info.vocab_size) if i not in new]
    ids = list(config.new_token_ids) + filler
    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    state = {k: v for k, v in state.items() if ".gti_" not in k}  # LoRA keys are PEFT's own
    indices = {}
    for layer in (embedding, head):
        if layer is None or (isinstance(layer, NewTokenLMHead) and layer.is_tied):
            continue  # a tied head follows the embedding's adapter
        module = next(n for n, m in model.get_base_model().named_modules() if m is layer)
        rows = layer.new_rows(name).detach()
        key = f"base_model.model.{module}.{TRAINABLE_TOKENS_DELTA_KEY}"
        state[key] = torch.cat([rows, layer.base_weight.detach()[filler].to(rows)])
        indices[module] = ids
    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"peft_type", "trainable_token_indices"}
    kwargs = {k: copy.deepcopy(getattr(config, k)) for k in fields if hasattr(config, k)}
    lora_config = LoraConfig(**(kwargs | {"inference_mode": True, "trainable_token_indices": indices}))

    def write(tmp: Path) -> None:
        lora_config.save_pretrained(tmp)
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        exported_card(info, info.base_model or info.base_model_path or "<base model>").save(tmp / CARD_NAME)

    return write_folder_atomically(folder, write, overwrite=False)


def _merged_lora_tensors(module, name: str) -> dict[str, torch.Tensor]:
    """A LoRA layer's weight (and bias) with adapter `name` merged, as PEFT's safe merge computes them."""
    base_layer = module.get_base_layer()
    weight = base_layer.weight.detach().clone()
    weight += module.get_delta_weight(name).to(weight.dtype)
    merged = {"weight": weight}
    if module.lora_bias.get(name, False):
        merged["bias"] = base_layer.bias.detach() + module.lora_B[name].bias.detach() * module.scaling[name]
    for tensor in merged.values():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"NaNs detected in the merged weights: the adapter {name!r} seems to be broken.")
    return merged


def _merged_state_dict(model: PeftModel, name: str) -> dict[str, torch.Tensor] | None:
    """The merged model's state dict without copying the model: only LoRA-targeted weights are new tensors.

    The new-token rows must already be merged in place (exactly undone by `unmerge`). None for LoRA variants
    (DoRA, ...) whose merge this does not reproduce.
    """
    modules = dict(model.get_base_model().named_modules())
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for path, module in modules.items():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            if name in getattr(module, "lora_variant", {}):
                return None
            merged[path] = _merged_lora_tensors(module, name)
    state = {}
    for key, tensor in model.get_base_model().state_dict().items():
        if ".lora_" in key or ".gti_" in key:
            continue
        path, _, leaf = key.rpartition(".")
        owner = path.removesuffix(".base_layer")
        state[f"{owner}.{leaf}"] = merged.get(owner, {}).get(leaf, tensor)
    return state


def save_merged(model: PeftModel, tokenizer, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write a standalone model (LoRA and new rows merged, extended vocabulary, tokenizer, generation config).

    It loads with plain `AutoModelForCausalLM.from_pretrained(folder)`. The caller's PeftModel is unchanged: the
    new rows are written into the base matrix and restored exactly afterwards, merged LoRA weights are new tensors
    (extra memory: the LoRA-targeted weights, never a vocabulary-sized copy). A quantized base is refused.
    """
    config, name = _gti_config(model, tokenizer)
    base = model.get_base_model()
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        raise ValueError(
            "`model` has a quantized base: merging into 4/8-bit weights loses precision. Load the base in "
            "bf16/fp16/fp32, then the adapter (`PeftModel.from_pretrained`), and call `save_merged` on that."
        )
    info = card_info(model, tokenizer, config, str(folder), None)
    generation = copy.deepcopy(getattr(base, "generation_config", None))
    if generation is not None and generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id

    def write(tmp: Path) -> None:
        token_layers = [m for m in model.modules() if isinstance(m, NewTokenLayer)]
        try:
            for layer in token_layers:
                layer.merge(safe_merge=True, adapter_names=[name])
            state = _merged_state_dict(model, name)
            if state is None:  # a LoRA variant: merge a copy the way PEFT does
                for layer in token_layers:
                    layer.unmerge()
                copy.deepcopy(model).merge_and_unload(safe_merge=True).save_pretrained(tmp)
            else:
                base.save_pretrained(tmp, state_dict=state)
        finally:
            for layer in token_layers:
                layer.unmerge()
        if generation is not None:
            generation.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        merged_card(info).save(tmp / CARD_NAME)

    return write_folder_atomically(folder, write, overwrite=overwrite)


def check_adapter_fits(base_model, adapter_folder: str | Path) -> None:
    """Raise a clear error if the GTI adapter in `adapter_folder` was not made for `base_model`.

    Checks the files are complete and readable, the hidden size of the new rows, every LoRA weight's shape against
    the base's module, and the vocabulary size (recorded by `save_for_hub`) against the base's embedding rows.
    """
    folder = Path(adapter_folder)
    config, shapes, metadata = read_adapter(folder)
    embedding = base_model.get_input_embeddings()
    weight = embedding.base_weight if isinstance(embedding, NewTokenLayer) else embedding.weight
    rows, hidden = weight.shape
    trained_on = f"the base it was trained on ({config.get('base_model_name_or_path')!r})"
    for key, shape in shapes.items():
        if key.endswith(ROWS_SUFFIX) and shape[1] != hidden:
            raise ValueError(
                f"The adapter in {str(folder)!r} has new-token rows of hidden size {shape[1]}, but `base_model` "
                f"({type(base_model).__name__}) has hidden size {hidden}: load it onto {trained_on}."
            )
    for key, shape in shapes.items():
        if ".lora_A." in key or ".lora_B." in key:
            path = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
            try:
                module = base_model.get_submodule(path)
            except AttributeError:
                raise ValueError(
                    f"The adapter in {str(folder)!r} has LoRA weights for {path!r}, a module `base_model` lacks: "
                    f"load it onto {trained_on}."
                ) from None
            side, size = ("in_features", shape[1]) if ".lora_A." in key else ("out_features", shape[0])
            if getattr(module, side, size) != size:
                raise ValueError(
                    f"The adapter in {str(folder)!r} expects {path!r} with {side}={size}, but `base_model`'s has "
                    f"{getattr(module, side)}: load it onto {trained_on}."
                )
    ids = config.get("new_token_ids") or []
    if VOCAB_SIZE_KEY not in metadata or not ids:
        return
    n = int(metadata[VOCAB_SIZE_KEY])
    n0 = int(metadata[BASE_VOCAB_SIZE_KEY]) if BASE_VOCAB_SIZE_KEY in metadata else None
    if rows <= n and (n0 is None or rows >= n0):  # un-resized, resized to len(tokenizer), or fully resized
        return
    raise ValueError(
        f"`base_model` has {rows} embedding rows, but the adapter in {str(folder)!r} was saved for a base with "
        f"{n0 if n0 is not None else f'at most {n}'} rows ({n} with its {len(ids)} new tokens, ids "
        f"{min(ids)}-{max(ids)}): this base has another vocabulary, and its tokens would get the new rows. "
        f"Load the adapter onto {trained_on}."
    )
