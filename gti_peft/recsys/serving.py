"""Serve a merged recommender with plain transformers: `model.generate(num_beams=...)` restricted to catalog items.

Everything a serving codebase needs is in this module and depends on torch and transformers only (copy the file):
[`CatalogTrie`] (item -> token ids, as dense tables), [`TrieLogitsProcessor`] (only tokens that continue some
item not excluded for that user; after a whole item, only EOS), [`generate_recommendations`] (the `generate`
call that uses them) and the JSON catalog that [`save_serving_catalog`] writes next to a merged model. Only
[`export_for_serving`] needs gti-peft: it writes the merged model (`save_merged`) and that catalog from a run.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("served")            # a plain model: no gti-peft layers
tokenizer = AutoTokenizer.from_pretrained("served")
catalog = load_serving_catalog("served")
prompt = encode_history(tokenizer, ["1", "50"], catalog)
print(generate_recommendations(model, tokenizer, [prompt], catalog, k=10, exclude=[["1", "50"]]))
```
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

CATALOG_FILE = "serving_catalog.json"
_FORMAT = "gti_peft.serving_catalog"


class CatalogTrie:
    """The catalog's item token sequences as dense tables (inner nodes first; the root is node 0).

    Args:
        item_tokens: item id -> its token ids. No item's sequence may be a prefix of another's.

    Attributes:
        items: item ids in order; `child_tokens` / `child_nodes` `(inner_nodes, max_children)` (padded with 0 /
        -1); `node_item` `(nodes,)` (item index at leaves, -1 elsewhere); `item_paths` `(items, max_length)` (the
        nodes on each item's path, padded with -1); `leaf_counts` `(nodes,)` (items below each node).
    """

    def __init__(self, item_tokens: Mapping[str, Sequence[int]]):
        if not isinstance(item_tokens, Mapping) or not item_tokens:
            raise ValueError("`item_tokens` must be a non-empty mapping item id -> token ids: pass the catalog.")
        children: list[dict[int, int]] = [{}]
        leaf_of: dict[int, int] = {}
        paths: list[list[int]] = []
        self.items = [str(item) for item in item_tokens]
        self.token_ids = {str(item): [int(t) for t in tokens] for item, tokens in item_tokens.items()}
        for index, (item, tokens) in enumerate(item_tokens.items()):
            node, path = 0, []
            if len(tokens) == 0:
                raise ValueError(f"Item {item!r} has no token ids: every item needs a non-empty sequence.")
            for token in tokens:
                if node in leaf_of:
                    raise ValueError(f"Item {self.items[leaf_of[node]]!r}'s tokens are a prefix of {item!r}'s.")
                node = children[node].setdefault(int(token), len(children))
                if node == len(children):
                    children.append({})
                path.append(node)
            if node in leaf_of or children[node]:
                raise ValueError(f"Item {item!r}'s tokens {list(tokens)} repeat or start another item's.")
            leaf_of[node] = index
            paths.append(path)
        self.index = {item: i for i, item in enumerate(self.items)}
        self.prompt: dict | None = None  # prompt settings and titles, set by load_serving_catalog
        self.titles: dict[str, str] = {}
        self._build_tables(children, leaf_of, paths)

    def _build_tables(self, children: list[dict[int, int]], leaf_of: dict[int, int], paths: list[list[int]]):
        inner = [node for node, kids in enumerate(children) if kids]
        leaves = [node for node, kids in enumerate(children) if not kids]
        renumber = torch.empty(len(children), dtype=torch.long)
        renumber[torch.tensor(inner + leaves)] = torch.arange(len(children))
        width = max(len(children[node]) for node in inner)
        self.child_tokens = torch.zeros(len(inner), width, dtype=torch.long)
        self.child_nodes = torch.full((len(inner), width), -1, dtype=torch.long)
        for row, node in enumerate(inner):
            self.child_tokens[row, : len(children[node])] = torch.tensor(list(children[node]))
            self.child_nodes[row, : len(children[node])] = renumber[torch.tensor(list(children[node].values()))]
        self.node_item = torch.full((len(children),), -1, dtype=torch.long)
        self.node_item[renumber[torch.tensor(list(leaf_of))]] = torch.tensor(list(leaf_of.values()))
        self.max_length = max(len(path) for path in paths)
        self.item_paths = torch.full((len(paths), self.max_length), -1, dtype=torch.long)
        for row, path in enumerate(paths):
            self.item_paths[row, : len(path)] = renumber[torch.tensor(path)]
        self.leaf_counts = torch.zeros(len(children), dtype=torch.long)
        on_paths = self.item_paths[self.item_paths >= 0]
        self.leaf_counts.scatter_add_(0, on_paths, torch.ones_like(on_paths))
        self.leaf_counts[0] = len(paths)
        self.num_inner = len(inner)

    def __len__(self) -> int:
        return len(self.items)

    def item_for(self, tokens: Sequence[int]) -> str | None:
        """The item whose token ids start `tokens` (trailing EOS/padding ignored), or `None`."""
        node = 0
        for token in tokens:
            if node >= self.num_inner:
                break
            hits = (self.child_tokens[node] == int(token)) & (self.child_nodes[node] >= 0)
            if not hits.any():
                return None
            node = int(self.child_nodes[node][hits.nonzero()[0, 0]])
        item = int(self.node_item[node])
        return self.items[item] if item >= 0 else None

    def excluded_counts(self, exclude: Sequence[Collection[str]]) -> torch.Tensor:
        """`(users, nodes)`: how many of each user's excluded items lie below each node (unknown ids refused)."""
        counts = torch.zeros(len(exclude), len(self.leaf_counts), dtype=torch.long)
        for user, items in enumerate(exclude):
            unknown = [item for item in items if str(item) not in self.index]
            if unknown:
                raise ValueError(
                    f"`exclude[{user}]` names items the catalog does not hold: {unknown[:5]}: pass catalog item ids "
                    "(the keys of the serving catalog's `items`)."
                )
            rows = torch.tensor(sorted({self.index[str(item)] for item in items}), dtype=torch.long)
            nodes = self.item_paths[rows].flatten()
            nodes = nodes[nodes >= 0]
            counts[user].scatter_add_(0, nodes, torch.ones_like(nodes))
            counts[user, 0] = len(rows)
        return counts


class TrieLogitsProcessor(LogitsProcessor):
    """Lets `generate` (greedy or beam search) produce catalog items only, each user's excluded items left out.

    Rows of `input_ids` are `users x num_beams` (generate's layout); tokens from `prompt_length` on are generated.
    A row in the middle of an item may take only the tokens that continue some item not excluded for its user (a
    branch whose every item is excluded is closed); a row that spelled a whole item may take only `eos_token_id`,
    at log-probability 0 (so a shorter item ends with its own score); any other row gets `-inf` everywhere.
    Allowed tokens keep their scores: run it on log-probabilities (beam search does), so an item's score is its
    log-probability under the model over the full vocabulary.

    Args:
        catalog: the [`CatalogTrie`] (build it once per catalog).
        prompt_length: length of the (left-padded) prompt batch.
        eos_token_id: the token that ends a finished item.
        num_beams: rows per user (`num_beams` of the `generate` call; 1 for greedy).
        exclude: per user, item ids that must not come back (e.g. the user's history); `None` for none.
    """

    def __init__(
        self,
        catalog: CatalogTrie,
        prompt_length: int,
        eos_token_id: int,
        num_beams: int = 1,
        exclude: Sequence[Collection[str]] | None = None,
    ):
        self.catalog, self.prompt_length, self.num_beams = catalog, prompt_length, num_beams
        self.eos_token_id = eos_token_id
        self.excluded = None if exclude is None else catalog.excluded_counts(exclude)
        self._device = None

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self._device != device:
            names = ("child_tokens", "child_nodes", "leaf_counts")
            self._on_device = [getattr(self.catalog, name).to(device) for name in names]
            self._on_device.append(None if self.excluded is None else self.excluded.to(device))
            self._device = device
        return tuple(self._on_device)

    def _walk(self, generated: torch.Tensor, child_tokens: torch.Tensor, child_nodes: torch.Tensor):
        """Each row's node after its generated tokens, and whether it is still on a catalog path."""
        rows = generated.shape[0]
        node = torch.zeros(rows, dtype=torch.long, device=generated.device)
        alive = torch.ones(rows, dtype=torch.bool, device=generated.device)
        last_inner = self.catalog.num_inner - 1
        for step in range(generated.shape[1]):
            inner = node < self.catalog.num_inner  # a leaf row holds EOS/padding after its item
            kids = child_nodes[node.clamp(max=last_inner)]
            match = (child_tokens[node.clamp(max=last_inner)] == generated[:, step : step + 1]) & (kids >= 0)
            found = match.any(-1)
            following = kids.gather(1, match.to(torch.uint8).argmax(-1, keepdim=True)).squeeze(1)
            node = torch.where(inner & found, following, node)
            alive &= ~inner | found
        return node, alive

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        child_tokens, child_nodes, leaf_counts, excluded = self._tables(scores.device)
        node, alive = self._walk(input_ids[:, self.prompt_length :], child_tokens, child_nodes)
        inner = alive & (node < self.catalog.num_inner)
        row_node = node.clamp(max=self.catalog.num_inner - 1)
        tokens, kids = child_tokens[row_node], child_nodes[row_node]
        allowed = (kids >= 0) & inner.unsqueeze(1)
        if excluded is not None:
            users = torch.arange(scores.shape[0], device=scores.device) // self.num_beams
            left = leaf_counts[kids.clamp(min=0)] - excluded[users.unsqueeze(1), kids.clamp(min=0)]
            allowed &= left > 0
        kept = scores.gather(1, tokens).masked_fill(~allowed, float("-inf"))
        processed = torch.full_like(scores, float("-inf"))
        processed.scatter_reduce_(1, tokens, kept, reduce="amax")
        finished = alive & ~inner
        processed[finished, self.eos_token_id] = 0.0
        return processed


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, length - len(ids) :] = 1
    return input_ids.to(device), mask.to(device)


def _check_request(prompts, catalog, k: int, num_beams: int, exclude) -> None:
    if not isinstance(catalog, CatalogTrie):
        raise TypeError(f"`catalog` must be a CatalogTrie, got {type(catalog).__name__}: use load_serving_catalog().")
    if not 1 <= k <= num_beams:
        raise ValueError(f"`k` must be between 1 and num_beams={num_beams}, got {k}: raise num_beams or lower k.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token: got an empty prompt.")
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"`exclude` has {len(exclude)} entries for {len(prompts)} prompts: pass one per prompt.")


@torch.inference_mode()
def generate_recommendations(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    catalog: CatalogTrie,
    k: int = 10,
    num_beams: int | None = None,
    exclude: Sequence[Collection[str]] | None = None,
    batch_size: int = 8,
    **generate_kwargs: Any,
) -> list[list[tuple[str, float]]]:
    """Top-`k` catalog items per prompt from `model.generate(num_beams=...)` with a [`TrieLogitsProcessor`].

    Scores are summed log-probabilities (`length_penalty=0`), best first. `num_beams` defaults to `k`; `exclude[i]`
    lists the items prompt `i` must not get back. Extra keyword arguments go to `generate`.
    """
    num_beams = num_beams or k
    _check_request(prompts, catalog, k, num_beams, exclude)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(prompts), batch_size):
        input_ids, mask = _left_pad(prompts[start : start + batch_size], pad_id, device)
        users = exclude[start : start + batch_size] if exclude is not None else None
        processor = TrieLogitsProcessor(catalog, input_ids.shape[1], eos_id, num_beams, users)
        options = dict(max_new_tokens=catalog.max_length, do_sample=False, early_stopping=True, length_penalty=0.0)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            logits_processor=LogitsProcessorList([processor]),
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            output_scores=True,
            return_dict_in_generate=True,
            **(options | generate_kwargs),
        )
        sequences = out.sequences[:, input_ids.shape[1] :].view(len(input_ids), num_beams, -1).tolist()
        scores = out.sequences_scores.view(len(input_ids), num_beams).tolist()
        for row_sequences, row_scores in zip(sequences, scores):
            ranked = [(catalog.item_for(seq), score) for seq, score in zip(row_sequences, row_scores)]
            results.append([(item, score) for item, score in ranked if item is not None and score > -1e8][:k])
    return results


def _chat_ids(tokenizer, text: str, style: str) -> list[int]:
    messages = [{"role": "user", "content": text}]
    options = dict(tokenize=True, return_dict=False, add_generation_prompt=True)
    if style == "chat_no_system":
        try:  # an empty system turn keeps templates from adding their default system prompt
            return list(tokenizer.apply_chat_template([{"role": "system", "content": ""}] + messages, **options))
        except Exception:  # templates without a system role add no default either
            pass
    return list(tokenizer.apply_chat_template(messages, **options))


def _text_ids(tokenizer, text: str, style: str) -> list[int]:
    if style == "plain" or not getattr(tokenizer, "chat_template", None):
        return list(tokenizer(text + "\n", add_special_tokens=True)["input_ids"])
    return _chat_ids(tokenizer, text, style)


def encode_history(tokenizer, history: Sequence[str], catalog: CatalogTrie) -> list[int]:
    """Prompt token ids for one history (item ids, oldest first), encoded as the model saw them in fine-tuning.

    Uses the prompt settings saved in the serving catalog: `examples` ("windows": the question `template` over the
    IDs joined by `separator`; "sequences": `sequence_prompt`, then each item's ID followed by `separator`),
    `style` ("plain", "chat", "chat_no_system") and `max_history` (the latest items are kept).
    """
    settings = catalog.prompt
    if settings is None:
        raise ValueError("`catalog` carries no prompt settings: load it with load_serving_catalog(folder).")
    unknown = [item for item in history if str(item) not in settings["tokens"]]
    if not history or unknown:
        raise ValueError(
            f"`history` must be a non-empty list of catalog item ids, got {list(history)[:5]} "
            f"(unknown: {unknown[:5]})."
        )
    history = [str(item) for item in history][-settings["max_history"] :]
    separator, style = settings["separator"], settings["style"]
    if settings.get("examples", "windows") == "sequences":
        ids = _text_ids(tokenizer, settings["sequence_prompt"], style)
        separator_ids = list(tokenizer(separator, add_special_tokens=False)["input_ids"])
        for item in history:
            ids += catalog.token_ids[item] + separator_ids
        return ids
    text = settings["template"].format(history=separator.join(settings["tokens"][item] for item in history))
    return _text_ids(tokenizer, text, style)


def save_serving_catalog(folder, item_token_ids: Mapping, item_tokens: Mapping, prompt: dict, titles=None) -> Path:
    """Write `serving_catalog.json`: item -> token ids and token string, titles, and the prompt settings."""
    path = Path(folder) / CATALOG_FILE
    payload = {
        "format": _FORMAT,
        "version": 1,
        "items": {str(i): list(map(int, t)) for i, t in item_token_ids.items()},
    }
    payload["prompt"] = dict(prompt) | {"tokens": {str(i): str(t) for i, t in item_tokens.items()}}
    payload["titles"] = {str(i): str(t) for i, t in (titles or {}).items()}
    path.write_text(json.dumps(payload))
    return path


def load_serving_catalog(folder) -> CatalogTrie:
    """The [`CatalogTrie`] of what [`save_serving_catalog`] wrote, with its `prompt` settings and `titles`."""
    path = Path(folder) / CATALOG_FILE if Path(folder).is_dir() else Path(folder)
    if not path.is_file():
        raise FileNotFoundError(f"No {CATALOG_FILE} at {str(folder)!r}: write one with export_for_serving(run, out).")
    payload = json.loads(path.read_text())
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a serving catalog (format {payload.get('format')!r}, expected {_FORMAT!r}).")
    catalog = CatalogTrie(payload["items"])
    catalog.prompt, catalog.titles = payload["prompt"], payload["titles"]
    return catalog


def export_for_serving(recommender, folder, *, overwrite: bool = False) -> Path:
    """Write a plain transformers model (LoRA and new rows merged) and its `serving_catalog.json` to `folder`.

    `recommender` is a `gti_peft.recsys.Recommender` holding a GTI `PeftModel` in bf16/fp32 (a 4-bit base cannot be
    merged). Its prompt settings, semantic IDs and titles go into the catalog file.
    """
    from ..sharing.hub import save_merged
    from .data import RECOMMENDATION_PROMPT  # gti-peft is needed to export, not to serve

    settings = recommender.settings
    folder = save_merged(recommender.model, recommender.tokenizer, folder, overwrite=overwrite)
    token_lists = recommender.token_lists
    ids = {item: recommender.tokenizer.convert_tokens_to_ids(tokens) for item, tokens in token_lists.items()}
    strings = {item: "".join(tokens) for item, tokens in token_lists.items()}
    prompt = {
        "examples": settings.examples, "template": RECOMMENDATION_PROMPT, "separator": settings.history_separator,
        "style": settings.prompt_style, "max_history": settings.max_history,
        "sequence_prompt": settings.sequence_prompt, "num_beams": settings.num_beams,
    }  # fmt: skip
    titles = {item: title for item, title in recommender.items.items() if title is not None}
    save_serving_catalog(folder, ids, strings, prompt, titles=titles)
    return folder
