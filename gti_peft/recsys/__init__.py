"""Generative recommendation: semantic IDs, sequence data, ranking metrics (and constrained decoding)."""

from .beam_search import constrained_beam_search, generate_baseline
from .data import (
    RECOMMENDATION_PROMPT,
    LeaveOneOutSplit,
    SequenceExample,
    UserHistories,
    grounding_pairs,
    item_texts,
    leave_one_out,
    load_interactions,
    load_items,
    load_movielens_100k,
    popularity_ranking,
    recommendation_messages,
    sequence_chunks,
    training_examples,
    user_histories,
)
from .metrics import (
    evaluate_rankings,
    format_metrics_table,
    ndcg_at_k,
    paired_bootstrap,
    per_user_hits,
    recall_at_k,
    target_ranks,
)
from .quantizers import METHODS as SEMANTIC_ID_METHODS
from .quantizers import balanced_residual_kmeans, rqvae
from .recommender import PromptSettings, Recommendation, Recommender
from .semantic_ids import DEFAULT_ENCODER, SemanticIDs, embed_texts, residual_kmeans
from .trie import ItemTrie

__all__ = [
    "ItemTrie",
    "PromptSettings",
    "Recommendation",
    "Recommender",
    "constrained_beam_search",
    "generate_baseline",
    "DEFAULT_ENCODER",
    "RECOMMENDATION_PROMPT",
    "LeaveOneOutSplit",
    "SemanticIDs",
    "SequenceExample",
    "UserHistories",
    "embed_texts",
    "evaluate_rankings",
    "format_metrics_table",
    "grounding_pairs",
    "item_texts",
    "leave_one_out",
    "load_interactions",
    "load_items",
    "load_movielens_100k",
    "ndcg_at_k",
    "paired_bootstrap",
    "per_user_hits",
    "popularity_ranking",
    "recall_at_k",
    "recommendation_messages",
    "residual_kmeans",
    "sequence_chunks",
    "balanced_residual_kmeans",
    "rqvae",
    "SEMANTIC_ID_METHODS",
    "target_ranks",
    "training_examples",
    "user_histories",
]
