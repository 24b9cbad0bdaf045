"""Growing a trained catalog: extend_catalog on a tiny Llama with the real SmolLM2 tokenizer and MiniLM encoder."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import smollm2_tokenizer
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from gti_peft import GTIConfig, add_new_tokens
from gti_peft.assets.offline import MINILM
from gti_peft.cli.extend_catalog import main as extend_main
from gti_peft.recipe.evaluation import item_trie
from gti_peft.recsys import SemanticIDs, item_texts, load_items
from gti_peft.recsys.catalog import extend_catalog
from gti_peft.recsys.semantic_ids import embed_texts
from gti_peft.sharing.hub import save_for_hub, write_adapter_card

N_OLD = 20


@pytest.fixture(scope="module")
def trained(tiny_run_files, tmp_path_factory):
    """A saved GTI adapter over the first 20 items of the tiny catalog (2 levels x 4 codes, MiniLM encoder)."""
    root = tmp_path_factory.mktemp("catalog")
    items = load_items(tiny_run_files / "items.csv")
    ids, texts = item_texts(items)
    sids = SemanticIDs.build(ids[:N_OLD], texts[:N_OLD], MINILM, levels=2, codes_per_level=4)
    folder = _save_adapter(sids, tiny_run_files / "model", root)
    return {"folder": folder, "items": items, "sids": sids, "base": tiny_run_files / "model"}


def _save_adapter(sids: SemanticIDs, base_folder: Path, root: Path) -> Path:
    """A GTI adapter over `sids`' tokens on the tiny Llama, saved with its semantic IDs."""
    sids.save(root / "semantic_ids.safetensors")
    tokenizer = smollm2_tokenizer()
    new_ids = add_new_tokens(tokenizer, sids.vocabulary())
    base = LlamaForCausalLM.from_pretrained(base_folder)
    config = GTIConfig(new_token_ids=new_ids, r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    with torch.no_grad():  # trained-looking rows: distinct per token
        model.get_input_embeddings().gti_rows["default"].normal_(generator=torch.Generator().manual_seed(1))
    return save_for_hub(model, tokenizer, root / "adapter", extra_files=[root / "semantic_ids.safetensors"])


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _new_items(trained) -> Dataset:
    return trained["items"].select(range(N_OLD, len(trained["items"])))


def test_extension_keeps_old_ids_and_loads_like_any_adapter(trained, tmp_path):
    before = _digest(trained["folder"])
    report = extend_catalog(trained["folder"], _new_items(trained), tmp_path / "grown")
    assert _digest(trained["folder"]) == before  # the original is untouched
    grown = SemanticIDs.load(tmp_path / "grown")
    old = trained["sids"]
    assert grown.item_ids[:N_OLD] == old.item_ids and report.catalog_size == len(trained["items"])
    assert all(grown.tokens_for(i) == old.tokens_for(i) for i in old.item_ids)  # nothing re-clustered
    assert len(set(grown.to_dict().values())) == len(grown)  # every ID unique
    assert [torch.equal(a, b) for a, b in zip(grown.codebooks, old.codebooks)] == [True] * len(old.codebooks)
    # a token is added exactly for each ID token the old vocabulary lacks
    assert report.new_tokens == [t for t in grown.vocabulary() if t not in old.vocabulary()]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "grown")
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(trained["base"]), tmp_path / "grown")
    ids = model.peft_config["default"].new_token_ids
    assert ids == json.loads((trained["folder"] / "adapter_config.json").read_text())["new_token_ids"] + (
        report.new_token_ids
    )
    old_rows = load_file(trained["folder"] / "adapter_model.safetensors")
    rows = model.get_input_embeddings().gti_rows["default"].detach()
    assert torch.equal(rows[: len(ids) - len(report.new_token_ids)], next(iter(old_rows.values())))
    trie = item_trie(tokenizer, grown.token_lists())
    assert len(trie) == len(trained["items"]) and set(trie.token_ids) <= set(ids)
    assert report.semantic_ids == {item: grown.tokens_for(item) for item in report.new_items}


def _card_body(folder: Path) -> str:
    return (folder / "README.md").read_text().split("\n---\n", 1)[1]


def test_the_extended_folder_gets_its_own_card(trained, tmp_path):
    original = (trained["folder"] / "README.md").read_text()
    report = extend_catalog(trained["folder"], _new_items(trained), tmp_path / "grown")
    card = _card_body(tmp_path / "grown")
    n_ids = len(json.loads((tmp_path / "grown" / "adapter_config.json").read_text())["new_token_ids"])
    assert n_ids == len(trained["sids"].vocabulary()) + len(report.new_token_ids) > len(trained["sids"].vocabulary())
    assert f"**{n_ids} new tokens**" in card and f"**{n_ids - len(report.new_token_ids)} new tokens**" not in card
    assert f'from_pretrained("{tmp_path / "grown"}")' in card and str(trained["folder"]) + '"' not in card
    assert "catalog_extension" in card and f"| new_items | {len(report.new_items)} |" in card
    assert (trained["folder"] / "README.md").read_text() == original


def test_a_card_written_from_the_files_matches_the_one_save_for_hub_wrote(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in trained["folder"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "README.md").write_text("stale")
    write_adapter_card(copy, repo_id=str(trained["folder"]))
    assert (copy / "README.md").read_text() == (trained["folder"] / "README.md").read_text()


def test_a_collision_takes_the_next_free_disambiguation_code():
    emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    sids = SemanticIDs.from_embeddings([f"i{k}" for k in range(12)], emb, levels=1, codes_per_level=2)
    assert sids.has_disambiguation
    largest = sids.level_sizes[-1]
    group = sids.codes[:, 0].tolist().count(sids.codes[0, 0].item())
    grown = sids.extend(["new"], emb[:1])  # same embedding as item i0: same codes
    assert grown.full_codes[-1, :-1].tolist() == sids.codes[0].tolist()
    assert grown.full_codes[-1, -1].item() == group  # the next free code of its group
    assert grown.level_sizes[-1] == max(largest, group + 1)
    assert len(set(grown.to_dict().values())) == len(grown)
    assert all(grown.tokens_for(i) == sids.tokens_for(i) for i in sids.item_ids)


def test_without_a_disambiguation_level_a_collision_takes_the_nearest_free_code():
    sids = SemanticIDs.from_embeddings(["a", "b", "c"], torch.eye(3) * 4, levels=2, codes_per_level=3)
    assert not sids.has_disambiguation
    grown = sids.extend(["x"], torch.eye(3)[:1] * 4)
    assert len(set(grown.to_dict().values())) == 4 and not grown.has_disambiguation
    assert grown.vocabulary() == sids.vocabulary()  # no new token
    full = SemanticIDs.from_embeddings(["a", "b"], torch.eye(2), levels=1, codes_per_level=2)
    with pytest.raises(ValueError, match="Every last-level code under the prefix"):
        full.extend(["x"], torch.eye(2)[:1])


@pytest.mark.parametrize("method", ["residual_kmeans", "balanced", "rqvae"])
def test_every_builder_is_seeded_saved_and_codes_new_items_like_old(method, tmp_path):
    emb = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    ids = [f"i{k}" for k in range(40)]
    sids = SemanticIDs.from_embeddings(ids, emb, levels=2, codes_per_level=4, seed=3, method=method, encoder="enc")
    again = SemanticIDs.from_embeddings(ids, emb, levels=2, codes_per_level=4, seed=3, method=method, encoder="enc")
    assert sids == again and sids.to_dict() == again.to_dict()
    loaded = SemanticIDs.load(sids.save(tmp_path))
    assert loaded == sids and loaded.method == method and loaded.encoder == "enc"
    assert (loaded.projection is not None) == (method == "rqvae")
    if method == "balanced":  # capacity-constrained: no code holds more than ceil(40 / 4) items
        assert max(sids.codes[:, level].tolist().count(c) for level in (0, 1) for c in range(4)) <= 10
    else:  # the saved codebooks (and projection) reproduce every item's codes: new items are coded the same way
        assert torch.equal(loaded.assign(emb), sids.codes)


def _bad_item_tables(trained, tmp_path):
    new = _new_items(trained)
    no_title = tmp_path / "no_title.csv"
    no_title.write_text("item_id,description\nz1,A film.\n")
    empty_cells = tmp_path / "empty_cells.csv"  # z2's title and description cells are missing
    empty_cells.write_text("item_id,title,description\nz1,Heat,A heist.\nz2,,\nz3,  ,\n")
    textless = Dataset.from_dict({"item": ["z1", "z2"], "title": ["Heat", ""], "description": ["A heist.", " "]})
    return {
        "existing": (trained["items"].select(range(18, 22)), "already exist in the catalog"),
        "repeated": (new.select([0, 1, 1]), "more than once"),
        "columns": (str(no_title), r"no column\(s\) \['title'\]"),
        "textless": (textless, r"1 of `new_items` have no text .*\['z2'\]\. .*fill in a title or description"),
        "empty_cells": (str(empty_cells), r"2 of `new_items` have no text .*\['z2', 'z3'\]"),
    }


def _plain_lora_folder(trained, tmp_path) -> Path:
    """A plain PEFT LoRA adapter saved beside the semantic IDs and tokenizer of the GTI one."""
    folder = tmp_path / "plain-lora"
    base = LlamaForCausalLM.from_pretrained(trained["base"])
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    for path in trained["folder"].iterdir():
        if not path.name.startswith("adapter_"):
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


BAD_INPUTS = ["existing", "repeated", "columns", "textless", "empty_cells", "no_sids", "plain_lora"]
BAD_INPUTS += ["plain_lora_no_new_token", "encoder", "same_folder", "replay"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(trained, tmp_path, case):
    folder, out = trained["folder"], tmp_path / "out"
    kwargs, items = {}, _new_items(trained)
    tables = _bad_item_tables(trained, tmp_path)
    if case in tables:
        items, match = tables[case]
    elif case.startswith("plain_lora"):
        folder, match = _plain_lora_folder(trained, tmp_path), r"holds a LORA adapter, not a GTI adapter"
        if case == "plain_lora_no_new_token":
            items = items.select([1])  # m21 takes codes the catalog has: no new token, no new row
    elif case == "no_sids":
        bare = tmp_path / "bare"
        bare.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (bare / name).write_bytes((folder / name).read_bytes())
        folder, match = bare, "has no semantic_ids.safetensors"
    elif case == "encoder":
        kwargs, match = {"encoder": "sentence-transformers/all-mpnet-base-v2"}, "differs from 'offline:all-minilm"
    elif case == "same_folder":
        out, match = folder, "the original stays untouched"
    else:
        kwargs, match = {"ground_steps": 2}, "pass `replay=`"
    before = _digest(folder)
    with pytest.raises(ValueError, match=match):
        extend_catalog(folder, items, out, **kwargs)
    assert _digest(folder) == before
    assert case == "same_folder" or not out.exists()


def test_grounding_trains_rows_only_with_replay_and_saves_a_new_folder(trained, tmp_path):
    report = extend_catalog(
        trained["folder"],
        _new_items(trained),
        tmp_path / "grounded",
        ground_steps=2,
        replay=trained["items"].select(range(N_OLD)),
        base_model=str(trained["base"]),
        batch_size=4,
        max_length=96,
    )
    assert report.grounding["steps"] == 2 and report.grounding["pairs"] == 2 * (len(trained["items"]) - N_OLD)
    old, new = (load_file(f / "adapter_model.safetensors") for f in (trained["folder"], tmp_path / "grounded"))
    lora = [k for k in old if "lora_" in k]
    assert lora and all(torch.equal(old[k], new[k]) for k in lora)  # LoRA frozen
    key = next(k for k in old if k.endswith("gti_rows"))
    assert not torch.equal(old[key], new[key][: len(old[key])])  # rows moved
    config = json.loads((tmp_path / "grounded" / "adapter_config.json").read_text())
    assert config["grounding"]["steps"] == 2
    assert SemanticIDs.load(tmp_path / "grounded").item_ids[N_OLD:] == report.new_items
    n_ids = len(config["new_token_ids"])
    assert f"**{n_ids} new tokens**" in _card_body(tmp_path / "grounded")  # its own card, as without grounding


def test_cli_extends_from_files_and_prints_each_new_items_semantic_id(trained, tmp_path, capsys):
    new = tmp_path / "new.csv"
    rows = _new_items(trained)
    new.write_text(
        "item_id,title,description\n"
        + "".join(f'{i},"{t}","{d}"\n' for i, t, d in zip(rows["item"], rows["title"], rows["description"]))
    )
    extend_main(["--adapter", str(trained["folder"]), "--new-items", str(new), "--output", str(tmp_path / "cli")])
    grown = SemanticIDs.load(tmp_path / "cli")
    assert len(grown) == len(trained["items"]) and set(rows["item"]) <= set(grown.item_ids)
    printed = json.loads(capsys.readouterr().out)
    assert printed["semantic_ids"] == {item: grown.tokens_for(item) for item in rows["item"]}
    assert printed["n_new_items"] == len(rows) and printed["new_tokens"]


def test_the_trie_grows_in_place_and_keeps_tables_for_prefixes_only():
    from gti_peft.recsys import ItemTrie

    trie = ItemTrie({"a": [5, 7], "b": [5, 8]})
    trie.tensors()
    trie.extend({"c": [6, 1]})
    tokens, nodes, node_item = trie.tensors()
    assert trie.allowed(()) == [5, 6] and trie.item_for([6, 1]) == "c"
    assert tokens.shape[0] == 3 and node_item.shape[0] == 6  # root + 2 prefixes; 3 leaves only in node_item
    leaves = nodes[nodes >= 0]
    assert sorted(trie.items[i] for i in node_item[leaves[node_item[leaves] >= 0]].tolist()) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="share the token sequence"):
        trie.extend({"d": [9, 9], "e": [5, 7]})
    assert "d" not in trie and len(trie) == 3  # a refused batch adds nothing


def test_a_new_disambiguation_token_gets_one_new_row_at_its_level_mean(trained, tmp_path):
    old = trained["sids"]
    last = old.level_sizes[-1] - 1  # an item holding the last disambiguation code: its twin needs one more
    twin_of = next(i for i, row in zip(old.item_ids, old.full_codes.tolist()) if row[-1] == last)
    row = trained["items"].filter(lambda r: r["item"] == twin_of)[0]
    twin = Dataset.from_dict({"item": ["twin"], "title": [row["title"]], "description": [row["description"]]})
    report = extend_catalog(trained["folder"], twin, tmp_path / "twin")
    level = old.level_names[-1]
    assert report.new_tokens == [f"<{level}_{last + 1}>"] and report.disambiguated_items == 1
    grown = SemanticIDs.load(tmp_path / "twin")
    assert grown.tokens_for("twin") == grown.tokens_for(twin_of)[: -len(f"<{level}_{last}>")] + report.new_tokens[0]
    rows = load_file(tmp_path / "twin" / "adapter_model.safetensors")
    key = next(k for k in rows if k.endswith("gti_rows"))
    vocab = old.vocabulary()
    same_level = [i for i, t in enumerate(vocab) if t.startswith(f"<{level}_")]
    assert rows[key].shape[0] == len(vocab) + 1
    torch.testing.assert_close(rows[key][-1], rows[key][same_level].mean(0))


def test_grounding_tokenizes_prompts_as_the_adapter_was_grounded(trained, tmp_path):
    folder = tmp_path / "plain-adapter"
    folder.mkdir()
    for path in trained["folder"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text())
    config["grounding"] = {"steps": 5, "prompt_style": "plain"}  # as a recipe with plain prompts records it
    (folder / "adapter_config.json").write_text(json.dumps(config))
    replay = trained["items"].select(range(N_OLD))
    common = {"ground_steps": 1, "replay": replay, "base_model": str(trained["base"]), "batch_size": 4}
    extend_catalog(folder, _new_items(trained), tmp_path / "own", max_length=96, **common)
    own = json.loads((tmp_path / "own" / "adapter_config.json").read_text())
    assert own["grounding"]["prompt_style"] == "plain"
    extend_catalog(folder, _new_items(trained), tmp_path / "asked", prompt_style="chat", max_length=96, **common)
    asked = json.loads((tmp_path / "asked" / "adapter_config.json").read_text())
    assert asked["grounding"]["prompt_style"] == "chat"


@pytest.mark.parametrize(
    ("setting", "value", "match"),
    [
        ("prompt_style", "plane", "`prompt_style` must be one of .* got 'plane'"),
        ("batch_size", None, "`batch_size` must be a positive integer, got None"),
        ("max_length", 0, "`max_length` must be a positive integer, got 0"),
        ("learning_rate", -1.0, "`learning_rate` must be a positive number, got -1.0"),
    ],
)
def test_bad_grounding_settings_are_refused_before_anything_is_written(trained, tmp_path, setting, value, match):
    with pytest.raises(ValueError, match=match):
        extend_catalog(trained["folder"], _new_items(trained), tmp_path / "out", **{setting: value})
    assert not (tmp_path / "out").exists()


def _two_audiences(n_old: int) -> tuple[Dataset, dict[str, list[str]]]:
    """Horror and animation films alternating (`n_old` + 2 items), and training interactions of 10 fans of each
    kind over the first `n_old`: the collaborative vectors split the catalog by audience."""
    kinds = {
        "horror": "A horror film: a haunted house, ghosts and fear",
        "animation": "A cartoon with talking animals",
    }
    rows = [
        (f"{kind}{k}", f"Film number {k}", f"{kinds[kind]}, part {k // 2}.")
        for k in range(n_old + 2)
        for kind in [list(kinds)[k % 2]]
    ]
    items = Dataset.from_dict({key: list(column) for key, column in zip(("item", "title", "description"), zip(*rows))})
    rng = random.Random(0)
    old = items["item"][:n_old]
    fans = {
        f"{kind}-fan{u}": rng.sample([i for i in old if i.startswith(kind)], 6) for kind in kinds for u in range(10)
    }
    return items, fans


def test_ids_of_collaborative_vectors_grow_from_their_text_neighbours(tiny_run_files, tmp_path):
    """A new item has no interactions: it gets the collaborative vector of its nearest catalog items by text (as
    cold items do when the IDs are built), so a new horror film is coded among the horror films' audience."""
    from gti_peft.recsys.collaborative import collaborative_part, combine

    n_old = 24
    items, fans = _two_audiences(n_old)
    ids, texts = item_texts(items)
    text = embed_texts(texts[:n_old], MINILM, show_progress=False)
    embedding = "text+collaborative"
    collaborative = collaborative_part(embedding, text, ids[:n_old], fans, dim=4)
    vectors = combine(embedding, text, collaborative)
    sids = SemanticIDs.from_embeddings(
        ids[:n_old], vectors, 2, 4, 0, encoder=MINILM, embedding=embedding, collaborative=collaborative
    )
    folder = _save_adapter(sids, tiny_run_files / "model", tmp_path)
    new, old = items.select(range(n_old, n_old + 2)), items.select(range(n_old))
    before = _digest(folder)
    with pytest.raises(ValueError, match=r"encode 'text\+collaborative' vectors.*Pass `replay=` the old items"):
        extend_catalog(folder, new, tmp_path / "no-replay")
    assert _digest(folder) == before and not (tmp_path / "no-replay").exists()

    extend_catalog(folder, new, tmp_path / "grown", replay=old)
    grown = SemanticIDs.load(tmp_path / "grown")
    assert grown.embedding == embedding and grown.collaborative.shape == (n_old + 2, collaborative.shape[1])
    assert torch.equal(grown.collaborative[:n_old], collaborative)  # the old items' vectors are kept as they were
    for row, kind in ((n_old, "horror"), (n_old + 1, "animation")):
        similarity = grown.collaborative[row] @ collaborative.T
        same = torch.tensor([item.startswith(kind) for item in ids[:n_old]])
        assert similarity[same].mean() > 0.5 > similarity[~same].abs().max()  # its audience's vector
        codes_of = {
            k: set(sids.codes[torch.tensor([i.startswith(k) for i in ids[:n_old]]), 0].tolist())
            for k in ("horror", "animation")
        }
        assert grown.codes[row, 0].item() in codes_of[kind] - codes_of["animation" if kind == "horror" else "horror"]
    third = Dataset.from_dict(
        {"item": ["horror99"], "title": ["Film number 99"], "description": [items["description"][0]]}
    )
    again = extend_catalog(tmp_path / "grown", third, tmp_path / "grown-again", replay=items)  # grows again
    assert again.catalog_size == n_old + 3
