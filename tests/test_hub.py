"""Sharing: Hub-ready folders, push_to_hub (captured at the huggingface_hub boundary), exports, merged models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest.mock import Mock

import pytest
import torch
from conftest import llama_config, smollm2_tokenizer, snapshot, tiny_phi
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PhiConfig, PhiForCausalLM

import gti_peft
from gti_peft import GTIConfig, add_new_tokens
from gti_peft.recsys.beam_search import constrained_beam_search
from gti_peft.recsys.trie import ItemTrie
from gti_peft.sharing.adapter_format import add_new_token_ids, vocabulary_size_for
from gti_peft.sharing.hub import check_adapter_fits, export_for_peft, save_for_hub, save_merged
from gti_peft.sharing.patches import _push_gti_through_gti_peft

VOCAB = 49152  # the SmolLM2 tokenizer's size: tiny models share its vocabulary
TOKENS = [f"<a_{i}>" for i in range(4)] + [f"<b_{i}>" for i in range(4)]
TOKENIZER_FILES = ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
NEW_IDS = list(range(VOCAB, VOCAB + 8))
IDS = torch.tensor([[1, 5, NEW_IDS[0], 7, NEW_IDS[5], 2, NEW_IDS[3], 9, NEW_IDS[7]]])
REPO = "someone/gti-adapter"


@pytest.fixture(scope="module")
def tokenizer():
    tok = smollm2_tokenizer()
    assert add_new_tokens(tok, TOKENS) == NEW_IDS
    return tok


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folders = {tied: str(tmp_path_factory.mktemp(f"base-{tied}")) for tied in (True, False)}
    for tied, folder in folders.items():
        torch.manual_seed(0)
        LlamaForCausalLM(llama_config(tied, vocab=VOCAB)).save_pretrained(folder)
    return folders


def gti_model(bases, tied: bool, adapter_name: str = "default", **config):
    base = AutoModelForCausalLM.from_pretrained(bases[tied], dtype=torch.float32)
    config = GTIConfig(new_token_ids=NEW_IDS, init="random", r=4, target_modules="all-linear", **config)
    model = get_peft_model(base, config, adapter_name=adapter_name)
    torch.manual_seed(1)
    with torch.no_grad():  # stands in for training: LoRA B and the rows move away from their start
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def listing(folder: Path) -> dict[str, object]:
    """Each file's bytes; for safetensors its metadata and tensors (the header's key order varies per write)."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as f:
                files[path.name] = (f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()})  # noqa: SIM118
        else:
            files[path.name] = path.read_bytes()
    return files


def test_hub_folder_holds_lora_rows_tokenizer_and_card_only(bases, tokenizer, tmp_path):
    model = gti_model(bases, tied=False, adapter_name="sids")  # non-default name: files still at the root
    (extra := tmp_path / "semantic_ids.safetensors").write_bytes(b"sids")
    folder = save_for_hub(model, tokenizer, tmp_path / "hub", extra_files=[extra])
    expected = ["README.md", "adapter_config.json", "adapter_model.safetensors", *TOKENIZER_FILES, extra.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    with safe_open(folder / "adapter_model.safetensors", "pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    rows = {k.removeprefix("base_model.model."): s for k, s in shapes.items() if "lora_" not in k}
    assert rows == {"model.embed_tokens.gti_rows": [8, 32], "lm_head.gti_rows": [8, 32]}  # never a full matrix
    assert metadata["gti_vocab_size"] == "49160" and metadata["gti_base_vocab_size"] == str(VOCAB)
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    tokenizer_bytes = sum((folder / name).stat().st_size for name in TOKENIZER_FILES)
    total = sum(p.stat().st_size for p in folder.iterdir()) - extra.stat().st_size
    assert total <= 1.1 * (trained + tokenizer_bytes)
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert len(reloaded) == len(tokenizer) and reloaded.convert_tokens_to_ids(TOKENS) == NEW_IDS
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "GTI"


def test_card_metadata_parses_and_tells_the_story(bases, tokenizer, tmp_path):
    model = gti_model(bases, tied=True)
    model.peft_config["default"].grounding = {"steps": 300, "learning_rate": 0.001, "final_loss": 0.4321}
    metrics = {"metrics": {"model": {"recall@10": 0.1234}}, "table": "model | recall\ngti | 0.12", "seconds": 12.5}
    folder = save_for_hub(model, tokenizer, tmp_path / "a", metrics=metrics, repo_id=REPO, base_model="org/base")
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert (data.base_model, data.library_name, data.pipeline_tag) == ("org/base", "peft", "text-generation")
    assert {"gti", "lora", "new-tokens", "peft"} <= set(data.tags)
    story = ["8 new tokens", "`<a_0>`", "49152 -> 49160", "`init='random'`", "| steps | 300 |", "| r | 4 |"]
    story += ["| model.recall@10 | 0.1234 |", "gti | 0.12", "| seconds | 12.5 |", f'from_pretrained("{REPO}")']
    assert [text for text in story if text not in card.text] == []
    model.peft_config["default"].grounding = None  # a local base path never goes into the metadata
    plain = ModelCard.load(save_for_hub(model, tokenizer, tmp_path / "b") / "README.md")
    assert plain.data.base_model is None and bases[True] in plain.text
    assert "Not grounded" in plain.text and "Metrics" not in plain.text


@pytest.mark.parametrize("revision", [None, "v1"])
def test_push_to_hub_hands_over_exactly_the_saved_folder(bases, tokenizer, tmp_path, monkeypatch, revision):
    model = gti_model(bases, tied=True)
    calls = []
    commit = CommitInfo(commit_url=f"https://hf.co/{REPO}/commit/1", commit_message="", commit_description="", oid="1")

    def record(kind: str, result=None):
        def call(self, *args, **kwargs):  # the folder's files are read at call time: it is temporary
            folder = kwargs.get("folder_path")
            calls.append((kind, self.token, listing(folder) if folder else args, kwargs))
            return result

        return call

    monkeypatch.setattr(HfApi, "create_repo", record("repo", RepoUrl(f"https://huggingface.co/{REPO}")))
    monkeypatch.setattr(HfApi, "create_branch", record("branch"))
    monkeypatch.setattr(HfApi, "upload_folder", record("upload", commit))
    metrics, options = {"recall@10": 0.5}, dict(private=True, commit_message="add sids", token="hf_x", create_pr=True)
    info = gti_peft.push_to_hub(model, tokenizer, "gti-adapter", revision=revision, metrics=metrics, **options)
    assert info is commit
    assert calls[0] == ("repo", "hf_x", ("gti-adapter",), {"private": True, "exist_ok": True})
    assert calls[1:-1] == ([("branch", "hf_x", (REPO,), {"branch": "v1", "exist_ok": True})] if revision else [])
    kind, token, uploaded, kwargs = calls[-1]
    assert (kind, token) == ("upload", "hf_x")
    passed = {k: kwargs[k] for k in ("repo_id", "revision", "commit_message", "create_pr")}
    assert passed == {"repo_id": REPO, "revision": revision, "commit_message": "add sids", "create_pr": True}
    assert not Path(kwargs["folder_path"]).exists()  # the temporary folder is cleaned up
    expected = save_for_hub(model, tokenizer, tmp_path / "local", metrics=metrics, repo_id=REPO)
    assert uploaded == listing(expected)


def test_model_push_to_hub_is_routed_through_gti(bases, tokenizer, monkeypatch):
    model = gti_model(bases, tied=True)
    seen = []
    monkeypatch.setattr(
        gti_peft.sharing.hub, "push_to_hub", lambda m, tok, repo, **kw: seen.append((m, tok, repo, kw))
    )
    guarded = _push_gti_through_gti_peft(lambda self, repo_id, **kw: ("original", repo_id, kw))
    with pytest.raises(TypeError, match="tokenizer="):
        guarded(model, REPO)  # PEFT's own upload would carry no tokenizer and a generic card
    with pytest.raises(TypeError, match="max_shard_size"):
        guarded(model, REPO, tokenizer=tokenizer, max_shard_size="1GB")
    guarded(model, REPO, tokenizer=tokenizer, private=True)
    assert seen == [(model, tokenizer, REPO, {"private": True})]
    lora = get_peft_model(LlamaForCausalLM(llama_config()), LoraConfig(r=2, target_modules=["q_proj"]))
    assert guarded(lora, REPO, private=True) == ("original", REPO, {"private": True})


def run_script(*parts: str, cwd: Path) -> subprocess.Popen:
    script = "\n".join(textwrap.dedent(part).strip() for part in parts)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    pipe = subprocess.PIPE
    return subprocess.Popen([sys.executable, "-c", script], cwd=cwd, env=env, stdout=pipe, stderr=pipe, text=True)


BLOCK_GTI = """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "gti_peft":
                raise ImportError(f"{name} is blocked in this process")
    sys.meta_path.insert(0, Block())
    sys.modules["gti_peft"] = None
"""
COMPARE = f"""
    import sys, torch
    with torch.no_grad():
        diff = (model.eval()(input_ids=torch.tensor({IDS.tolist()})).logits - torch.load(EXPECTED)).abs().max()
    assert tokenizer.convert_tokens_to_ids({TOKENS}) == {NEW_IDS}, tokenizer.convert_tokens_to_ids({TOKENS})
    gti = any(name.split(".")[0] == "gti_peft" and mod is not None for name, mod in sys.modules.items())
    print("RESULT", type(model.get_input_embeddings()).__name__, diff.item(), gti)
"""


def test_fresh_processes_load_with_and_without_gti_peft(bases, tokenizer, tmp_path):
    """Each folder's card snippet, run as it is: with gti-peft (tied) and with gti_peft unimportable (untied)."""
    scripts = []
    for tied, kind in [(True, "hub"), (False, "plain")]:
        model = gti_model(bases, tied=tied, pad_to_multiple_of=None if tied else 64)  # 56 padding rows
        torch.save(logits(model), tmp_path / f"{kind}.pt")
        folder = (save_for_hub if kind == "hub" else export_for_peft)(model, tokenizer, tmp_path / kind)
        snippet = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
        compare = f"EXPECTED = {str(tmp_path / f'{kind}.pt')!r}\n" + textwrap.dedent(COMPARE)
        scripts.append([snippet, compare] if kind == "hub" else [BLOCK_GTI, snippet, compare])
    assert "resize_token_embeddings(49216, " in scripts[1][1]
    procs = [run_script(*parts, cwd=tmp_path) for parts in scripts]
    outputs = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    for _, err, code in outputs:
        assert code == 0, err[-3000:]
    results = [out.split("RESULT ")[1].split()[:3] for out, _, _ in outputs]  # layer, max |diff|, gti_peft loaded
    assert [(r[0], r[2]) for r in results] == [("NewTokenEmbedding", "True"), ("TrainableTokensWrapper", "False")]
    assert all(float(r[1]) <= 1e-5 for r in results), results


def test_export_for_peft_tied_in_process_and_refuses_a_head_bias(bases, tokenizer, tmp_path):
    model = gti_model(bases, tied=True)
    folder = export_for_peft(model, tokenizer, tmp_path / "plain")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["trainable_token_indices"] == {"model.embed_tokens": NEW_IDS}
    assert "new_token_ids" not in config and "grounding" not in config
    base = AutoModelForCausalLM.from_pretrained(bases[True], dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.testing.assert_close(logits(PeftModel.from_pretrained(base, folder)), logits(model), rtol=0, atol=1e-5)
    phi_base = PhiForCausalLM(PhiConfig(**(tiny_phi().config.to_dict() | {"vocab_size": VOCAB})))  # tokenizer's size
    phi = get_peft_model(phi_base, GTIConfig(new_token_ids=NEW_IDS, r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="has a bias.*3649"):
        export_for_peft(phi, tokenizer, tmp_path / "phi")
    assert not (tmp_path / "phi").exists()


@pytest.mark.parametrize("tied", [True, False])
def test_merged_model_serves_the_same_logits_and_beam_search(bases, tokenizer, tmp_path, tied):
    model = gti_model(bases, tied=tied)
    before, expected = snapshot(model), logits(model)
    folder = save_merged(model, tokenizer, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(os.listdir(folder))
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(merged.get_input_embeddings()) is torch.nn.Embedding and merged.config.vocab_size == len(tokenizer)
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model is unchanged
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)
    trie = ItemTrie({f"item{i}{j}": [NEW_IDS[i], NEW_IDS[4 + j]] for i in range(4) for j in range(4)})
    prompts = [[1, 5, 7, 9], [3, 4]]
    ours = constrained_beam_search(model, tokenizer, prompts, trie, num_beams=4, top_k=4, disable_tqdm=True)
    served = constrained_beam_search(merged, tokenizer, prompts, trie, num_beams=4, top_k=4, disable_tqdm=True)
    assert [[item for item, _ in row] for row in ours] == [[item for item, _ in row] for row in served]
    scores = [torch.tensor([[s for _, s in row] for row in result]) for result in (ours, served)]
    torch.testing.assert_close(*scores, rtol=0, atol=1e-4)
    assert len(AutoTokenizer.from_pretrained(folder)) == len(tokenizer)


def test_check_adapter_fits_names_both_sizes_and_bad_files(bases, tokenizer, tmp_path):
    folder = save_for_hub(gti_model(bases, tied=True), tokenizer, tmp_path / "hub")
    base = LlamaForCausalLM(llama_config(True, vocab=VOCAB))
    check_adapter_fits(base, folder)  # the un-resized base it was trained on
    base.resize_token_embeddings(len(tokenizer))
    check_adapter_fits(base, folder)  # ... or that base, resized already
    wide = llama_config(True, vocab=VOCAB)
    wide.hidden_size, wide.head_dim = 64, 16
    with pytest.raises(ValueError, match="hidden size 32.*hidden size 64"):
        check_adapter_fits(LlamaForCausalLM(wide), folder)
    for rows in (50000, 49000):  # another vocabulary: larger (its ids 49152.. are other tokens) or smaller
        with pytest.raises(
            ValueError, match=f"has {rows} embedding rows.*{VOCAB} rows \\(49160 with its 8 new tokens"
        ):
            check_adapter_fits(LlamaForCausalLM(llama_config(True, vocab=rows)), folder)
    # missing or corrupt files
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="adapter_model.safetensors .* is corrupt or truncated"):
        check_adapter_fits(base, folder)
    (folder / "adapter_config.json").write_text('{"peft_type": "GTI", "r":')
    with pytest.raises(ValueError, match="adapter_config.json .* is corrupt or truncated"):
        check_adapter_fits(base, folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds no adapter_config.json"):
        check_adapter_fits(base, folder)


def test_bad_input_or_a_failed_save_leaves_the_old_adapter_intact(bases, tokenizer, tmp_path, monkeypatch):
    folder = save_for_hub(gti_model(bases, tied=True), tokenizer, tmp_path / "adapter")
    old = listing(folder)
    other = gti_model(bases, tied=False)
    lora = get_peft_model(LlamaForCausalLM(llama_config()), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="active GTI adapter"):
        save_for_hub(lora, tokenizer, folder)
    with pytest.raises(ValueError, match="`tokenizer` has 49152 tokens but .* up to 49159"):
        save_for_hub(other, smollm2_tokenizer(), folder)
    with pytest.raises(FileNotFoundError, match="extra_files"):
        save_for_hub(other, tokenizer, folder, extra_files=[tmp_path / "missing.json"])
    # fails after the new adapter's weights are written
    monkeypatch.setattr(type(tokenizer), "save_pretrained", Mock(side_effect=OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_for_hub(other, tokenizer, folder)
    assert listing(folder) == old and sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an adapter folder"):
        export_for_peft(other, tokenizer, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    other.merge_adapter()
    with pytest.raises(ValueError, match="unmerge_adapter"):
        save_merged(other, tokenizer, tmp_path / "merged")
    assert listing(folder) == old and not (tmp_path / "merged").exists()


def test_saved_folders_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from gti_peft.sharing.saving import write_folder_atomically

    def write(folder):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        os.chmod(folder / "adapter_model.safetensors", 0o600)  # what safetensors does

    umask = os.umask(0o022)
    try:
        folder = write_folder_atomically(tmp_path / "adapter", write)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "adapter_model.safetensors").stat().st_mode) == 0o644


def test_a_tokenizer_with_more_tokens_than_rows_is_refused_before_anything_is_written(
    bases, tokenizer, tmp_path, monkeypatch
):
    model = gti_model(bases, tied=False)
    foreign = smollm2_tokenizer()  # another model's tokenizer: the same 8 new tokens, plus 4 the model has no rows for
    add_new_tokens(foreign, TOKENS + [f"<c_{i}>" for i in range(4)])
    calls = []
    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, lambda self, *args, _name=name, **kwargs: calls.append(_name))
    before = snapshot(model)
    sharing = {
        "save_for_hub": lambda: save_for_hub(model, foreign, tmp_path / "hub"),
        "push_to_hub": lambda: gti_peft.push_to_hub(model, foreign, REPO),
        "model.push_to_hub": lambda: model.push_to_hub(REPO, tokenizer=foreign),
        "export_for_peft": lambda: export_for_peft(model, foreign, tmp_path / "plain"),
        "save_merged": lambda: save_merged(model, foreign, tmp_path / "merged"),
    }
    for name, share in sharing.items():
        with pytest.raises(ValueError, match=r"`tokenizer` has 49164 tokens but the model has 49160 embedding rows"):
            share()
        assert calls == [] and list(tmp_path.iterdir()) == [], name
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    save_for_hub(model, tokenizer, tmp_path / "hub")  # the model's own tokenizer still passes


@pytest.mark.parametrize("pad", [None, 64])
def test_one_resize_rule_for_a_new_adapter_and_a_grown_one(pad):
    assert vocabulary_size_for([5, 7], rows=120, pad_to_multiple_of=pad) == 120  # every id has a row: unchanged
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(llama_config(vocab=120)), GTIConfig(new_token_ids=[120, 125], r=2, pad_to_multiple_of=pad)
    )
    rows = model.get_input_embeddings().base_weight.shape[0]
    assert rows == vocabulary_size_for([120, 125], 120, pad) == (128 if pad else 126)
    config = model.peft_config["default"].to_dict()
    assert config["vocab_size"] == rows
    metadata = {"gti_vocab_size": str(rows)}
    add_new_token_ids(config, metadata, [rows + 3])  # grown past its rows: the same rule
    assert config["new_token_ids"] == [120, 125, rows + 3]
    assert config["vocab_size"] == int(metadata["gti_vocab_size"]) == (192 if pad else rows + 4)


def test_only_the_adapter_format_module_spells_the_adapter_file_names_and_metadata_keys():
    import ast

    from gti_peft.sharing import adapter_format

    names = {getattr(adapter_format, n) for n in adapter_format.__all__ if n.endswith(("_NAME", "_KEY", "_SUFFIX"))}
    assert {"adapter_config.json", "semantic_ids.safetensors", "gti_vocab_size", ".gti_rows"} <= names
    package = Path(gti_peft.__file__).parent
    spelled = {
        f"{path.relative_to(package)}: {node.value}"
        for path in package.rglob("*.py")
        if path.name != "adapter_format.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    }
    assert spelled == set(), "take these names from gti_peft.sharing.adapter_format"
