"""`Recommender`: "this user watched these items; what next?" from a trained run, by trie-constrained beam search.

One way to rank: the recipe's evaluation builds a `Recommender` from its in-memory model, and
`Recommender.from_pretrained` builds the same object from what a run saved (adapter or merged model folder, its
tokenizer, `semantic_ids.safetensors`, and the prompt settings and item titles the recipe writes beside them).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..sharing.adapter_format import CONFIG_NAME, read_config
from ..training.templates import check_prompt_style, encode_prompt
from .beam_search import MAX_TOP_K, check_items_left, constrained_beam_search
from .data import recommendation_messages
from .semantic_ids import SAVE_NAME as SID_FILE
from .semantic_ids import SemanticIDs
from .trie import ItemTrie

SETTINGS_FILE = "recommender.json"
TITLES_FILE = "item_titles.json"
EXAMPLE_KINDS = ("windows", "sequences")
UNKNOWN_ITEMS = ("error", "skip")


@dataclass
class PromptSettings:
    """How a history becomes a prompt: what the model was fine-tuned on (the recipe writes these with its adapter).

    Args:
        examples: "windows" (the recommendation question over the history) or "sequences" (the sequence prompt, then
            the items so far, each followed by the separator).
        prompt_style: How prompts are tokenized (`gti_peft.training.templates.PROMPT_STYLES`).
        history_separator: Text between the semantic IDs of a history.
        max_history: Items of history a prompt holds (the latest ones).
        sequence_prompt: The sequence examples' opening prompt.
        num_beams: Beams of the search (at least `k`).
    """

    examples: str = "windows"
    prompt_style: str = "chat"
    history_separator: str = ", "
    max_history: int = 10
    sequence_prompt: str = "List the items the user watched, in order."
    num_beams: int = 20

    def __post_init__(self):
        if self.examples not in EXAMPLE_KINDS:
            raise ValueError(f"`examples` must be one of {list(EXAMPLE_KINDS)}, got {self.examples!r}.")
        check_prompt_style(self.prompt_style, "`prompt_style`")
        for name in ("max_history", "num_beams"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SETTINGS_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PromptSettings:
        """The folder's `recommender.json`; for older runs the run's `recipe.yaml` one folder up, else defaults."""
        folder = Path(folder)
        if (folder / SETTINGS_FILE).is_file():
            values = json.loads((folder / SETTINGS_FILE).read_text())
            return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        recipe = folder.parent / "recipe.yaml"
        if recipe.is_file():
            import yaml

            config = yaml.safe_load(recipe.read_text()) or {}
            data, evaluation = config.get("data") or {}, config.get("evaluation") or {}
            examples = data.get("examples", "windows")  # runs from before sequence examples trained on windows
            values = {k: data[k] for k in ("prompt_style", "history_separator") if k in data}
            if "max_history" in data:  # a chunk of max_history items holds at most max_history - 1 before a target
                values["max_history"] = data["max_history"] - (examples == "sequences")
            values |= {"examples": examples, "num_beams": evaluation.get("num_beams", 20)}
            return cls(**values)
        warnings.warn(
            f"{str(folder)!r} records no prompt settings ({SETTINGS_FILE} or ../recipe.yaml): using the settings of "
            f"runs from before they were saved, {asdict(cls())}. Pass `settings=PromptSettings(...)` if the model "
            "was trained otherwise.",
            stacklevel=3,
        )
        return cls()


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: its id, its score (log-probability of its semantic ID given the prompt) and title."""

    item: str
    score: float
    title: str | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunFiles:
    """What `Recommender.from_pretrained` reads before any model loads: the folder, its catalog and settings."""

    folder: Path
    kind: str  # "adapter" or "merged"
    semantic_ids: SemanticIDs
    settings: PromptSettings
    titles: dict[str, str]

    @classmethod
    def read(cls, path_or_hub_id: str | Path) -> RunFiles:
        folder = _resolve_folder(path_or_hub_id)
        if not (folder / SID_FILE).is_file():
            found = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"{str(folder)!r} holds no {SID_FILE} (found {found}): a Recommender needs the catalog's semantic "
                f"IDs. Pass a recipe run folder or its adapter/ folder, or copy the run's {SID_FILE} beside the model."
            )
        kind = "adapter" if (folder / CONFIG_NAME).is_file() else "merged"
        if kind == "merged" and not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} holds neither adapter_config.json nor config.json: it is not an adapter or a model "
                "folder. Pass a recipe run folder, its adapter/ folder, or a save_merged folder."
            )
        titles = json.loads((folder / TITLES_FILE).read_text()) if (folder / TITLES_FILE).is_file() else {}
        return cls(folder, kind, SemanticIDs.load(folder / SID_FILE), PromptSettings.load(folder), titles)


def _resolve_folder(path_or_hub_id: str | Path) -> Path:
    """A local run folder (its adapter/), adapter or model folder; else a Hub repo id, downloaded."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path / "adapter" if (path / "adapter" / SID_FILE).is_file() else path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path_or_hub_id)) and not path.exists():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_hub_id)))
    raise FileNotFoundError(
        f"`path_or_hub_id`={str(path_or_hub_id)!r} is neither a folder nor a Hub repo id (owner/name): pass a recipe "
        "run folder (e.g. outputs/smollm2-135m-movielens), its adapter/ folder, or a save_merged folder."
    )


def _torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"`dtype` must be a torch dtype or its name (e.g. 'bfloat16'), got {dtype!r}.")


def _load_model(files: RunFiles, dtype: torch.dtype, load_in_4bit: bool):
    from transformers import AutoModelForCausalLM

    def load_base(path: str):
        if load_in_4bit:
            from ..training.quantization import load_4bit_causal_lm

            return load_4bit_causal_lm(path, compute_dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    if files.kind == "merged":
        return load_base(str(files.folder))
    from peft import PeftModel

    from ..assets.offline import resolve

    base_name = read_config(files.folder)["base_model_name_or_path"]
    return PeftModel.from_pretrained(load_base(resolve(base_name)), files.folder)


def _is_one_history(histories: Any) -> bool:
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
        raise ValueError(
            f"`histories` must be one history (a list of item ids) or a list of them, got {type(histories).__name__}"
            f" {histories!r:.80}."
        )
    return len(histories) == 0 or not any(isinstance(h, Sequence) and not isinstance(h, str) for h in histories)


class Recommender:
    """Top-k next items for users' histories, from a GTI-trained causal LM and its catalog's semantic IDs.

    Args:
        model: The fine-tuned causal LM (a `PeftModel` with a GTI adapter, or a merged model).
        tokenizer: Its tokenizer (holding the semantic-ID tokens).
        semantic_ids: The catalog: a `SemanticIDs`, or a mapping item id -> its semantic-ID token strings.
        settings: How histories become prompts (`PromptSettings`; the recipe's defaults if not given).
        titles: Item id -> title, where the items table is known.

    Example (a run folder made by `make demo`):

    ```text
    >>> rec = Recommender.from_pretrained("outputs/smollm2-135m-movielens")
    >>> rec.recommend(["50", "172", "181"], k=3)
    [Recommendation(item='...', score=-4.2, title='...'), ...]
    ```
    """

    def __init__(self, model, tokenizer, semantic_ids, settings: PromptSettings | None = None, titles=None):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or PromptSettings()
        token_lists = semantic_ids.token_lists() if isinstance(semantic_ids, SemanticIDs) else dict(semantic_ids)
        self.token_lists: dict[str, list[str]] = {str(k): list(v) for k, v in token_lists.items()}
        ids = {item: tokenizer.convert_tokens_to_ids(tokens) for item, tokens in self.token_lists.items()}
        unk = getattr(tokenizer, "unk_token_id", None)
        pairs = ((t, i) for item, tokens in self.token_lists.items() for t, i in zip(tokens, ids[item]))
        missing = sorted({t for t, i in pairs if i in (None, unk)})
        if missing:
            raise ValueError(
                f"The tokenizer lacks {len(missing)} semantic-ID token(s), e.g. {missing[:3]}: load the tokenizer "
                "saved with the adapter (it holds the new tokens), not the base model's."
            )
        self.trie = ItemTrie(ids)
        titles = titles or {}
        self.items: dict[str, str | None] = {item: titles.get(item) for item in self.token_lists}
        self._separator_ids = list(tokenizer(self.settings.history_separator, add_special_tokens=False)["input_ids"])
        self._tries: dict[frozenset, ItemTrie] = {}

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        load_in_4bit: bool = False,
    ) -> Recommender:
        """Load a run: a recipe run folder, its `adapter/` folder, a `save_merged` folder holding the run's
        `semantic_ids.safetensors`, or a Hub repo id of one. Files are checked before the model loads."""
        return cls.from_run_files(RunFiles.read(path_or_hub_id), device, dtype, load_in_4bit)

    @classmethod
    def from_run_files(cls, files: RunFiles, device=None, dtype=None, load_in_4bit: bool = False) -> Recommender:
        """Load the model of files `RunFiles.read` checked (e.g. after checking an input file against the catalog)."""
        from transformers import AutoTokenizer

        dtype = _torch_dtype(dtype)
        tokenizer = AutoTokenizer.from_pretrained(files.folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = _load_model(files, dtype, load_in_4bit)
        if device is not None and not load_in_4bit:
            model = model.to(device)
        model.eval()
        return cls(model, tokenizer, files.semantic_ids, files.settings, files.titles)

    def prompt_ids(self, history: Sequence[str]) -> list[int]:
        """The prompt for one history (its latest `settings.max_history` items), encoded as in fine-tuning."""
        history = list(history)[-self.settings.max_history :]
        style = self.settings.prompt_style
        if self.settings.examples == "sequences":
            ids = encode_prompt(self.tokenizer, self.settings.sequence_prompt, style)
            for item in history:
                ids += self.tokenizer.convert_tokens_to_ids(self.token_lists[item]) + self._separator_ids
            return ids
        sids = ["".join(self.token_lists[item]) for item in history]
        text = recommendation_messages(sids, separator=self.settings.history_separator)[0]["content"]
        return encode_prompt(self.tokenizer, text, style)

    def search_items(self, query: str, limit: int = 20) -> list[tuple[str, str | None]]:
        """`(item id, title)` of items whose title (or id) contains `query`, case-insensitive; prefix matches first."""
        query = query.strip().lower()
        if not query:
            return []
        hits = [(i, t) for i, t in self.items.items() if query in (t or "").lower() or query == i.lower()]
        hits.sort(key=lambda pair: not (pair[1] or "").lower().startswith(query))
        return hits[:limit]

    def check_histories(self, histories: Sequence[Sequence[Any]], unknown_items: str = "error") -> list[list[str]]:
        """Item ids as strings, refusing (or with `unknown_items="skip"`, dropping) ids not in the catalog; an empty
        history is refused. Cheap: no model work."""
        return check_histories(histories, self.token_lists, unknown_items)

    def _trie_for(self, allowed_items: Iterable[Hashable] | None) -> ItemTrie:
        if allowed_items is None:
            return self.trie
        allowed = frozenset(str(i) for i in allowed_items)
        unknown = sorted(allowed - self.token_lists.keys())
        if not allowed or unknown:
            raise ValueError(
                f"`allowed_items` must name catalog items, got {len(allowed)} item(s)"
                + (f", {len(unknown)} unknown: {unknown[:5]}" if unknown else "")
                + ": pass ids from `Recommender.items`."
            )
        if allowed not in self._tries:
            self._tries = {allowed: ItemTrie({i: self.trie.sequences[i] for i in self.items if i in allowed})}
        return self._tries[allowed]

    def rank_prompts(
        self,
        prompts: Sequence[Sequence[int]],
        k: int,
        exclude: Sequence[Iterable[Hashable]] | None = None,
        allowed_items: Iterable[Hashable] | None = None,
        num_beams: int | None = None,
        batch_size: int = 8,
        names: Sequence[Hashable] | None = None,
        disable_tqdm: bool = True,
    ) -> list[list[Recommendation]]:
        """The ranking every path goes through: top-`k` items for encoded prompts, without `exclude[i]`'s items."""
        if not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"`k` must be an integer between 1 and {MAX_TOP_K}, got {k!r}.")
        trie = self._trie_for(allowed_items)
        if exclude is not None:
            exclude = [{i for i in items if i in trie} for items in exclude]
            check_items_left(len(trie), [len(e) for e in exclude], k, names=names)
        beams = max(k, num_beams or self.settings.num_beams)
        results = constrained_beam_search(
            self.model, self.tokenizer, prompts, trie, beams, k, batch_size, disable_tqdm, exclude=exclude
        )
        return [[Recommendation(item, score, self.items.get(item)) for item, score in r] for r in results]

    def recommend(
        self,
        histories: Sequence[Any] | Sequence[Sequence[Any]],
        k: int = 10,
        exclude_history: bool = True,
        allowed_items: Iterable[Hashable] | None = None,
        num_beams: int | None = None,
        batch_size: int = 8,
        unknown_items: str = "error",
        exclude_items: Sequence[Iterable[Hashable]] | None = None,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """Top-`k` next items, best first, for one history (a list of item ids, oldest first) or a list of them.

        Args:
            histories: One history or a batch; item ids are strings (ints are read as their string).
            k: Items per history (at most 20).
            exclude_history: Never recommend an item of the history (as recommenders usually rank).
            allowed_items: Rank only these items (e.g. what is in stock).
            num_beams: Beams of the search (default: the run's evaluation setting, at least `k`).
            batch_size: Histories encoded together.
            unknown_items: "error" (default) refuses ids not in the catalog, naming them; "skip" leaves them out.
            exclude_items: Per history, further items never to recommend (e.g. everything the user bought).

        Returns:
            A list of `Recommendation(item, score, title)` for one history; a list of such lists for a batch.
        """
        one = _is_one_history(histories)
        batch = [histories] if one else list(histories)
        clean = self.check_histories(batch, unknown_items)
        if exclude_items is not None and len(exclude_items) != len(clean):
            raise ValueError(
                f"`exclude_items` needs one collection per history: got {len(exclude_items)} for {len(clean)}."
            )
        exclude = None
        if exclude_history or exclude_items is not None:
            extra = exclude_items or [()] * len(clean)
            exclude = [(set(h) if exclude_history else set()) | {str(i) for i in e} for h, e in zip(clean, extra)]
        prompts = [self.prompt_ids(h) for h in clean]
        ranked = self.rank_prompts(prompts, k, exclude, allowed_items, num_beams, batch_size, names=None)
        return ranked[0] if one else ranked


def check_histories(
    histories: Sequence[Sequence[Any]],
    catalog: Mapping[str, Any],
    unknown_items: str = "error",
    names: Sequence[Any] | None = None,
) -> list[list[str]]:
    """Each history's item ids as strings; ids not in `catalog` refused (naming them) or skipped; empty refused.
    Errors name the history by its row, or by `names[row]` (e.g. user ids) when given."""
    if unknown_items not in UNKNOWN_ITEMS:
        raise ValueError(f"`unknown_items` must be one of {list(UNKNOWN_ITEMS)}, got {unknown_items!r}.")
    clean = []
    for row, history in enumerate(histories):
        label = f"History {row}" if names is None else f"The history of user {names[row]!r} (row {row})"
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise ValueError(f"{label} must be a list of item ids, got {type(history).__name__} {history!r:.60}.")
        items = [str(i) for i in history]
        unknown = [i for i in items if i not in catalog]
        if unknown and unknown_items == "error":
            raise ValueError(
                f"{label} holds {len(unknown)} item id(s) not in the catalog: {unknown[:10]}. Check the ids "
                f"(the catalog's look like {list(catalog)[:3]}), or pass unknown_items='skip' to leave them out."
            )
        items = [i for i in items if i in catalog]
        if not items:
            skipped = f" after skipping {len(unknown)} unknown id(s) {unknown[:10]}" if unknown else ""
            raise ValueError(
                f"{label} is empty{skipped}: a recommendation needs at least one past item of the catalog "
                "(for a user with none, recommend popular items instead)."
            )
        clean.append(items)
    return clean
