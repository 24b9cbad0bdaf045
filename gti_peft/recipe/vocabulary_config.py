"""The vocabulary recipe's YAML sections (model, adapter, stages and output are the recommendation recipe's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..method.config import GTIConfig
from ..training.grounding_config import GroundingConfig
from ..training.templates import TEXT_TEMPLATES
from .config import SECTION_BUILDERS, STAGES, ModelArgs, OutputArgs, build_config, settle_stages
from .finetune_config import FinetuneConfig
from .parsing import build_adapter, build_stage

# the vocabulary recipe's grounding prompts take their length from data.max_length (its corpus has no prompt style)
BUILDERS = SECTION_BUILDERS | {
    GroundingConfig: lambda values, where: build_stage(
        GroundingConfig, values, where, {"max_length": "data.max_length"}
    )
}

SOURCES = ("files", "wordnet")


@dataclass
class VocabularyDataArgs:
    source: str = field(default="files", metadata={"help": "'files' (tokens + corpus below) or 'wordnet' (demo)."})
    tokens: str | None = field(
        default=None, metadata={"help": "(token, text) table: CSV/JSON/Parquet file or a `datasets` id."}
    )
    token_column: str = "token"
    text_column: str = "text"
    corpus: str | list[str] | None = field(
        default=None, metadata={"help": "Text using the tokens: .txt/CSV/JSON/Parquet file(s) or a `datasets` id."}
    )
    corpus_column: str = field(default="text", metadata={"help": "Column of the corpus rows (a .txt file: lines)."})
    split: str = field(default="train", metadata={"help": "Split of a `datasets` id."})
    wordnet_words: int = field(default=256, metadata={"help": "source=wordnet: how many rare words become tokens."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Corpus share held out for evaluation (seeded)."})
    max_length: int = 128
    seed: int = 0

    @property
    def corpus_sources(self) -> list[str]:
        return [self.corpus] if isinstance(self.corpus, str) else list(self.corpus or [])


@dataclass
class VocabularyEvalArgs:
    batch_size: int = 16
    compare_mean_start: bool = field(
        default=True, metadata={"help": "Also fine-tune a mean start (no grounding) with the same steps and seed."}
    )
    bootstrap_samples: int = 2000
    bf16: bool = False


@dataclass
class VocabularyConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: VocabularyDataArgs = field(default_factory=VocabularyDataArgs)
    adapter: GTIConfig = field(default_factory=lambda: build_adapter({}, "adapter"))
    grounding: GroundingConfig = field(default_factory=lambda: build_stage(GroundingConfig, {}, "grounding"))
    finetune: FinetuneConfig = field(default_factory=lambda: build_stage(FinetuneConfig, {}, "finetune"))
    evaluation: VocabularyEvalArgs = field(default_factory=VocabularyEvalArgs)
    output: OutputArgs = field(default_factory=lambda: OutputArgs(output_dir="outputs/vocabulary"))

    def __post_init__(self):
        data = self.data
        if data.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}.")
        if data.source == "files" and not (data.tokens and data.corpus_sources):
            raise ValueError("data.source='files' needs data.tokens (the token/text table) and data.corpus.")
        if not 0 < data.heldout_fraction < 1:
            raise ValueError(f"data.heldout_fraction must lie in (0, 1), got {data.heldout_fraction}.")
        unknown = [s for s in self.output.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"output.stages has unknown stage(s) {unknown}; choose from {list(STAGES)}.")
        names = {t.name for t in TEXT_TEMPLATES}  # the pairs carry one `text`: title/description templates never apply
        bad = [t for t in (self.grounding.templates or []) if t not in names]
        if bad:
            raise ValueError(
                f"grounding.templates names {bad}, which need titles or descriptions; (token, text) pairs take "
                f"{sorted(names)}."
            )
        if self.finetune.grounding_mix:
            raise ValueError(
                "finetune.grounding_mix is a recommendation-recipe key; the vocabulary recipe has no mix."
            )
        settle_stages(self, max_length=data.max_length)

    @classmethod
    def from_dict(cls, values: dict, where: str) -> VocabularyConfig:
        """The config of parsed YAML sections (`where` names the source in errors)."""
        return build_vocabulary_config(values, where)


def build_vocabulary_config(values: dict, where: str) -> VocabularyConfig:
    """A `VocabularyConfig` from parsed YAML (unknown keys and wrong types name the key)."""
    return build_config(VocabularyConfig, values, where, BUILDERS)
