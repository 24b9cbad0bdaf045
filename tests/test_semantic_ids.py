from __future__ import annotations

import re

import pytest
import torch

from gti_peft.recsys.semantic_ids import SemanticIDs, embed_texts, residual_kmeans

TOKEN = re.compile(r"<([a-z])_(\d+)>")


def _embeddings(n: int = 60, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _ids(n: int) -> list[str]:
    return [f"item{i}" for i in range(n)]


def test_codes_shape_range_and_determinism():
    emb = _embeddings()
    codes, books = residual_kmeans(emb, levels=3, codes_per_level=4, seed=0)
    assert codes.shape == (60, 3) and codes.dtype == torch.long
    assert [tuple(b.shape) for b in books] == [(4, 16)] * 3
    assert codes.min() >= 0 and codes.max() < 4
    again, books_again = residual_kmeans(emb, levels=3, codes_per_level=4, seed=0)
    assert torch.equal(codes, again) and all(torch.equal(a, b) for a, b in zip(books, books_again))
    # the residual structure: the level-0 codebook row of each item is its nearest level-0 centroid
    assert torch.equal(torch.cdist(emb, books[0]).argmin(1), codes[:, 0])


def test_sids_unique_format_and_vocabulary():
    sids = SemanticIDs.from_embeddings(_ids(60), _embeddings(), levels=3, codes_per_level=4)
    strings = [sids.tokens_for(i) for i in sids.item_ids]
    assert len(set(strings)) == 60  # unique, whether or not a disambiguation level was needed
    n_levels = len(sids.level_names)
    for s in strings:
        parsed = TOKEN.findall(s)
        assert "".join(f"<{a}_{b}>" for a, b in parsed) == s  # nothing but tokens
        assert [a for a, _ in parsed] == sids.level_names == list("abcd")[:n_levels]
    assert sids.item_for(strings[7]) == "item7" and sids.item_for("<a_0>") is None
    vocab = sids.vocabulary()
    assert vocab[:4] == ["<a_0>", "<a_1>", "<a_2>", "<a_3>"] and vocab[4] == "<b_0>"
    assert len(vocab) == 3 * 4 + (sids.level_sizes[3] if n_levels == 4 else 0) == len(set(vocab))
    assert {t for s in strings for t in re.findall(r"<[^>]+>", s)} <= set(vocab)
    assert sids.codebook_for_tokens().shape == (len(sids.vocabulary(include_disambiguation=False)), 16)
    # rows follow the vocabulary's order: token <b_2> -> row 2 of the level-b codebook
    assert torch.equal(sids.codebook_for_tokens()[vocab.index("<b_2>")], sids.codebooks[1][2])


def test_vocabulary_includes_unused_codes():
    # 4 items, 4 codes: level b clusters 4 zero residuals -> only code(s) of one cluster are used
    emb = torch.eye(4)
    sids = SemanticIDs.from_embeddings(_ids(4), emb, levels=2, codes_per_level=4)
    used_b = {c for c in sids.codes[:, 1].tolist()}
    assert len(used_b) < 4
    assert sids.vocabulary() == [f"<{lv}_{c}>" for lv in "ab" for c in range(4)]


def test_collisions_get_a_disambiguation_level():
    emb = _embeddings(20)
    emb[5] = emb[3]  # planted duplicates: items 3, 5 and 9 have identical embeddings
    emb[9] = emb[3]
    sids = SemanticIDs.from_embeddings(_ids(20), emb, levels=2, codes_per_level=4)
    assert torch.equal(sids.codes[3], sids.codes[5]) and torch.equal(sids.codes[3], sids.codes[9])
    assert sids.level_names[-1] == "c" and sids.full_codes.shape == (20, 3)
    # k counts the items sharing a prefix in item order; the level has as many tokens as the biggest group
    assert [sids.full_codes[i, -1].item() for i in (3, 5, 9)] == [0, 1, 2]
    assert sids.level_sizes[-1] == 3 and sids.vocabulary()[-3:] == ["<c_0>", "<c_1>", "<c_2>"]
    assert sids.n_collisions >= 2
    assert sids.tokens_for("item5").endswith("<c_1>") and sids.tokens_for("item9").endswith("<c_2>")
    strings = list(sids.to_dict().values())
    assert len(set(strings)) == 20 and all(len(TOKEN.findall(s)) == 3 for s in strings)


def test_no_collisions_no_extra_level():
    sids = SemanticIDs.from_embeddings(_ids(4), torch.eye(4), levels=1, codes_per_level=4)
    assert sids.level_names == ["a"] and sids.n_collisions == 0 and len(sids.vocabulary()) == 4


def test_seed_changes_codes_and_same_seed_repeats():
    emb = _embeddings(80)
    a = SemanticIDs.from_embeddings(_ids(80), emb, codes_per_level=8, seed=0)
    b = SemanticIDs.from_embeddings(_ids(80), emb, codes_per_level=8, seed=0)
    c = SemanticIDs.from_embeddings(_ids(80), emb, codes_per_level=8, seed=1)
    assert a == b and a.to_dict() == b.to_dict()
    assert a != c  # k-means++ seeding differs, so at least the codebooks do


@pytest.mark.parametrize("name", ["sids.safetensors", "folder"])
def test_save_load_round_trip(tmp_path, name):
    emb = _embeddings(30)
    emb[4] = emb[2]
    sids = SemanticIDs.from_embeddings(_ids(30), emb, levels=2, codes_per_level=3)
    path = sids.save(tmp_path / name)
    assert path.is_file() and path.suffix == ".safetensors" and len(list(path.parent.iterdir())) == 1
    loaded = SemanticIDs.load(tmp_path / name)
    assert loaded == sids
    assert loaded.to_dict() == sids.to_dict() and loaded.vocabulary() == sids.vocabulary()
    assert torch.equal(loaded.codebook_for_tokens(), sids.codebook_for_tokens())


def test_load_rejects_other_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a semantic-IDs file"):
        SemanticIDs.load(tmp_path / "other.safetensors")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"item_ids": [], "texts": []}, "`item_ids` is empty"),
        ({"item_ids": ["1", "2", "1"], "texts": ["x", "y", "z"]}, r"duplicates, e.g. \['1'\]"),
        ({"codes_per_level": 1}, "`codes_per_level` must be >= 2, got 1"),
        ({"codes_per_level": 5}, r"`codes_per_level`=5 exceeds the number of items \(3\).*<= 3"),
        ({"levels": 0}, "`levels` must be >= 1, got 0"),
        ({"texts": ["x"]}, "3 `item_ids` but 1 `texts`"),
    ],
)
def test_build_validates_before_loading_a_model(kwargs, match):
    args = {"item_ids": ["1", "2", "3"], "texts": ["x", "y", "z"], "encoder": "/nonexistent/encoder"} | kwargs
    with pytest.raises(ValueError, match=match):  # an OSError would mean the encoder was loaded first
        SemanticIDs.build(**args)


def test_embed_texts_validates_before_loading():
    with pytest.raises(ValueError, match="non-empty list of strings"):
        embed_texts(["ok", 3], encoder="/nonexistent/encoder")


def test_real_minilm_embeddings_small():
    texts = [f"A {g} movie number {i}" for g in ("horror", "comedy", "romantic drama", "space") for i in range(6)]
    emb = embed_texts(texts, encoder="offline:all-minilm-l6-v2", batch_size=7, show_progress=False)
    assert emb.shape == (24, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(24), atol=1e-5)
    # batching and length-sorting do not change a text's vector
    single = embed_texts(texts[5:6], encoder="offline:all-minilm-l6-v2", show_progress=False)
    assert torch.allclose(single[0], emb[5], atol=1e-5)
    # same genre closer than different genre
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 6] and sims[6, 7] > sims[6, 18]
    sids = SemanticIDs.from_embeddings(list(map(str, range(24))), emb, levels=2, codes_per_level=4)
    assert len(set(sids.to_dict().values())) == 24
    # the four genres land in four different first-level codes
    assert len({sids.codes[i * 6, 0].item() for i in range(4)}) == 4


def test_recipe_semantic_ids_method_is_validated(tmp_path):
    from gti_peft.recipe import load_recipe_config

    path = tmp_path / "r.yaml"
    path.write_text("semantic_ids:\n  method: rqvae\n")
    assert load_recipe_config(path).semantic_ids.method == "rqvae"
    path.write_text("semantic_ids:\n  method: kmeans++\n")
    with pytest.raises(ValueError, match=r"semantic_ids.method must be one of .*'balanced'.*got 'kmeans\+\+'"):
        load_recipe_config(path)


def test_a_version_1_file_loads_as_residual_kmeans_without_encoder(tmp_path):
    import json

    from safetensors.torch import save_file

    sids = SemanticIDs.from_embeddings(_ids(10), _embeddings(10), levels=2, codes_per_level=3)
    meta = {"format": "gti_peft.semantic_ids", "version": 1, "item_ids": sids.item_ids}
    meta["level_names"] = sids.level_names
    tensors = {"codes": sids.codes} | {f"codebook_{i}": b for i, b in enumerate(sids.codebooks)}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"gti_peft.semantic_ids": json.dumps(meta)})
    old = SemanticIDs.load(tmp_path / "old.safetensors")
    assert old.method == "residual_kmeans" and old.encoder is None and old.to_dict() == sids.to_dict()


# ---- collaborative item vectors (semantic_ids.embedding) ---------------------------------------------------------
def _co_watched(n_items: int = 12) -> dict[str, list[str]]:
    """Two audiences: even users watch items 0-5, odd users items 6-11 (training sequences)."""
    return {f"u{u}": [f"item{i}" for i in (range(0, 6) if u % 2 == 0 else range(6, 12))] for u in range(10)}


def test_collaborative_vectors_put_items_of_the_same_audience_together():
    from gti_peft.recsys.collaborative import collaborative_embeddings

    vectors, cold = collaborative_embeddings(_ids(12), _co_watched(), dim=4)
    assert not cold and torch.allclose(vectors.norm(dim=-1), torch.ones(12))
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.99 and similarity[6, 7] > 0.99 and similarity[0, 6] < 0.1


def test_items_without_training_interactions_get_their_text_neighbours_vector_and_a_warning():
    from gti_peft.recsys.collaborative import item_embeddings

    text = 0.1 * _embeddings(13, 8)
    text[:6, 0] += 1.0  # items 0-5 read alike, items 6-11 alike, and the cold item 12 reads like items 0-5
    text[6:12, 1] += 1.0
    text[12] = torch.nn.functional.one_hot(torch.tensor(0), 8).float()
    text = torch.nn.functional.normalize(text, dim=-1)
    with pytest.warns(UserWarning, match=r"1 of 13 items have no training interactions.*item12.*nearest items"):
        vectors = item_embeddings("collaborative", text, _ids(13), _co_watched(), dim=4)
    similarity = vectors[12] @ vectors[:12].T  # its 10 text neighbours: items 0-5 and 4 of the others
    assert similarity[:6].min() > similarity[6:].max()
    assert torch.isclose(vectors[12].norm(), torch.tensor(1.0))
    with pytest.warns(UserWarning, match="1 of 13 items"):
        both = item_embeddings("text+collaborative", text, _ids(13), _co_watched(), dim=4)
    assert both.shape == (13, 8 + 4) and torch.allclose(both.norm(dim=-1), torch.ones(13))
    with pytest.raises(ValueError, match=r"semantic_ids.embedding must be one of \['text', 'collaborative'"):
        item_embeddings("graph", text, _ids(13), _co_watched())


def test_recipe_ids_never_see_validation_or_test_interactions(tiny_run_files, tmp_path):
    """The recipe's collaborative IDs come from the training part of the split only: changing every user's last
    two items (their validation and test targets) changes nothing, changing a training interaction does."""
    import csv

    from accelerate import PartialState
    from conftest import tiny_yaml

    from gti_peft.recipe import load_recipe_config
    from gti_peft.recipe.data import load_data, semantic_ids_stage

    with open(tiny_run_files / "interactions.csv") as f:
        rows = list(csv.DictReader(f))
    by_user: dict[str, list[dict]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)

    def ids_for(name: str, change) -> torch.Tensor:
        log = tmp_path / f"{name}.csv"
        with open(log, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["user_id", "item_id", "timestamp"])
            writer.writeheader()
            for user_rows in by_user.values():
                for position, row in enumerate(user_rows):
                    writer.writerow({**row, "item_id": change(position, len(user_rows), row["item_id"])})
        overrides = [f"data.interactions_path={log}", "semantic_ids.embedding=collaborative"]
        config = load_recipe_config(tiny_yaml(tiny_run_files, tmp_path / name), overrides)
        data = load_data(config)
        return semantic_ids_stage(config, data, tmp_path / name, PartialState()).codes

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # items seen only as targets have no training interactions
        same = ids_for("same", lambda p, n, item: item)
        targets_changed = ids_for("targets", lambda p, n, item: "m0" if p >= n - 2 else item)
        train_changed = ids_for("train", lambda p, n, item: "m0" if p == 0 else item)
    assert torch.equal(same, targets_changed)
    assert not torch.equal(same, train_changed)


def test_collaborative_ids_keep_their_items_vectors_through_save_and_load(tmp_path):
    vectors, collaborative = _embeddings(12, 8), _embeddings(12, 4, seed=1)
    sids = SemanticIDs.from_embeddings(
        _ids(12), vectors, levels=2, codes_per_level=3, embedding="collaborative", collaborative=collaborative
    )
    loaded = SemanticIDs.load(sids.save(tmp_path))
    assert loaded == sids and loaded.embedding == "collaborative" and torch.equal(loaded.collaborative, collaborative)
    assert loaded != SemanticIDs.from_embeddings(_ids(12), vectors, levels=2, codes_per_level=3)  # text IDs differ
    with pytest.raises(ValueError, match=r"`collaborative` must hold one vector per item \(12\).*got None"):
        SemanticIDs.from_embeddings(_ids(12), vectors, levels=2, codes_per_level=3, embedding="collaborative")
    with pytest.raises(ValueError, match=r"'collaborative' IDs: pass `collaborative` vectors for the new items"):
        sids.extend(["new"], _embeddings(1, 8, seed=2))
    grown = sids.extend(["new"], _embeddings(1, 8, seed=2), _embeddings(1, 4, seed=3))
    assert grown.collaborative.shape == (13, 4) and torch.equal(grown.collaborative[:12], collaborative)
