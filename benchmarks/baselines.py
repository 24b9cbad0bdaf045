"""Classical recommenders on the project's leave-one-out split, through the Cornac library (optional extra).

SASRec (sequential, self-attention) and BPR (matrix factorisation) are trained on `split.train` only (the
items before each user's valid and test targets) and rank the whole catalog for each example. As in the LLM
arms' constrained beam search, nothing is excluded from `rankings` (items of the user's history may be
recommended again); `rankings_unseen` follows the usual RecBole/Cornac convention instead (history excluded).

RecBole 1.2.1 is not used: it cannot run on NumPy 2 (see the README, "Classical baselines").
"""

from __future__ import annotations

import importlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from gti_peft.recsys.data import SequenceExample

BASELINE_PACKAGE = "cornac"
BASELINE_MIN_VERSION = "3.0.1"  # the first release with SASRec among Cornac's next-item models
BASELINE_INSTALL = 'pip install "gti-peft[baselines]"  (or: pip install "cornac>=3.0.1" "torch==2.13.0")'


def require_baseline_library():
    """The baseline library (Cornac) or an `ImportError` naming the package and its install line.

    Call it before anything trains: a missing or too old library must fail before hours of work, not after.
    """
    try:
        module = importlib.import_module(BASELINE_PACKAGE)
    except ImportError as error:
        raise ImportError(
            f"The classical baselines (SASRec, BPR) need the package `{BASELINE_PACKAGE}` "
            f">= {BASELINE_MIN_VERSION}, which is not installed: {BASELINE_INSTALL}."
        ) from error
    from packaging.version import Version

    version = getattr(module, "__version__", "0")
    if Version(version) < Version(BASELINE_MIN_VERSION):
        raise ImportError(
            f"The classical baselines need `{BASELINE_PACKAGE}` >= {BASELINE_MIN_VERSION} (SASRec), found "
            f"{version}: {BASELINE_INSTALL}."
        )
    return module


@dataclass
class SASRecConfig:
    """Cornac's SASRec; the epoch with the best validation score is kept (Cornac's `model_selection="best"`)."""

    embedding_dim: int = field(default=64, metadata={"help": "Item embedding / hidden size."})
    max_len: int = field(default=20, metadata={"help": "Most recent items the encoder reads."})
    num_blocks: int = field(default=2, metadata={"help": "Self-attention blocks."})
    num_heads: int = field(default=1, metadata={"help": "Attention heads per block."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout rate."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=512, metadata={"help": "Training (history, next item) pairs per step."})
    n_sample: int = field(default=2048, metadata={"help": "Sampled negatives per batch (0: in-batch only)."})
    loss: str = field(default="ce", metadata={"help": "Cornac loss name, e.g. 'ce' (softmax) or 'bpr'."})
    n_epochs: int = field(default=10, metadata={"help": "Training epochs (the best on validation is kept)."})
    val_every: int = field(default=1, metadata={"help": "Evaluate on the valid targets every this many epochs."})
    val_metric: str = field(default="ndcg", metadata={"help": "Validation metric: recall, ndcg, auc or mrr."})
    val_k: int = field(default=10, metadata={"help": "Cut-off of the validation metric."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and of the batch order."})
    verbose: bool = field(default=False, metadata={"help": "Show Cornac's progress bar (epochs, loss)."})

    def __post_init__(self):
        _check_positive(self, ("embedding_dim", "max_len", "num_blocks", "num_heads", "batch_size", "n_epochs"))
        _check_positive(self, ("val_every", "val_k"))
        if self.n_sample < 0:
            raise ValueError(f"`n_sample` must be >= 0 (0: in-batch negatives only), got {self.n_sample}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must lie in [0, 1), got {self.dropout}.")


@dataclass
class BPRConfig:
    """Cornac's BPR (single-threaded when seeded, so runs repeat exactly)."""

    factors: int = field(default=64, metadata={"help": "Latent dimension."})
    max_iter: int = field(default=200, metadata={"help": "SGD epochs."})
    learning_rate: float = field(default=0.01, metadata={"help": "SGD learning rate."})
    lambda_reg: float = field(default=0.01, metadata={"help": "L2 regularisation."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial factors and of the sampling."})

    def __post_init__(self):
        _check_positive(self, ("factors", "max_iter"))
        if self.learning_rate <= 0 or self.lambda_reg < 0:
            raise ValueError(
                f"Need learning_rate > 0 and lambda_reg >= 0, got {self.learning_rate} and {self.lambda_reg}."
            )


def _check_positive(config, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{type(config).__name__}.{name}` must be a positive integer, got {value!r}.")


@dataclass
class BaselineRun:
    """Rankings of one baseline, `{user: [item, ...]}` best first: `rankings` over the whole catalog,
    `rankings_unseen` without the items of the user's history; training seconds and the settings."""

    rankings: dict[str, list[str]]
    rankings_unseen: dict[str, list[str]]
    train_seconds: float
    settings: dict


def _rank_all(examples, item_ids: list[str], items: Mapping, scores_of, k: int) -> tuple[dict, dict]:
    rankings, unseen = {}, {}
    for ex in examples:
        scores, history = scores_of(ex), [items[i] for i in ex["history"]]
        rankings[ex["user"]] = [item_ids[j] for j in _top_k(scores, k, [])]
        unseen[ex["user"]] = [item_ids[j] for j in _top_k(scores, k, history)]
    return rankings, unseen


def _index_maps(train: Mapping[str, Sequence[str]], catalog: Sequence[str]) -> tuple[OrderedDict, OrderedDict]:
    """Cornac id maps covering every user and the WHOLE catalog (in catalog order), so that the models score
    all items, including those that never occur in training."""
    if not catalog:
        raise ValueError("`catalog` is empty: pass every item id that may be ranked.")
    items = OrderedDict((item, index) for index, item in enumerate(dict.fromkeys(catalog)))
    unknown = sorted({i for seq in train.values() for i in seq} - items.keys())
    if unknown:
        raise ValueError(f"`train` names {len(unknown)} items missing from `catalog`, e.g. {unknown[:5]}.")
    return OrderedDict((user, index) for index, user in enumerate(train)), items


def _top_k(scores: np.ndarray, k: int, banned: Sequence[int]) -> list[int]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")  # ties: catalog order
    if len(banned):
        order = order[~np.isin(order, list(banned))]
    return order[:k].tolist()


def _check_examples(examples: Sequence[SequenceExample], users: Mapping, catalog: Mapping, k: int) -> None:
    if k < 1:
        raise ValueError(f"`top_k` must be a positive integer, got {k}.")
    strangers = [ex["user"] for ex in examples if ex["user"] not in users]
    if strangers:
        raise ValueError(f"{len(strangers)} examples are for users absent from training, e.g. {strangers[:5]}.")
    unknown = [i for ex in examples for i in ex["history"] if i not in catalog]
    if unknown:
        raise ValueError(f"Example histories name items missing from `catalog`, e.g. {unknown[:5]}.")


def sasrec_rankings(
    train: Mapping[str, Sequence[str]],
    catalog: Sequence[str],
    examples: Sequence[SequenceExample],
    config: SASRecConfig | None = None,
    valid: Sequence[SequenceExample] | None = None,
    top_k: int = 20,
) -> BaselineRun:
    """Train Cornac's SASRec on the `train` sequences and rank `catalog` after each example's history.

    With `valid` (examples whose history is the user's train sequence), the epoch with the best validation
    score is kept. Each user's train sequence is one Cornac session, so Cornac never re-splits the data.
    """
    require_baseline_library()
    from cornac.data import SequentialDataset
    from cornac.models import SASRec

    config = config or SASRecConfig()
    users, items = _index_maps(train, catalog)
    _check_examples(examples, users, items, top_k)

    def sessions(sequences: Mapping[str, Sequence[str]]) -> SequentialDataset:
        rows = [(u, u, i, t) for u, seq in sequences.items() for t, i in enumerate(seq)]
        return SequentialDataset.build(rows, fmt="USIT", global_uid_map=users, global_iid_map=items)

    train_set = sessions(train)
    val_set = sessions({ex["user"]: [*ex["history"], ex["target"]] for ex in valid}) if valid else None
    model = SASRec(
        embedding_dim=config.embedding_dim,
        max_len=config.max_len,
        num_blocks=config.num_blocks,
        num_heads=config.num_heads,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        n_sample=config.n_sample,
        loss=config.loss,
        n_epochs=config.n_epochs,
        model_selection="best" if valid else "last",
        val_eval_every=config.val_every,
        val_metric=config.val_metric,
        val_k=config.val_k,
        seed=config.seed,
        verbose=config.verbose,
    )
    start = time.perf_counter()
    model.fit(train_set, val_set)
    seconds = time.perf_counter() - start

    def scores_of(ex):
        return model.score(users[ex["user"]], history_items=[items[i] for i in ex["history"]])

    rankings, unseen = _rank_all(examples, list(items), items, scores_of, top_k)
    settings = {"library": f"cornac {require_baseline_library().__version__}", **asdict(config)}
    return BaselineRun(rankings, unseen, seconds, settings | {"validated": bool(valid)})


def bpr_rankings(
    train: Mapping[str, Sequence[str]],
    catalog: Sequence[str],
    examples: Sequence[SequenceExample],
    config: BPRConfig | None = None,
    top_k: int = 20,
) -> BaselineRun:
    """Train Cornac's BPR on the (user, item) pairs of `train` and rank `catalog` for each example's user.

    BPR has no notion of order: a user's scores come from the factors learned on their train items, so items
    an example's history adds after `train` (the valid target, for test examples) only matter for
    `rankings_unseen`.
    """
    require_baseline_library()
    from cornac.data import Dataset
    from cornac.models import BPR

    config = config or BPRConfig()
    users, items = _index_maps(train, catalog)
    _check_examples(examples, users, items, top_k)
    rows = [(u, i, 1.0) for u, seq in train.items() for i in dict.fromkeys(seq)]
    train_set = Dataset.build(rows, fmt="UIR", global_uid_map=users, global_iid_map=items)
    model = BPR(
        k=config.factors,
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        lambda_reg=config.lambda_reg,
        num_threads=1,
        seed=config.seed,
    )
    start = time.perf_counter()
    model.fit(train_set)
    seconds = time.perf_counter() - start
    rankings, unseen = _rank_all(examples, list(items), items, lambda ex: model.score(users[ex["user"]]), top_k)
    settings = {"library": f"cornac {require_baseline_library().__version__}", **asdict(config)}
    return BaselineRun(rankings, unseen, seconds, settings)
