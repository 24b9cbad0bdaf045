"""The recipe's YAML, parsed into dataclasses: unknown keys, wrong types and contradictions fail at once."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..method.config import INIT_METHODS
from ..recsys.collaborative import EMBEDDINGS
from ..recsys.quantizers import METHODS as SEMANTIC_ID_METHODS
from ..training.precision import AUTO
from ..training.templates import DEFAULT_TEMPLATES, PROMPT_STYLES

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
        default="windows",
        metadata={
            "help": f"Fine-tuning examples, one of {EXAMPLE_KINDS}: 'windows' (one target per example, its "
            "max_history items before it as the prompt) or 'sequences' (each user's training sequence in chunks of "
            "at most max_history items, the loss on the ID tokens of every item after a chunk's first)."
        },
    )
    max_history: int = field(
        default=10,
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
        default="text",
        metadata={
            "help": f"What the IDs encode, one of {EMBEDDINGS}: 'text' (title and description, sentence encoder), "
            "'collaborative' (truncated SVD of the training interactions: what users watch together) or "
            "'text+collaborative' (both, each L2-normalised, concatenated)."
        },
    )
    collaborative_dim: int = field(default=64, metadata={"help": "Dimensions of the collaborative item vectors."})


@dataclass
class AdapterArgs:
    init: str = field(default="mean", metadata={"help": f"Starting rows: one of {INIT_METHODS}."})
    r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    description_items_per_token: int = field(
        default=8, metadata={"help": "init=description: titles of this many items describe a code token."}
    )

    def gti_config(self, new_token_ids: list[int], description_token_ids: list[list[int]] | None = None):
        """The `GTIConfig` these settings describe, for `new_token_ids`."""
        from ..method.config import GTIConfig

        return GTIConfig(
            new_token_ids=new_token_ids,
            init=self.init,
            description_token_ids=description_token_ids,
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


# Keys a stage section may not set: the recipe owns them (checkpoint folders, one seed for the whole run).
RECIPE_OWNED = {"output_dir": "output.output_dir", "seed": "output.seed", "resume_from_checkpoint": "rerunning"}
RENAMED = {"batch_size": "per_device_train_batch_size"}
_STAGE_COMMON = {
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 10,
    "logging_steps": 10,
    "save_steps": 50,
    "bf16": "auto",
}


@dataclass
class TrainStageArgs:
    """A training stage: the recipe's own keys below, plus ANY `transformers.TrainingArguments` field (e.g.
    `max_steps`, `learning_rate`, `per_device_train_batch_size`, `bf16`), validated by `TrainingArguments` itself.
    `bf16: auto` trains in bf16 only where this device runs it faster than fp32 (`gti_peft.training.precision`)."""

    templates: list[str] | None = field(
        default=None, metadata={"help": "Grounding only: names of the templates to ground with (default: all)."}
    )
    grounding_mix: float = field(
        default=0.0,
        metadata={
            "help": "Fine-tuning only: fraction of fine-tuning examples drawn from the grounding templates "
            "(continual grounding, as LC-Rec trains its alignment tasks alongside next-item prediction)."
        },
    )
    training_args: dict = field(default_factory=dict, metadata={"help": "TrainingArguments fields of this stage."})

    def option(self, name: str):
        """A TrainingArguments value of this stage (its default where the YAML does not set it)."""
        if name in self.training_args:
            return self.training_args[name]
        return _default_training_args().get(name)

    @property
    def max_steps(self) -> int:
        return self.option("max_steps")


@functools.cache
def _default_training_args() -> dict:
    """Every TrainingArguments field and its default (read once; callers do not mutate it)."""
    import transformers

    return {f.name: f.default for f in dataclasses.fields(transformers.TrainingArguments)}


def _stage(max_steps: int, learning_rate: float, **extra) -> TrainStageArgs:
    return TrainStageArgs(
        training_args={"max_steps": max_steps, "learning_rate": learning_rate, **_STAGE_COMMON, **extra}
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


@dataclass
class RecipeConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    semantic_ids: SemanticIDArgs = field(default_factory=SemanticIDArgs)
    adapter: AdapterArgs = field(default_factory=AdapterArgs)
    grounding: TrainStageArgs = field(default_factory=lambda: _stage(100, 1e-3, weight_decay=0.0))
    finetune: TrainStageArgs = field(default_factory=lambda: _stage(200, 5e-4))
    evaluation: EvalArgs = field(default_factory=EvalArgs)
    output: OutputArgs = field(default_factory=OutputArgs)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.adapter.init not in INIT_METHODS:
            raise ValueError(f"adapter.init must be one of {INIT_METHODS}, got {self.adapter.init!r}.")
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
        names = {t.name for t in DEFAULT_TEMPLATES}
        bad = [t for t in (self.grounding.templates or []) if t not in names]
        if bad:
            raise ValueError(f"grounding.templates has unknown template(s) {bad}; known: {sorted(names)}.")
        if self.model.load_in_4bit:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as error:
                raise ValueError(
                    "model.load_in_4bit=true needs bitsandbytes (pip install bitsandbytes), which failed to import."
                ) from error
        if self.data.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"data.prompt_style must be one of {PROMPT_STYLES}, got {self.data.prompt_style!r}.")
        if self.evaluation.bf16 not in (True, False, AUTO):
            raise ValueError(f"evaluation.bf16 must be true, false or auto, got {self.evaluation.bf16!r}.")
        mix = self.finetune.grounding_mix
        if not 0.0 <= mix <= 1.0:
            raise ValueError(
                f"finetune.grounding_mix must lie in [0, 1] (the fraction of fine-tuning examples drawn from the "
                f"grounding templates), got {mix!r}."
            )
        if self.grounding.grounding_mix:
            raise ValueError("grounding.grounding_mix is a fine-tuning key: set finetune.grounding_mix instead.")
        if self.finetune.templates is not None:
            raise ValueError(
                "finetune.templates is not used: grounding.templates names the templates, for grounding and for "
                "finetune.grounding_mix alike."
            )
        for stage in ("grounding", "finetune"):
            validate_training_args(getattr(self, stage), stage)

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
        if sids.embedding not in EMBEDDINGS:
            raise ValueError(f"semantic_ids.embedding must be one of {list(EMBEDDINGS)}, got {sids.embedding!r}.")
        if sids.collaborative_dim < 1:
            raise ValueError(f"semantic_ids.collaborative_dim must be >= 1, got {sids.collaborative_dim}.")


def validate_training_args(stage: TrainStageArgs, where: str) -> None:
    """Let `transformers.TrainingArguments` validate a stage's options; name the stage in its errors."""
    import tempfile

    from transformers import TrainingArguments

    options = dict(stage.training_args)
    if options.get("bf16", False) not in (True, False, AUTO):
        raise ValueError(f"{where}.bf16 must be true, false or auto, got {options.get('bf16')!r}.")
    options["bf16"] = False  # "auto" is resolved when the stage runs, on its device
    if options.get("max_steps", 0) < 0 or options.get("learning_rate", 1.0) <= 0:
        raise ValueError(
            f"{where}: max_steps >= 0 and learning_rate > 0 are required, got max_steps={options.get('max_steps')}, "
            f"learning_rate={options.get('learning_rate')}."
        )
    try:
        TrainingArguments(output_dir=tempfile.gettempdir(), use_cpu=True, report_to="none", **options)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: transformers.TrainingArguments refuses these options: {error}") from error


def _build_stage(default: TrainStageArgs, values: dict, where: str) -> TrainStageArgs:
    """A stage section: its own keys, and every other key a TrainingArguments field (unknown keys refused)."""
    import difflib

    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    own = {f.name for f in dataclasses.fields(TrainStageArgs)} - {"training_args"}
    allowed = set(_default_training_args())
    training_args = dict(default.training_args)
    kwargs = {name: getattr(default, name) for name in own}
    hints = typing.get_type_hints(TrainStageArgs)
    for key, value in values.items():
        if key in own:
            kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
        elif key in RECIPE_OWNED:
            raise ValueError(f"{where}.{key} is set by the recipe: use {RECIPE_OWNED[key]} instead.")
        elif key in RENAMED:
            raise ValueError(f"{where}.{key} is now {RENAMED[key]} (the TrainingArguments name).")
        elif key in allowed:
            training_args[key] = float(value) if key == "learning_rate" and isinstance(value, (int, str)) else value
        else:
            close = difflib.get_close_matches(key, sorted(own | allowed), n=3)
            raise ValueError(
                f"Unknown key {key!r} in {where}: neither a stage key ({sorted(own)}) nor a "
                f"transformers.TrainingArguments field" + (f"; did you mean {close}?" if close else ".")
            )
    return TrainStageArgs(training_args=training_args, **kwargs)


def _check_type(value, hint, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except ValueError as error:
                errors.append(error)
        raise errors[-1]
    if hint is type(None):
        if value is not None:
            raise ValueError(f"{where} must be null, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r} ({type(value).__name__}).")
        (inner,) = typing.get_args(hint)
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be {hint.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def _default(cls, name: str):
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(names)}.")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if hint is TrainStageArgs:
            kwargs[name] = _build_stage(_default(cls, name), value or {}, f"{where}.{name}")
        elif dataclasses.is_dataclass(hint):
            # a partial section keeps the section's own defaults (e.g. grounding vs finetune steps)
            defaults = dataclasses.asdict(_default(cls, name))
            kwargs[name] = _build(hint, {**defaults, **(value or {})}, f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def load_recipe_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Parse a recipe YAML plus `section.key=value` overrides; errors name the key, the value and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r} does not exist.")
    values = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    return _build(RecipeConfig, values, path.name)


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
    """The config as YAML-ready sections that `load_recipe_config` reads back (stage options flattened)."""
    values = {}
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if isinstance(section, TrainStageArgs):
            own = {k: v for k, v in dataclasses.asdict(section).items() if k != "training_args"}
            values[f.name] = own | section.training_args
        else:
            values[f.name] = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return values
