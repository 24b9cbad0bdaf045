"""Residual quantizers behind semantic IDs: residual k-means, balanced residual k-means, and RQ-VAE.

Each builder returns `(codes [n, levels], codebooks, projection)`. `projection` is the RQ-VAE encoder
(`[(weight, bias), ...]` with ReLU between layers) that maps an embedding into the codebooks' space, or
`None` when the codebooks live in the embedding space. New items are coded with :func:`assign_codes` from the
saved codebooks alone: nothing is re-clustered.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

METHODS = ("residual_kmeans", "balanced", "rqvae")
Projection = list[tuple[torch.Tensor, torch.Tensor]]


def check_quantizer_args(n_items: int, levels: int, codes_per_level: int, method: str = "residual_kmeans") -> None:
    """Refuse settings no builder can honour, before any model is loaded."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if n_items < 1:
        raise ValueError("No items given: semantic IDs need at least one item.")
    if levels < 1:
        raise ValueError(f"`levels` must be >= 1, got {levels}; the usual choice is 3 or 4.")
    if codes_per_level < 2:
        raise ValueError(f"`codes_per_level` must be >= 2, got {codes_per_level}; use e.g. codes_per_level=32.")
    if codes_per_level > n_items:
        raise ValueError(
            f"`codes_per_level`={codes_per_level} exceeds the number of items ({n_items}): k-means cannot "
            f"make more clusters than points; use codes_per_level <= {n_items}."
        )


def _as_numpy(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    x = embeddings.detach().cpu().double().numpy() if torch.is_tensor(embeddings) else np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"`embeddings` must be 2-D [n_items, dim], got shape {tuple(x.shape)}.")
    return x.astype(np.float64, copy=True)


def _residual_clustering(x: np.ndarray, levels: int, make_clusterer) -> tuple[torch.LongTensor, list[torch.Tensor]]:
    from sklearn.exceptions import ConvergenceWarning

    residual = x
    codes = np.empty((x.shape[0], levels), dtype=np.int64)
    codebooks = []
    for level in range(levels):
        clusterer = make_clusterer()
        with warnings.catch_warnings():
            # deep levels of near-duplicate items can have fewer distinct residuals than codes: harmless
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = np.asarray(clusterer.fit_predict(residual), dtype=np.int64)
        codes[:, level] = labels
        residual = residual - clusterer.cluster_centers_[labels]
        codebooks.append(torch.from_numpy(np.asarray(clusterer.cluster_centers_)).float())
    return torch.from_numpy(codes), codebooks


def residual_kmeans(
    embeddings: torch.Tensor | np.ndarray,
    levels: int = 3,
    codes_per_level: int = 32,
    seed: int = 0,
    n_init: int = 10,
) -> tuple[torch.LongTensor, list[torch.Tensor]]:
    """Residual quantization with scikit-learn k-means, level by level.

    Level 0 clusters the embeddings; level `l` clusters what remains after subtracting the centroids
    chosen at levels `< l`. Returns `codes` `[n, levels]` and one `[codes_per_level, d]` codebook
    per level. Deterministic for a given `seed`.
    """
    from sklearn.cluster import KMeans

    x = _as_numpy(embeddings)
    check_quantizer_args(x.shape[0], levels, codes_per_level)
    return _residual_clustering(
        x, levels, lambda: KMeans(n_clusters=codes_per_level, n_init=n_init, random_state=seed)
    )


def balanced_residual_kmeans(
    embeddings: torch.Tensor | np.ndarray,
    levels: int = 3,
    codes_per_level: int = 32,
    seed: int = 0,
    n_init: int = 3,
) -> tuple[torch.LongTensor, list[torch.Tensor]]:
    """Residual k-means whose clusters hold at most `ceil(n / codes_per_level)` items at every level
    (`k-means-constrained`, a min-cost-flow assignment), so no code is crowded and none left empty."""
    try:
        from k_means_constrained import KMeansConstrained
    except ImportError as error:
        raise ImportError(
            "method='balanced' needs k-means-constrained: pip install k-means-constrained (or use "
            "method='residual_kmeans')."
        ) from error
    x = _as_numpy(embeddings)
    check_quantizer_args(x.shape[0], levels, codes_per_level)
    size_max = -(-x.shape[0] // codes_per_level)
    return _residual_clustering(
        x,
        levels,
        lambda: KMeansConstrained(n_clusters=codes_per_level, size_max=size_max, n_init=n_init, random_state=seed),
    )


def project(embeddings: torch.Tensor, projection: Projection | None) -> torch.Tensor:
    """Map embeddings into the codebooks' space (identity without a projection)."""
    x = torch.as_tensor(embeddings).float()
    if projection is None:
        return x
    for index, (weight, bias) in enumerate(projection):
        x = torch.nn.functional.linear(x, weight.float(), bias.float())
        if index < len(projection) - 1:
            x = torch.relu(x)
    return x


def assign_codes(
    embeddings: torch.Tensor, codebooks: list[torch.Tensor], projection: Projection | None = None
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Nearest codebook row at each level of the residual: the codes of items the codebooks never saw.

    Returns `codes [n, levels]` and the distances `[n, codes]` at the LAST level (to pick the next-nearest
    code when an ID is taken).
    """
    residual = project(embeddings, projection).double()
    codes, distances = [], None
    for book in codebooks:
        distances = torch.cdist(residual, book.double())
        chosen = distances.argmin(dim=1)
        codes.append(chosen)
        residual = residual - book.double()[chosen]
    return torch.stack(codes, dim=1), distances


def rqvae(
    embeddings: torch.Tensor | np.ndarray,
    levels: int = 3,
    codes_per_level: int = 32,
    seed: int = 0,
    latent_dim: int = 32,
    hidden_dim: int = 256,
    steps: int = 500,
    learning_rate: float = 1e-3,
) -> tuple[torch.LongTensor, list[torch.Tensor], Projection]:
    """RQ-VAE (as in TIGER): an MLP encoder, vector-quantize-pytorch's `ResidualVQ` (k-means initialised
    codebooks, EMA updates, dead codes re-seeded) and an MLP decoder, trained full-batch on reconstruction plus
    commitment loss. Deterministic for a given `seed` on CPU."""
    try:
        from vector_quantize_pytorch import ResidualVQ
    except ImportError as error:
        raise ImportError(
            "method='rqvae' needs vector-quantize-pytorch: pip install vector-quantize-pytorch (or use "
            "method='residual_kmeans')."
        ) from error
    x = torch.from_numpy(_as_numpy(embeddings)).float()
    check_quantizer_args(x.shape[0], levels, codes_per_level)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], hidden_dim), torch.nn.ReLU(), torch.nn.Linear(hidden_dim, latent_dim)
        )
        decoder = torch.nn.Sequential(
            torch.nn.Linear(latent_dim, hidden_dim), torch.nn.ReLU(), torch.nn.Linear(hidden_dim, x.shape[1])
        )
        quantizer = ResidualVQ(
            dim=latent_dim,
            num_quantizers=levels,
            codebook_size=codes_per_level,
            kmeans_init=True,
            kmeans_iters=10,
            threshold_ema_dead_code=2,
            decay=0.9,
        )
        parameters = [*encoder.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=learning_rate)
        for _ in range(steps):
            quantized, _, commitment = quantizer(encoder(x).unsqueeze(0))
            loss = torch.nn.functional.mse_loss(decoder(quantized.squeeze(0)), x) + commitment.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    projection = [(encoder[i].weight.detach().clone(), encoder[i].bias.detach().clone()) for i in (0, 2)]
    codebooks = [book.detach().clone().float() for book in quantizer.codebooks]
    with torch.no_grad():
        codes, _ = assign_codes(x, codebooks, projection)
    return codes, codebooks, projection
