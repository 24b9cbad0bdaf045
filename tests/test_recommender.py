"""Ranking with the user's history left out (evaluation), and the Recommender API on a tiny saved run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import llama_config, tiny_yaml
from transformers import LlamaForCausalLM

from gti_peft.recipe import load_recipe_config, run_recipe
from gti_peft.recipe.config import EvalArgs
from gti_peft.recipe.evaluation import evaluate_next_item, known_items, popularity_rankings


def test_known_items_are_the_training_sequence_and_the_prompt_history():
    train = {"u0": ["a", "b", "c"], "u1": ["d"]}
    examples = [{"user": "u0", "history": ["c", "e"], "target": "f"}, {"user": "u1", "history": ["d"], "target": "a"}]
    assert known_items(examples, train) == [{"a", "b", "c", "e"}, {"d"}]
    # popularity skips each user's known items and still fills top_k; without exclusion one shared list
    train = {"u0": ["a", "b"], "u1": ["a", "c"], "u2": ["a", "b", "d"]}
    assert popularity_rankings(train, [{"a"}, {"b", "c"}], top_k=2, count=2) == [["b", "c"], ["a", "d"]]
    assert popularity_rankings(train, None, top_k=2, count=2) == [["a", "b"], ["a", "b"]]


def test_evaluation_leaves_the_history_out_of_both_arms():
    from conftest import smollm2_tokenizer

    from gti_peft import add_new_tokens

    tokenizer = smollm2_tokenizer()
    add_new_tokens(tokenizer, [f"<a_{i}>" for i in range(5)] + ["<b_0>", "<b_1>"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tied=True, vocab=len(tokenizer)))
    sids = {f"m{i}": [f"<a_{i // 2}>", f"<b_{i % 2}>"] for i in range(10)}
    train = {"u0": ["m0", "m1", "m2"], "u1": ["m1", "m3"]}
    examples = [
        {"user": "u0", "history": ["m2", "m3"], "target": "m4"},
        {"user": "u1", "history": ["m3", "m0"], "target": "m5"},
    ]
    prompts = [tokenizer(text)["input_ids"] for text in ("The user watched <a_1><b_0><a_1><b_1>.", "Then <a_0>")]
    args = EvalArgs(num_beams=6, top_k=5, batch_size=2, bf16=False)
    result = evaluate_next_item(model, tokenizer, prompts, examples, sids, train, args, 10)
    assert result["ranking"] == "history_excluded"
    for ex, known in zip(examples, known_items(examples, train)):
        ranking = result["rankings"][ex["user"]]
        assert len(set(ranking)) == 5 and not set(ranking) & known
    args = EvalArgs(num_beams=6, top_k=5, batch_size=2, bf16=False, exclude_history=False)
    full = evaluate_next_item(model, tokenizer, prompts, examples, sids, train, args, 10)
    assert full["ranking"] == "full"
    assert any(set(r) & k for r, k in zip(full["rankings"].values(), known_items(examples, train)))


def test_recipe_records_the_convention_and_refuses_too_few_items_before_training(tiny_run_files, tmp_path):
    # 24 items; each test user knows 5 of them: top_k=20 leaves 19 < 20
    out = tmp_path / "small"
    overrides = ["evaluation.num_beams=20", "evaluation.top_k=20"]
    with pytest.raises(
        ValueError,
        match=r"User 'u\d+' \(row \d+\) has 5 of the catalog's 24 items .* 19 item\(s\) "
        r"to rank, fewer than top_k=20 .*evaluation.exclude_history: false",
    ):
        run_recipe(load_recipe_config(tiny_yaml(tiny_run_files, out), overrides))
    assert not (out / "grounded").exists() and not (out / "semantic_ids.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_run(tiny_run_files, tmp_path_factory):
    """A tiny recipe run (grounding, fine-tuning, evaluation of 6 users) and the config that made it."""
    out = tmp_path_factory.mktemp("recommender") / "run"
    config = load_recipe_config(tiny_yaml(tiny_run_files, out))
    run_recipe(config)
    return out, config


@pytest.fixture(scope="module")
def tiny_recommender(tiny_run):
    from gti_peft.recsys import Recommender

    return Recommender.from_pretrained(tiny_run[0])


def test_a_saved_run_recommends_what_its_evaluation_ranked(tiny_run):
    from gti_peft.recipe.data import load_data
    from gti_peft.recsys import Recommender

    out, config = tiny_run
    assert {"recommender.json", "item_titles.json"} <= {p.name for p in (out / "adapter").iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ranking"] == "history_excluded"
    rankings = json.loads((out / "rankings.json").read_text())
    data = load_data(config)
    examples = data.split.test[: config.evaluation.max_users]
    rec = Recommender.from_pretrained(out)
    assert len(rec.items) == 24 and rec.items["m3"] == "Film number 3"
    histories = [ex["history"] for ex in examples]
    known = [data.split.train[ex["user"]] for ex in examples]
    recs = rec.recommend(histories, k=5, exclude_items=known, batch_size=4)
    assert [[r.item for r in user] for user in recs] == [rankings[ex["user"]]["ranking"] for ex in examples]
    for user, history, seen in zip(recs, histories, known):
        scores = [r.score for r in user]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
        assert not {r.item for r in user} & (set(history) | set(seen))
        assert all(r.title == f"Film number {r.item[1:]}" for r in user)
    # one history in, one list out; the adapter folder loads the same; exclusion off may return history items
    one = Recommender.from_pretrained(out / "adapter").recommend(histories[0], k=5, num_beams=24)
    assert isinstance(one[0].item, str) and len(one) == 5
    full = rec.recommend(histories, k=20, exclude_history=False, num_beams=24)
    assert any({r.item for r in user} & set(h) for user, h in zip(full, histories))
    allowed = ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert all({r.item for r in user} <= set(allowed) for user in rec.recommend(histories, k=2, allowed_items=allowed))
    assert rec.search_items("NUMBER 1", limit=3) == [
        ("m1", "Film number 1"),
        ("m10", "Film number 10"),
        ("m11", "Film number 11"),
    ]


def test_prompts_match_the_recipe_s_training_prompts_for_windows_and_sequences(tiny_run):
    from gti_peft.recipe.data import SEQUENCE_PROMPT, prompt_ids
    from gti_peft.recipe.evaluation import prompt_settings
    from gti_peft.recsys import PromptSettings, Recommender, SemanticIDs

    out, config = tiny_run
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    sids = SemanticIDs.load(out / "semantic_ids.safetensors")
    history = ["m1", "m5", "m7", "m9"]
    assert PromptSettings().sequence_prompt == SEQUENCE_PROMPT
    for overrides in ([], ["data.examples=sequences", "data.max_history=4", "data.history_separator=' | '"]):
        cfg = load_recipe_config(tiny_yaml(out.parent, out.parent / "other"), overrides)
        cfg.data.prompt_style = "plain" if overrides else cfg.data.prompt_style
        rec = Recommender(None, tokenizer, sids, prompt_settings(cfg))
        window = history[-cfg.data.history_length :]
        assert rec.prompt_ids(history) == prompt_ids(cfg, tokenizer, sids.token_lists(), window)


def test_old_run_folders_read_their_settings_from_recipe_yaml(tiny_run, tmp_path):
    import shutil

    from gti_peft.recsys import PromptSettings

    out, config = tiny_run
    copy = tmp_path / "old"
    shutil.copytree(out / "adapter", copy / "adapter")
    shutil.copy(out / "recipe.yaml", copy / "recipe.yaml")
    (copy / "adapter" / "recommender.json").unlink()
    assert PromptSettings.load(copy / "adapter") == PromptSettings.load(out / "adapter")
    (copy / "recipe.yaml").unlink()
    with pytest.warns(UserWarning, match="records no prompt settings"):
        assert PromptSettings.load(copy / "adapter") == PromptSettings()


def test_a_merged_folder_with_the_semantic_ids_recommends_the_same(tiny_run, tmp_path):
    import shutil

    from gti_peft.recsys import Recommender
    from gti_peft.sharing.hub import save_merged

    out, _ = tiny_run
    rec = Recommender.from_pretrained(out)
    merged = save_merged(rec.model, rec.tokenizer, tmp_path / "merged")
    for name in ("semantic_ids.safetensors", "recommender.json", "item_titles.json"):
        shutil.copy(out / "adapter" / name, merged / name)
    histories = [["m1", "m2", "m3"], ["m20", "m4"]]
    ours, theirs = rec.recommend(histories, k=5), Recommender.from_pretrained(merged).recommend(histories, k=5)
    for a, b in zip(ours, theirs):
        assert [r.item for r in a] == [r.item for r in b]
        torch.testing.assert_close(
            torch.tensor([r.score for r in a]), torch.tensor([r.score for r in b]), atol=1e-4, rtol=0
        )


UNKNOWN = r"History 0 holds 2 item id\(s\) not in the catalog: \['nope', 'm99'\].*unknown_items='skip'"
BAD_CALLS = [
    ({"histories": ["m1", "nope", "m99"]}, UNKNOWN),
    ({"histories": []}, "History 0 is empty"),
    ({"histories": [["m1"], ["nope"]], "unknown_items": "skip"}, r"History 1 is empty after skipping 1 unknown id"),
    ({"histories": ["m1"], "k": 21}, "`k` must be an integer between 1 and 20, got 21"),
    ({"histories": [f"m{i}" for i in range(20)], "k": 5}, r"20 of the catalog's 24 items .* 4 item\(s\) to rank"),
    ({"histories": ["m1"], "k": 3, "allowed_items": ["m1", "m2"]}, r"has 1 of the catalog's 2 items"),
    ({"histories": ["m1"], "allowed_items": ["zzz"]}, r"`allowed_items` must name catalog items.*\['zzz'\]"),
    ({"histories": "m1"}, "`histories` must be one history"),
    ({"histories": ["m1"], "unknown_items": "drop"}, "`unknown_items` must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error"), BAD_CALLS)
def test_bad_input_is_refused_before_any_model_work(tiny_recommender, kwargs, error):
    rec = tiny_recommender
    calls = []
    hook = rec.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match=error):
            rec.recommend(**kwargs)
    finally:
        hook.remove()
    assert calls == []


def test_unknown_items_skip_leaves_them_out(tiny_recommender):
    skipped = tiny_recommender.recommend(["m1", "nope"], k=3, unknown_items="skip")
    assert [r.item for r in skipped] == [r.item for r in tiny_recommender.recommend(["m1"], k=3)]


def test_folders_without_semantic_ids_fail_before_the_model_loads(tiny_run, tmp_path):
    import shutil

    from gti_peft.recsys import Recommender

    shutil.copytree(tiny_run[0] / "adapter", tmp_path / "bare")
    (tmp_path / "bare" / "semantic_ids.safetensors").unlink()
    (tmp_path / "bare" / "adapter_model.safetensors").unlink()  # loading the model would fail differently
    with pytest.raises(FileNotFoundError, match=r"holds no semantic_ids.safetensors \(found .*adapter_config.json"):
        Recommender.from_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub repo id"):
        Recommender.from_pretrained(tmp_path / "missing" / "run")


def test_recommend_command_writes_jsonl_as_it_goes_and_resumes(tiny_run, tmp_path, capsys):
    from gti_peft.cli import main

    out, _ = tiny_run
    rows = [{"user_id": f"u{i}", "history": [f"m{i}", f"m{i + 1}", f"m{i + 2}"]} for i in range(7)]
    source = tmp_path / "histories.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "recs.jsonl"
    command = ["recommend", str(out), "--input", str(source), "--output", str(target), "--k", "4", "--batch-size", "3"]
    assert main(command) == 0
    assert "users/s" in capsys.readouterr().out
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["user"] for line in lines] == [r["user_id"] for r in rows]
    for line, row in zip(lines, rows):
        items = [r["item"] for r in line["recommendations"]]
        assert len(set(items)) == 4 and not set(items) & set(row["history"])
        assert line["recommendations"][0]["title"] == f"Film number {items[0][1:]}"
    # an interrupted run: two users written and half of a third line; the rerun writes only the missing users
    full = target.read_text()
    first_two = "".join(full.splitlines(keepends=True)[:2])
    target.write_text(first_two + full.splitlines(keepends=True)[2][:15])
    assert main(command) == 0
    assert "2 already written were skipped" in capsys.readouterr().out
    _assert_same_recommendations(target.read_text(), full)  # batched anew: scores agree to float rounding
    # the same histories as CSV (ids separated by spaces) give the same lines
    csv_source = tmp_path / "histories.csv"
    csv_source.write_text("user_id,history\n" + "".join(f"{r['user_id']},{' '.join(r['history'])}\n" for r in rows))
    assert main([*command[:3], str(csv_source), "--output", str(tmp_path / "csv.jsonl"), *command[6:]]) == 0
    _assert_same_recommendations((tmp_path / "csv.jsonl").read_text(), full)


def _assert_same_recommendations(written: str, expected: str) -> None:
    """The same users, items and titles in the same order, scores equal up to float rounding."""
    got, want = ([json.loads(line) for line in text.splitlines()] for text in (written, expected))
    strip = [[{**r, "score": None} for r in line["recommendations"]] for line in got]
    assert [line["user"] for line in got] == [line["user"] for line in want]
    assert strip == [[{**r, "score": None} for r in line["recommendations"]] for line in want]
    scores = [r["score"] for line in got for r in line["recommendations"]]
    assert scores == pytest.approx([r["score"] for line in want for r in line["recommendations"]], abs=1e-4)


def test_recommend_command_refuses_bad_files_before_the_model_loads(tiny_run, tmp_path):
    from gti_peft.cli import main

    out, _ = tiny_run
    source = tmp_path / "h.jsonl"
    source.write_text(
        json.dumps({"user_id": "a", "history": ["m1"]}) + "\n" + json.dumps({"user_id": "b", "history": ["x9"]}) + "\n"
    )
    base = ["recommend", str(out), "--output", str(tmp_path / "r.jsonl")]
    with pytest.raises(
        ValueError, match=r"The history of user 'b' \(row 1\) holds 1 item id\(s\) not in the catalog: \['x9'\]"
    ):
        main([*base, "--input", str(source)])
    with pytest.raises(ValueError, match=r"has no column \['items'\] .*--history-column"):
        main([*base, "--input", str(source), "--history-column", "items"])
    with pytest.raises(ValueError, match="must be an existing .jsonl, .csv or .parquet file"):
        main([*base, "--input", str(tmp_path / "h.txt")])
    source.write_text(
        json.dumps({"user_id": "a", "history": ["m1"]}) + "\n" + json.dumps({"user_id": "a", "history": ["m2"]}) + "\n"
    )
    with pytest.raises(ValueError, match=r"1 repeated user\(s\), e.g. \['a'\]"):
        main([*base, "--input", str(source)])
    assert not (tmp_path / "r.jsonl").exists()
