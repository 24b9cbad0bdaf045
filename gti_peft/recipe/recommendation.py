"""The recommendation task: a catalog's semantic IDs, next-item examples, ranking by constrained beam search."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from ..recsys import SemanticIDs, format_metrics_table, grounding_pairs
from ..recsys.recommender import Recommender
from .config import RecipeConfig
from .data import (
    SID_FILE,
    RecData,
    check_example_length,
    check_grounding_mix,
    finetune_dataset,
    load_data,
    semantic_ids_stage,
)
from .evaluation import check_history_exclusion, evaluate_next_item, prompt_settings, write_recommender_files
from .model import build_model
from .outputs import GROUNDED_FOLDER, write_results
from .task import Task


class RecommendationTask(Task):
    """Semantic-ID tokens for a catalog's items, grounded on their titles and descriptions, fine-tuned on what users
    watched next, evaluated by constrained beam search against popularity."""

    name = "recommendation"
    config: RecipeConfig

    def prepare(self, out: Path, state: PartialState) -> None:
        config = self.config
        self.data = load_data(config)
        check_grounding_mix(config, self.data)
        check_evaluation(config, self.data)  # a user with too few items left to rank: refused before training
        self.sids = semantic_ids_stage(config, self.data, out, state)
        check_example_length(config, self.sids)  # before any weights are loaded

    def new_tokens(self) -> list[str]:
        return self.sids.vocabulary()

    def build_model(self, resume_from: Path | None):
        return build_model(self.config, self.sids, self.data, resume_from)

    def reference(self, model, tokenizer):
        return self.sids.codebook_for_tokens()  # the code tokens come first in sids.vocabulary()

    def grounding_pairs(self) -> list[dict]:
        return grounding_pairs(self.data.items, self.sids)

    def finetune_dataset(self, tokenizer):
        return finetune_dataset(self.config, tokenizer, self.sids, self.data)

    def saved_with_adapter(self, out: Path) -> list[Path]:
        return [out / SID_FILE, *write_recommender_files(self.config, self.data.items, out)]  # for Recommender

    def evaluate(self, model, tokenizer) -> dict:
        return evaluate_stage(self.config, model, tokenizer, self.sids, self.data)

    def write_results(self, model, tokenizer, results: dict, out: Path) -> None:
        write_results(self.config, model, tokenizer, results, out, out / "adapter")

    def summary(self, results: dict) -> str | None:
        """The model against popularity on the evaluated users, and the wall time."""
        if "table" not in results:
            return None
        model, popular = results["metrics"]["model"], results["metrics"]["popularity"]
        key = "recall@10" if "recall@10" in model else next(k for k in model if k.startswith("recall@"))
        ratio = model[key] / popular[key] if popular[key] else float("inf")
        stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results["timings_s"].items())
        return (
            f"{results['table']}\n\n{key} {model[key]:.4f} vs popularity {popular[key]:.4f} "
            f"({ratio:.2f}x) on {model['n_users']} test users. Wall time {results['wall_s'] / 60:.1f} min ({stages})."
        )


def evaluation_examples(config: RecipeConfig, data: RecData) -> list:
    """The evaluated users' examples: the first `evaluation.max_users` (all by default) of the chosen split."""
    args = config.evaluation
    examples = data.split.test if args.split == "test" else data.split.valid
    return examples[: args.max_users] if args.max_users else examples


def check_evaluation(config: RecipeConfig, data: RecData) -> None:
    """With `evaluation.exclude_history`, refuse (before anything trains) a user with fewer than `top_k` items left."""
    if "evaluate" in config.output.stages and config.evaluation.exclude_history:
        examples = evaluation_examples(config, data)
        check_history_exclusion(examples, data.split.train, len(data.items), config.evaluation.top_k)


def grounding_label(config: RecipeConfig) -> str:
    """How the evaluated rows started: grounded when the run saved a `grounded/` folder, in this call or an earlier
    one (an evaluate-only rerun loads the same grounded-then-fine-tuned adapter)."""
    if not (Path(config.output.output_dir) / GROUNDED_FOLDER).exists():
        return ", no grounding"
    steps = config.grounding.max_steps
    return f" + GTI ({steps} grounding steps)" if steps else " + GTI"


def evaluate_stage(config: RecipeConfig, model, tokenizer, sids: SemanticIDs, data: RecData) -> dict:
    """Next-item ranking of the first `evaluation.max_users` users (all by default) against popularity."""
    args = config.evaluation
    examples = evaluation_examples(config, data)
    titles = dict(zip(data.items["item"], data.items["title"]))
    recommender = Recommender(model, tokenizer, sids, prompt_settings(config), titles)  # as a saved run ranks
    prompts = [recommender.prompt_ids(ex["history"]) for ex in examples]
    tokens = sids.token_lists()
    metrics = evaluate_next_item(
        model, tokenizer, prompts, examples, tokens, data.split.train, args, len(data.items), recommender
    )
    targets = {ex["user"]: ex["target"] for ex in examples}
    label = f"{config.adapter.init} init" + grounding_label(config)
    return {
        "metrics": {"model": metrics["model"], "popularity": metrics["popularity"]},
        "ranking": metrics["ranking"],
        "table": format_metrics_table({"popularity": metrics["popularity"], label: metrics["model"]}),
        "rankings": {user: {"target": targets[user], "ranking": r} for user, r in metrics["rankings"].items()},
    }
