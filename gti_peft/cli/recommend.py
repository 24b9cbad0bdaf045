"""Recommend the next items for every user of a file of histories (JSONL, CSV or Parquet; one user per row).

gti-peft recommend outputs/smollm2-135m-movielens --input histories.jsonl --output recs.jsonl --k 10

Each output line is `{"user": ..., "recommendations": [{"item": ..., "score": ..., "title": ...}, ...]}`, best
first, written as each batch finishes. Rerunning with the same --output resumes: users already written are
skipped (a half-written last line is dropped). A history is a list (JSONL, Parquet), or in CSV a JSON list or ids
separated by spaces, commas or "|". Inputs are checked against the catalog before the model loads.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="A recipe run folder, its adapter/ folder, a save_merged folder or a Hub id.")
    parser.add_argument("--input", required=True, help="Histories: .jsonl, .csv or .parquet, one user per row.")
    parser.add_argument("--output", required=True, help="Recommendations, JSONL (appended to when resuming).")
    parser.add_argument("--k", type=int, default=10, help="Items per user (at most 20).")
    parser.add_argument("--batch-size", type=int, default=8, help="Users ranked together.")
    parser.add_argument("--num-beams", type=int, default=None, help="Beams (default: the run's evaluation setting).")
    parser.add_argument("--user-column", default="user_id")
    parser.add_argument("--history-column", default="history")
    parser.add_argument(
        "--keep-history", action="store_true", help="Allow items of the user's history (default: left out)."
    )
    parser.add_argument("--unknown-items", choices=("error", "skip"), default="error", help="Ids not in the catalog.")
    parser.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the model loads).")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: float32).")
    parser.add_argument("--load-in-4bit", action="store_true", help="Load the base 4-bit (bitsandbytes).")


def _parse_history(value) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [v for v in re.split(r"[\s,|]+", text) if v]
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]  # CSV: one numeric id reads as a number


def read_histories(path: str, user_column: str, history_column: str) -> tuple[list, list[list]]:
    """`(users, histories)` from a JSONL, CSV or Parquet file, read with `datasets`; bad files fail naming the fix."""
    from datasets import load_dataset

    source = Path(path)
    builder = FORMATS.get(source.suffix.lower())
    if builder is None or not source.is_file():
        raise ValueError(
            f"--input {path!r} must be an existing .jsonl, .csv or .parquet file, one user per row"
            + ("" if source.is_file() else " (no such file)")
            + "."
        )
    table = load_dataset(builder, data_files=str(source), split="train")
    missing = [c for c in (user_column, history_column) if c not in table.column_names]
    if missing:
        raise ValueError(
            f"--input {path!r} has no column {missing} (columns: {table.column_names}): name the right ones with "
            "--user-column / --history-column."
        )
    users = table[user_column]
    duplicates = [user for user, count in Counter(str(u) for u in users).items() if count > 1]
    if duplicates:
        raise ValueError(
            f"--input {path!r} holds {len(duplicates)} repeated user(s), e.g. {duplicates[:5]}: one row per user "
            "(resuming skips users by id)."
        )
    return users, [_parse_history(h) for h in table[history_column]]


def users_already_written(output: Path) -> set[str]:
    """Users of the finished lines of `output`; a half-written last line (an interrupted run) is cut off."""
    if not output.is_file():
        return set()
    data = output.read_bytes()
    keep = data.rfind(b"\n") + 1
    lines = data[:keep].splitlines()
    done = set()
    for number, line in enumerate(lines, 1):
        try:
            done.add(str(json.loads(line)["user"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"--output {str(output)!r} line {number} is not a recommendation line ({error}): it is another file; "
                "pass a new --output."
            ) from error
    if keep < len(data):
        with output.open("r+b") as f:
            f.truncate(keep)
    return done


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..recsys.recommender import Recommender, RunFiles, check_histories

    if args.k < 1 or args.batch_size < 1:
        raise ValueError(f"--k and --batch-size must be >= 1, got --k {args.k}, --batch-size {args.batch_size}.")
    users, histories = read_histories(args.input, args.user_column, args.history_column)
    output = Path(args.output)
    done = users_already_written(output)
    todo = [i for i, user in enumerate(users) if str(user) not in done]
    files = RunFiles.read(args.run)  # the catalog and settings, before the model loads
    catalog = dict.fromkeys(files.semantic_ids.item_ids)
    names = [users[i] for i in todo]
    clean = check_histories([histories[i] for i in todo], catalog, args.unknown_items, names=names)
    if not todo:
        print(f"All {len(users)} users of {args.input} are already in {output}: nothing to do.")
        return 0
    recommender = Recommender.from_run_files(files, args.device, args.dtype, args.load_in_4bit)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with output.open("a", encoding="utf-8") as f, tqdm(total=len(todo), unit="user", desc="Recommending") as bar:
        for begin in range(0, len(todo), args.batch_size):
            batch = clean[begin : begin + args.batch_size]
            ranked = recommender.recommend(
                batch, k=args.k, exclude_history=not args.keep_history, num_beams=args.num_beams, batch_size=len(batch)
            )
            for user, recs in zip(names[begin : begin + args.batch_size], ranked):
                line = {"user": user, "recommendations": [r.to_dict() for r in recs]}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    print(
        f"{len(todo)} users in {seconds:.1f} s: {len(todo) / seconds:.2f} users/s (batch size {args.batch_size}, "
        f"k {args.k}); {len(done)} already written were skipped. Recommendations in {output}."
    )
    return 0
