"""The recommendation recipe's YAML: `adapter` is a `GTIConfig`, `grounding` a `GroundingConfig`, `finetune` a
`FinetuneConfig` (each parsed by `HfArgumentParser` and checked by that config alone); the other sections are the
recipe's own. Unknown keys, wrong types and contradictions fail at once, before anything loads."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..method.config import GTIConfig
from ..recsys.collaborative import EMBEDDINGS
from ..recsys.quantizers import METHODS as SEMANTIC_ID_METHODS
from ..training.grounding_config import GroundingConfig
from ..training.precision import AUTO, check_bf16
from ..training.templates import PROMPT_STYLES, check_prompt_style
from .finetune_config import FinetuneConfig
from .parsing import (
    ADAPTER_BOOKKEEPING,
    build_adapter,
    build_section,
    build_stage,
    explicit_settings,
    refuse_unknown,
)

STAGES = ("ground", "finetune", "evaluate")
EXAMPLE_KINDS = ("windows", "sequences")


@dataclass
class ModelArgs:
    name_or_path: str = field(default="offline:smollm2-135m-instruct", metadata={"help": "Hub id or local path."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: NF4 base via bitsandbytes."})
    gradient_checkpointing: bool = False
    ignore_memory_check: bool = field(
        default=False, metadata={"help": "Train even when the predicted peak exceeds the device's free memory."}
    )


@dataclass
class DataArgs:
    dataset: str = field(default="movielens-100k", metadata={"help": "'movielens-100k' or 'files'."})
    interactions_path: str | None = field(default=None, metadata={"help": "CSV/JSON/Parquet: user, item, time."})
    items_path: str | None = field(default=None, metadata={"help": "CSV/JSON/Parquet: item, title, description."})
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str = "timestamp"
    title_column: str = "title"
    description_columns: list[str] = field(default_factory=lambda: ["description"])
    min_interactions: int = 3
    examples: str = field(
        default="sequences",
        metadata={
            "help": f"Fine-tuning examples, one of {EXAMPLE_KINDS}: 'sequences' (the default: each user's training "
            "sequence in chunks of at most max_history items, the loss on the ID tokens of every item after a "
            "chunk's first; 6.7x the next-item targets per CPU-second) or 'windows' (one target per example, its "
            "max_history items before it as the prompt)."
        },
    )
    max_history: int = field(
        default=20,
        metadata={
            "help": "windows: items of history in a prompt; sequences: items per chunk (so at most max_history - 1 "
            "items of history before a target). Evaluation prompts hold the longest history training used."
        },
    )
    history_separator: str = field(
        default=", ", metadata={"help": "Text between the semantic IDs of a history ('' works: IDs self-delimit)."}
    )
    prompt_style: str = field(
        default="chat",
        metadata={"help": f"How prompts are tokenized, in every stage: one of {PROMPT_STYLES} (templates.py)."},
    )
    max_chunks_per_user: int | None = field(
        default=None,
        metadata={
            "help": "sequences: keep only each user's latest chunks, this many (their most recent items, the closest "
            "in time to the items evaluation asks for); null keeps every chunk."
        },
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "Seeded subsample of the fine-tuning examples (windows or chunks)."}
    )
    max_length: int = 256

    @property
    def history_length(self) -> int:
        """The most items of history before a target, in training and in evaluation prompts."""
        return self.max_history - 1 if self.examples == "sequences" else self.max_history


@dataclass
class SemanticIDArgs:
    encoder: str = "offline:all-minilm-l6-v2"
    levels: int = 3
    codes_per_level: int = 32
    seed: int = 0
    method: str = field(
        default="residual_kmeans",
        metadata={"help": f"Quantizer of the item embeddings: one of {SEMANTIC_ID_METHODS}."},
    )
    embedding: str = field(
        default="text+collaborative",
        metadata={
            "help": f"What the IDs encode, one of {EMBEDDINGS}: 'text' (title and description, sentence encoder), "
            "'collaborative' (truncated SVD of the training interactions: what users watch together) or "
            "'text+collaborative' (both, each L2-normalised, concatenated; the default: recall@10 0.104 against "
            "text IDs' 0.031 and collaborative IDs' 0.087 at the same budget, docs/recommendation.md)."
        },
    )
    collaborative_dim: int = field(default=64, metadata={"help": "Dimensions of the collaborative item vectors."})
    description_items_per_token: int = field(
        default=8, metadata={"help": "adapter.init=description: titles of this many items describe a code token."}
    )


@dataclass
class EvalArgs:
    num_beams: int = 20
    top_k: int = 20
    max_users: int | None = field(default=None, metadata={"help": "First N test users (fixed order); None: all."})
    batch_size: int = 8
    split: str = field(default="test", metadata={"help": "'test' (last item) or 'valid' (second to last)."})
    bf16: bool | str = field(
        default=AUTO, metadata={"help": "Beam search under bf16 autocast: true, false or auto (where it is faster)."}
    )
    exclude_history: bool = field(
        default=True,
        metadata={
            "help": "Leave each user's known items (the training sequence and the prompt's history) out of every "
            "arm's ranking, as recommenders usually rank; false ranks the whole catalog."
        },
    )


@dataclass
class OutputArgs:
    output_dir: str = "outputs/smollm2-movielens"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    overwrite: bool = field(default=False, metadata={"help": "Allow an output_dir that holds another run."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the adapter to."})
    seed: int = 0


# what the recipe sets in each stage, besides the seed: its checkpoint folder, and for grounding the data's prompts
STAGE_FOLDERS = {"grounding": "checkpoints-ground", "finetune": "checkpoints-finetune"}
STAGE_SET_BY_RECIPE = ("output_dir", "seed", "prompt_style", "max_length", "use_cpu", "logging_dir")


@dataclass
class RecipeConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    semantic_ids: SemanticIDArgs = field(default_factory=SemanticIDArgs)
    adapter: GTIConfig = field(default_factory=lambda: build_adapter({}, "adapter"))
    grounding: GroundingConfig = field(default_factory=lambda: build_stage(GroundingConfig, {}, "grounding"))
    finetune: FinetuneConfig = field(default_factory=lambda: build_stage(FinetuneConfig, {}, "finetune"))
    evaluation: EvalArgs = field(default_factory=EvalArgs)
    output: OutputArgs = field(default_factory=OutputArgs)

    def __post_init__(self):
        self.validate()
        settle_stages(self, prompt_style=self.data.prompt_style, max_length=self.data.max_length)

    @classmethod
    def from_dict(cls, values: dict, where: str) -> RecipeConfig:
        """The config of parsed YAML sections (`where` names the source in errors)."""
        return build_config(cls, values, where)

    def validate(self) -> None:
        """The recipe's own sections and how they combine; `adapter`, `grounding` and `finetune` checked themselves."""
        if self.model.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.model.dtype!r}.")
        unknown = [s for s in self.output.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"output.stages has unknown stage(s) {unknown}; choose from {list(STAGES)}.")
        if self.data.dataset not in ("movielens-100k", "files"):
            raise ValueError(f"data.dataset must be 'movielens-100k' or 'files', got {self.data.dataset!r}.")
        if self.data.dataset == "files" and not (self.data.interactions_path and self.data.items_path):
            raise ValueError("data.dataset='files' needs data.interactions_path and data.items_path.")
        if self.evaluation.top_k > self.evaluation.num_beams:
            raise ValueError(
                f"evaluation.top_k={self.evaluation.top_k} exceeds evaluation.num_beams={self.evaluation.num_beams}: "
                "beam search returns at most num_beams items; raise num_beams or lower top_k."
            )
        if self.semantic_ids.method not in SEMANTIC_ID_METHODS:
            raise ValueError(
                f"semantic_ids.method must be one of {list(SEMANTIC_ID_METHODS)}, got {self.semantic_ids.method!r}."
            )
        if self.semantic_ids.levels < 1 or self.semantic_ids.codes_per_level < 2:
            raise ValueError(
                f"semantic_ids needs levels >= 1 and codes_per_level >= 2, got levels={self.semantic_ids.levels}, "
                f"codes_per_level={self.semantic_ids.codes_per_level}; the usual choice is 3 x 32."
            )
        self.validate_data()
        if self.evaluation.split not in ("test", "valid"):
            raise ValueError(f"evaluation.split must be 'test' or 'valid', got {self.evaluation.split!r}.")
        if self.model.load_in_4bit:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as error:
                raise ValueError(
                    "model.load_in_4bit=true needs bitsandbytes (pip install bitsandbytes), which failed to import."
                ) from error
        check_prompt_style(self.data.prompt_style, "data.prompt_style")
        check_bf16(self.evaluation.bf16, "evaluation.bf16")

    def validate_data(self) -> None:
        """The data and semantic-ID keys of issue-prone combinations: fine-tuning examples, history length, IDs."""
        data, sids = self.data, self.semantic_ids
        if data.examples not in EXAMPLE_KINDS:
            raise ValueError(f"data.examples must be one of {list(EXAMPLE_KINDS)}, got {data.examples!r}.")
        if data.history_length < 1:
            least = 2 if data.examples == "sequences" else 1
            raise ValueError(
                f"data.max_history={data.max_history} with data.examples={data.examples!r} gives a history of "
                f"{data.history_length} items before a target; it needs at least 1: set data.max_history >= {least}."
            )
        if data.max_chunks_per_user is not None:
            if data.examples != "sequences":
                raise ValueError(
                    f"data.max_chunks_per_user={data.max_chunks_per_user} applies to sequence chunks, but "
                    f"data.examples={data.examples!r}: set data.examples=sequences or data.max_chunks_per_user=null."
                )
            if data.max_chunks_per_user < 1:
                raise ValueError(
                    f"data.max_chunks_per_user={data.max_chunks_per_user} keeps no chunk: set it to 1 or more (each "
                    "user's latest chunks), or null for every chunk."
                )
        if sids.embedding not in EMBEDDINGS:
            raise ValueError(f"semantic_ids.embedding must be one of {list(EMBEDDINGS)}, got {sids.embedding!r}.")
        if sids.collaborative_dim < 1:
            raise ValueError(f"semantic_ids.collaborative_dim must be >= 1, got {sids.collaborative_dim}.")


def settle_stages(config, **grounding) -> None:
    """Set what the recipe owns in its stages: the checkpoint folders under `output.output_dir`, the run's seed, and
    the data's prompt settings for grounding (`grounding`: `GroundingConfig` fields)."""
    out = Path(config.output.output_dir)
    for name, folder in STAGE_FOLDERS.items():
        stage = getattr(config, name)
        wanted = {"output_dir": str(out / folder), "seed": config.output.seed}
        wanted |= grounding if name == "grounding" else {}
        if any(getattr(stage, key) != value for key, value in wanted.items()):
            setattr(config, name, dataclasses.replace(stage, **wanted))


SECTION_BUILDERS = {
    GTIConfig: build_adapter,
    GroundingConfig: lambda values, where: build_stage(GroundingConfig, values, where),
    FinetuneConfig: lambda values, where: build_stage(FinetuneConfig, values, where),
}


def build_config(cls, values: dict, where: str, builders: dict = SECTION_BUILDERS):
    """`cls` (a recipe config) from parsed YAML: each section by its builder, a partial section keeping the rest of
    that section's defaults."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    refuse_unknown(values, fields, where, "section")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        section = f"{where}.{name}"
        if hints[name] in builders:
            kwargs[name] = builders[hints[name]](value or {}, section)
        else:
            defaults = dataclasses.asdict(fields[name].default_factory())
            if not isinstance(value or {}, dict):
                raise ValueError(f"{section} must be a mapping, got {value!r}.")
            kwargs[name] = build_section(hints[name], {**defaults, **(value or {})}, section)
    return cls(**kwargs)


def load_recipe_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Parse a recipe YAML plus `section.key=value` overrides; errors name the key, the value and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    task = values.pop("task", "recommendation") if isinstance(values, dict) else "recommendation"
    if task != "recommendation":
        raise ValueError(f"{path.name} is a {task!r} recipe: run it with `gti-peft train --config {path}`.")
    return build_config(RecipeConfig, apply_overrides(values, overrides or []), path.name)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (values parsed as YAML) written into the parsed YAML `values`."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or key.count(".") != 1:
            raise ValueError(f"Override {override!r} must look like section.key=value, e.g. adapter.init=mean.")
        section, name = key.split(".")
        values.setdefault(section, {})
        if not isinstance(values[section], dict):
            raise ValueError(f"Override {override!r}: {section!r} is not a section.")
        values[section][name] = yaml.safe_load(raw)
    return values


def recipe_to_dict(config) -> dict:
    """The config as YAML-ready sections that `load_recipe_config` reads back: the recipe's own sections whole, the
    adapter and stages as the fields that differ from a fresh config's (what the recipe sets left out)."""
    values = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if isinstance(section, GTIConfig):
            values[f.name] = explicit_settings(section, exclude=ADAPTER_BOOKKEEPING)
        elif isinstance(section, (GroundingConfig, FinetuneConfig)):
            values[f.name] = explicit_settings(section, exclude=STAGE_SET_BY_RECIPE)
        else:
            values[f.name] = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return values
