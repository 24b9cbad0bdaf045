"""Constrained decoding at catalog scale: trie build time, memory and users/s at 20 beams, 1.7k to 1M items.

Synthetic semantic IDs (seeded): three uniform codes out of 32 per level plus the disambiguation level the
real IDs get (``<d_k>`` numbering items that share the three codes), so a 1M catalog has ~30 items per prefix.
Build time covers the trie and its decoding tables; memory is the process RSS growth while building both
(the item -> tokens input is built before). Users/s: SmolLM2-135M-Instruct (fp32, new rows copied from random
existing rows) ranks the same users' prompts (10 history items each) with `constrained_beam_search`, best of
``--repeats`` runs. Targets (issue 13): users/s at 100k >= 0.8x the 1.7k figure; trie memory < 1 GB at 1M.

    .venv/bin/python benchmarks/decoding_scale.py --sizes 1682 10000 100000 1000000 --users 8
"""

from __future__ import annotations

import argparse
import gc
import random
import time

import numpy as np
import torch
from common import result_path, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from gti_peft.assets.offline import resolve
from gti_peft.recsys.beam_search import constrained_beam_search
from gti_peft.recsys.trie import ItemTrie

LEVELS, CODES = "abc", 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline:smollm2-135m-instruct")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1682, 10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--num-beams", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trie-only", action="store_true", help="build time and memory only (no model, no users/s)")
    parser.add_argument("--output", default=str(result_path("decoding_scale")))
    return parser.parse_args()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def synthetic_codes(n: int, seed: int) -> np.ndarray:
    """``[n, 4]`` codes: three uniform levels plus the disambiguation count within each shared prefix."""
    codes = np.random.default_rng(seed).integers(0, CODES, size=(n, len(LEVELS)))
    prefix = (codes * CODES ** np.arange(len(LEVELS))[::-1]).sum(1)
    order = np.argsort(prefix, kind="stable")
    sorted_prefix = prefix[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_prefix)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    disambiguation = np.empty(n, dtype=np.int64)
    disambiguation[order] = rank
    return np.concatenate([codes, disambiguation[:, None]], axis=1)


def load_model(name: str, max_disambiguation: int, seed: int):
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens = [f"<{level}_{c}>" for level in LEVELS for c in range(CODES)]
    tokens += [f"<d_{c}>" for c in range(max_disambiguation)]
    old = len(tokenizer)
    tokenizer.add_tokens(tokens)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rng = random.Random(seed)
    with torch.no_grad():  # distinct, model-like rows (see constrained_decoding.py)
        weight = model.get_input_embeddings().weight
        weight[old:] = weight[torch.tensor(rng.sample(range(old), len(weight) - old))]
    offsets = [tokenizer.convert_tokens_to_ids(f"<{level}_0>") for level in (*LEVELS, "d")]
    return tokenizer, model, np.array(offsets)


def prompts_for(tokenizer, codes: np.ndarray, offsets: np.ndarray, users: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(users):
        history = rng.sample(range(len(codes)), 10)
        sids = ["".join(tokenizer.convert_ids_to_tokens((codes[i] + offsets).tolist())) for i in history]
        content = f"The user watched, in order: {', '.join(sids)}. Predict the next item."
        messages = [{"role": "user", "content": content}]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    return prompts


def measure(size: int, args, tokenizer, model, offsets) -> dict:
    codes = synthetic_codes(size, args.seed)
    item_tokens = {f"item_{i}": row for i, row in enumerate((codes + offsets).tolist())}
    gc.collect()
    before, start = rss_bytes(), time.perf_counter()
    trie = ItemTrie(item_tokens)
    trie.tensors()
    build = time.perf_counter() - start
    gc.collect()
    memory = rss_bytes() - before
    tables = sum(t.numel() * t.element_size() for t in trie.tensors())
    seconds = []
    for _ in range(0 if args.trie_only else args.repeats):
        prompts = prompts_for(tokenizer, codes, offsets, args.users, args.seed)
        start = time.perf_counter()
        constrained_beam_search(
            model, tokenizer, prompts, trie, num_beams=args.num_beams, batch_size=args.batch_size, disable_tqdm=True
        )
        seconds.append(time.perf_counter() - start)
    return {
        "items": size,
        "trie_nodes": int(trie.tensors()[2].numel()),
        "largest_prefix_group": int(codes[:, -1].max()) + 1,
        "build_seconds": round(build, 2),
        "memory_mb": round(memory / 2**20, 1),
        "tables_mb": round(tables / 2**20, 2),
        "seconds": [round(s, 2) for s in seconds],
        "users_per_second": round(args.users / min(seconds), 3) if seconds else None,
    }


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    largest = max(int(synthetic_codes(n, args.seed)[:, -1].max()) + 1 for n in args.sizes)
    if args.trie_only:
        tokenizer, model, offsets = None, None, np.array([49152 + CODES * n for n in range(len(LEVELS) + 1)])
    else:
        tokenizer, model, offsets = load_model(args.model, largest, args.seed)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args, tokenizer, model, offsets))
        print(rows[-1], flush=True)
    print(f"\n| items | build s | memory MB (tables MB) | users/s at {args.num_beams} beams | vs 1.7k |")
    print("|---|---|---|---|---|")
    reference = rows[0]["users_per_second"]
    for r in rows:
        speed = f"{r['users_per_second']:.3f} | {r['users_per_second'] / reference:.2f}x" if reference else "- | -"
        print(f"| {r['items']:,} | {r['build_seconds']:.2f} | {r['memory_mb']:.0f} ({r['tables_mb']:.1f}) | {speed} |")
    by_size = {r["items"]: r for r in rows}
    targets = {}
    if 100_000 in by_size and reference:
        ratio = by_size[100_000]["users_per_second"] / reference
        targets["users_per_second_100k_vs_first"] = {"value": round(ratio, 3), "target": ">= 0.8"}
        targets["users_per_second_100k_vs_first"]["pass"] = ratio >= 0.8
    if 1_000_000 in by_size:
        mb = by_size[1_000_000]["memory_mb"]
        targets["trie_memory_1m_mb"] = {"value": mb, "target": "< 1024", "pass": mb < 1024}
    for name, t in targets.items():
        print(f"{name}: {t['value']} (target {t['target']}): {'PASS' if t['pass'] else 'FAIL'}")
    report = {
        "model": args.model,
        "config": {k: v for k, v in vars(args).items() if k not in ("output", "model")},
        "rows": rows,
        "targets": targets,
    }
    print(f"wrote {write_result(args.output, report)}")


if __name__ == "__main__":
    main()
