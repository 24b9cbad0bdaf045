from __future__ import annotations

import json
import logging

import pytest
from datasets import Dataset

from gti_peft.recsys.data import (
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


def _interactions(rows: list[tuple[str, str, int]]) -> Dataset:
    users, items, times = zip(*rows)
    return Dataset.from_dict({"user": list(users), "item": list(items), "timestamp": list(times)})


@pytest.fixture(scope="module")
def movielens():
    return load_movielens_100k()


def test_movielens_100k_loads(movielens):
    interactions, items = movielens
    assert interactions.column_names == ["user", "item", "timestamp"]
    assert items.column_names == ["item", "title", "description"]
    assert len(interactions) == 100_000
    assert len(set(interactions["user"])) == 943 and len(set(interactions["item"])) == 1682
    assert len(items) == 1682 and len(set(items["item"])) == 1682
    first = items[0]
    assert first["item"] == "1" and first["title"] == "Toy Story"
    assert first["description"] == "Genres: Animation, Children's, Comedy. Released 1995."
    assert interactions[0] == {"user": "196", "item": "242", "timestamp": 881250949}
    # every interaction names a known item; every user has at least 20 ratings in MovieLens-100k
    histories = user_histories(interactions, items, min_interactions=20)
    assert len(histories) == 943 and histories.n_dropped_users == 0
    assert sum(map(len, histories.values())) == 100_000
    ids, texts = item_texts(items)
    assert ids[0] == "1" and texts[0] == "Toy Story. Genres: Animation, Children's, Comedy. Released 1995."


def test_histories_sorted_by_time_with_stable_ties():
    rows = [("u1", "c", 30), ("u2", "x", 5), ("u1", "a", 10), ("u1", "b", 30), ("u1", "d", 20), ("u2", "y", 1)]
    histories = user_histories(_interactions(rows), min_interactions=1)
    assert list(histories) == ["u1", "u2"]  # order of first appearance
    assert histories["u1"] == ["a", "d", "c", "b"]  # c and b tie at t=30: file order kept
    assert histories["u2"] == ["y", "x"]


def test_short_users_dropped_and_counted(caplog):
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2), ("u3", "c", 1)]
    with caplog.at_level(logging.WARNING, logger="gti_peft.recsys.data"):
        histories = user_histories(_interactions(rows), min_interactions=3)
    assert dict(histories) == {"u1": ["a", "b", "c"]}
    assert histories.n_dropped_users == 2 and histories.n_dropped_interactions == 3
    assert "Dropped 2 users" in caplog.text


def test_unknown_items_raise_or_are_dropped():
    rows = [("u1", "a", 1), ("u1", "zz", 2), ("u1", "b", 3), ("u1", "c", 4), ("u2", "yy", 1)]
    items = Dataset.from_dict({"item": ["a", "b", "c"], "title": ["A", "B", "C"], "description": ["", "", ""]})
    with pytest.raises(ValueError, match=r"2 interactions name 2 items missing.*\['zz', 'yy'\].*drop_unknown"):
        user_histories(_interactions(rows), items)
    histories = user_histories(_interactions(rows), ["a", "b", "c"], min_interactions=3, drop_unknown=True)
    assert dict(histories) == {"u1": ["a", "b", "c"]}
    assert histories.n_dropped_interactions == 2 and histories.n_dropped_users == 0  # u2 had no known item


def test_leave_one_out_by_hand():
    split = leave_one_out({"u1": ["a", "b", "c", "d", "e"], "u2": ["x", "y", "z"]}, max_history=2)
    assert split.train == {"u1": ["a", "b", "c"], "u2": ["x"]}
    assert split.valid == [
        {"user": "u1", "history": ["b", "c"], "target": "d"},  # truncated to the last 2 items
        {"user": "u2", "history": ["x"], "target": "y"},
    ]
    assert split.test == [
        {"user": "u1", "history": ["c", "d"], "target": "e"},
        {"user": "u2", "history": ["x", "y"], "target": "z"},
    ]
    assert leave_one_out({"u": ["a", "b", "c", "d"]}).test[0]["history"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="fewer than 3 items.*min_interactions=3"):
        leave_one_out({"u1": ["a", "b"]})


def test_training_examples_sliding_windows():
    examples = training_examples({"u1": ["a", "b", "c", "d"], "u2": ["x"]}, max_history=2, min_history=1)
    assert [(e["history"], e["target"]) for e in examples] == [
        (["a"], "b"),
        (["a", "b"], "c"),
        (["b", "c"], "d"),  # window of at most max_history items
    ]
    examples = training_examples({"u1": ["a", "b", "c", "d"]}, max_history=10, min_history=2)
    assert [e["target"] for e in examples] == ["c", "d"]
    with pytest.raises(ValueError, match="min_history"):
        training_examples({"u1": ["a", "b"]}, max_history=1, min_history=2)


def test_popularity_ranking_counts_and_ties():
    train = {"u1": ["b", "a", "c"], "u2": ["c", "a"], "u3": ["d", "c"]}
    # c: 3, a: 2, b: 1, d: 1 (b before d: b appears first)
    assert popularity_ranking(train) == ["c", "a", "b", "d"]
    assert popularity_ranking(train, k=2) == ["c", "a"]


def test_recommendation_messages():
    messages = recommendation_messages(["<a_1><b_2>", "<a_3><b_4>"], target_sid="<a_5><b_6>")
    assert messages == [
        {"role": "user", "content": "The user watched, in order: <a_1><b_2>, <a_3><b_4>. Predict the next item."},
        {"role": "assistant", "content": "<a_5><b_6>"},
    ]
    assert len(recommendation_messages(["<a_1><b_2>"])) == 1  # prompt only, for generation
    with pytest.raises(ValueError, match="history_sids"):
        recommendation_messages([])


def test_grounding_pairs():
    items = Dataset.from_dict({"item": ["1", "2"], "title": ["Heat", "Up"], "description": ["Crime.", "Animation."]})
    pairs = grounding_pairs(items, {"1": "<a_0><b_1>", "2": "<a_1><b_0>", "3": "<a_1><b_1>"})
    assert pairs == [
        {"tokens": "<a_0><b_1>", "title": "Heat", "description": "Crime."},
        {"tokens": "<a_1><b_0>", "title": "Up", "description": "Animation."},
    ]
    with pytest.raises(ValueError, match=r"1 items have no semantic ID, e.g. \['2'\]"):
        grounding_pairs(items, {"1": "<a_0><b_1>"})


def test_generic_loaders_csv_json_parquet(tmp_path):
    (tmp_path / "inter.csv").write_text("uid,iid,ts\n7,10,3\n7,11,1\n8,10,2\n")
    inter = load_interactions(tmp_path / "inter.csv", user_col="uid", item_col="iid", time_col="ts")
    assert inter.column_names == ["user", "item", "timestamp"]
    assert inter["user"] == ["7", "7", "8"] and inter["item"] == ["10", "11", "10"]  # ids become strings
    assert user_histories(inter, min_interactions=1)["7"] == ["11", "10"]
    no_time = load_interactions(tmp_path / "inter.csv", user_col="uid", item_col="iid", time_col=None)
    assert no_time["timestamp"] == [0, 1, 2]

    rows = [
        {"id": 10, "name": "Heat", "genre": "Crime", "year": 1995},
        {"id": 11, "name": "Up", "genre": None, "year": 2009},
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items = load_items(tmp_path / "items.jsonl", item_col="id", title_col="name", description_cols=["genre", "year"])
    assert items.to_list() == [
        {"item": "10", "title": "Heat", "description": "Crime. 1995."},
        {"item": "11", "title": "Up", "description": "2009."},  # missing values are skipped
    ]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "items.parquet"))
    assert load_items(tmp_path / "items.parquet", "id", "name", "genre")["description"] == ["Crime.", ""]
    with pytest.raises(ValueError, match=r"no column\(s\) \['title', 'description'\]"):
        load_items(tmp_path / "items.jsonl", item_col="id")
    with pytest.raises(ValueError, match="file_format="):
        load_items(tmp_path / "items.txt")


def test_sequence_chunks_cover_every_target_once_ending_with_the_latest_items():
    histories = {"u1": [f"i{k}" for k in range(11)], "u2": ["a", "b"], "u3": ["x"]}
    chunks = sequence_chunks(histories, max_items=4)
    u1 = [c["items"] for c in chunks if c["user"] == "u1"]
    # aligned to the end, consecutive chunks share one item (the later chunk's first: history there, not a target)
    assert u1 == [["i0", "i1"], ["i1", "i2", "i3", "i4"], ["i4", "i5", "i6", "i7"], ["i7", "i8", "i9", "i10"]]
    targets = [item for c in u1 for item in c[1:]]
    assert targets == [f"i{k}" for k in range(1, 11)]  # every item after the first, exactly once, in order
    assert [c["items"] for c in chunks if c["user"] == "u2"] == [["a", "b"]]
    assert not [c for c in chunks if c["user"] == "u3"]  # one item: no target
    with pytest.raises(ValueError, match="max_items` must be >= 2"):
        sequence_chunks(histories, max_items=1)


def test_sequence_chunks_keep_each_users_latest_chunks_when_asked():
    histories = {"u1": [f"i{k}" for k in range(11)], "u2": ["a", "b"]}
    latest = sequence_chunks(histories, max_items=4, max_chunks_per_user=2)
    assert [c["items"] for c in latest if c["user"] == "u1"] == [["i4", "i5", "i6", "i7"], ["i7", "i8", "i9", "i10"]]
    assert [c["items"] for c in latest if c["user"] == "u2"] == [["a", "b"]]  # fewer chunks than asked: all kept
    with pytest.raises(ValueError, match="max_chunks_per_user` must be >= 1"):
        sequence_chunks(histories, max_items=4, max_chunks_per_user=0)
