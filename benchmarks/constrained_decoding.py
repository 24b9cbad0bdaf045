"""Constrained beam search (ours) vs `generate` + `prefix_allowed_tokens_fn`: users per second and agreement.

SmolLM2-135M-Instruct (fp32) with 96 new semantic-ID tokens (rows copied from random existing tokens), a seeded
catalog of random 3-token semantic IDs and chat prompts built from random histories. The two methods run
interleaved (alternating which goes first).

    .venv/bin/python benchmarks/constrained_decoding.py --users 32 --num-beams 10 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch
from common import result_path, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from gti_peft.assets.offline import resolve
from gti_peft.recsys.beam_search import constrained_beam_search, generate_baseline
from gti_peft.recsys.trie import ItemTrie

LEVELS, CODES = "abc", 32
SYSTEM = (
    "You are a movie recommender. Every movie is written as its semantic ID: three special tokens, "
    "one from each of the levels a, b and c."
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline:smollm2-135m-instruct", help="Hub id, path or offline: name")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=str(result_path("constrained_decoding")))
    return parser.parse_args()


def build(args: argparse.Namespace):
    path = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
    new_tokens = [f"<{level}_{code}>" for level in LEVELS for code in range(CODES)]
    tokenizer.add_tokens(new_tokens)
    old_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows overwritten below
    rng = random.Random(args.seed)
    # Mean resizing would make every new row almost the same vector (all items tie to ~1e-5, rankings are
    # float noise); copies of random existing rows (tied head: output rows too) give distinct, model-like scores.
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old_vocab:] = weight[torch.tensor(rng.sample(range(old_vocab), len(weight) - old_vocab))]
    codes = rng.sample(range(CODES ** len(LEVELS)), args.items)  # unique semantic IDs
    sids = {
        f"item_{i}": [f"<{level}_{c // CODES**n % CODES}>" for n, level in zip((2, 1, 0), LEVELS)]
        for i, c in enumerate(codes)
    }
    text = {item: "".join(tokens) for item, tokens in sids.items()}
    trie = ItemTrie({item: tokenizer.convert_tokens_to_ids(tokens) for item, tokens in sids.items()})
    prompts = []
    for _ in range(args.users):
        history = rng.sample(list(sids), args.history)
        lines = "\n".join(f"{n}. {text[item]}" for n, item in enumerate(history, 1))
        messages = [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": f"The movies this user watched, oldest first:\n{lines}\n"
                "Which movie will the user watch next? Answer with its semantic ID only.",
            },
        ]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
        assert all(tok in prompts[-1] for tok in trie.sequences[history[0]]), "SID tokens were not kept whole"
    return tokenizer, model, trie, prompts


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    tokenizer, model, trie, prompts = build(args)
    lengths = [len(p) for p in prompts]
    print(f"{trie}; {len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens; device {args.device}")
    runners = {
        "ours": lambda: constrained_beam_search(
            model, tokenizer, prompts, trie, num_beams=args.num_beams, batch_size=args.batch_size, disable_tqdm=True
        ),
        "generate": lambda: generate_baseline(
            model,
            prompts,
            trie,
            num_beams=args.num_beams,
            batch_size=args.batch_size,
            pad_token_id=tokenizer.pad_token_id,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    results = {}
    for repeat in range(args.repeats):
        for name in list(runners)[:: 1 if repeat % 2 == 0 else -1]:  # alternate which runs first
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = runners[name]()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
            print(f"  repeat {repeat}: {name:8s} {seconds[name][-1]:7.2f} s")
    ours, reference = results["ours"], results["generate"]
    same = [[i for i, _ in a] == [i for i, _ in b] for a, b in zip(ours, reference)]
    identical = sum(same) / len(prompts)
    same_top1 = sum(a[0][0] == b[0][0] for a, b in zip(ours, reference)) / len(prompts)
    gaps = [abs(x[1] - y[1]) for a, b, ok in zip(ours, reference, same) if ok for x, y in zip(a, b)]
    score_gap = max(gaps) if gaps else None
    # median over repeats; "best" (fastest repeat) is the least disturbed by other load on a shared machine
    speed = {name: len(prompts) / statistics.median(times) for name, times in seconds.items()}
    best = {name: len(prompts) / min(times) for name, times in seconds.items()}
    ratio, best_ratio = speed["ours"] / speed["generate"], best["ours"] / best["generate"]
    print(f"\n| method | median s | users/s (median) | users/s (best) | top-{args.num_beams} lists identical |")
    print("|---|---|---|---|---|")
    for name in runners:
        median = statistics.median(seconds[name])
        print(f"| {name} | {median:.2f} | {speed[name]:.2f} | {best[name]:.2f} | {identical:.0%} |")
    print(f"\nspeed-up ours / generate: {ratio:.2f}x (median), {best_ratio:.2f}x (best)")
    print(f"same top-1: {same_top1:.0%}; max score gap on identical lists: {score_gap}")
    report = {
        "model": args.model,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "config": {k: v for k, v in vars(args).items() if k not in ("output", "model", "device")},
        "catalog_items": len(trie),
        "new_tokens": CODES * len(LEVELS),
        "prompt_tokens": {"min": min(lengths), "max": max(lengths), "mean": statistics.mean(lengths)},
        "seconds": seconds,
        "users_per_second": speed,
        "users_per_second_best": best,
        "speedup": ratio,
        "speedup_best": best_ratio,
        "lists_identical_fraction": identical,
        "top1_identical_fraction": same_top1,
        "max_score_gap_on_identical_lists": score_gap,
    }
    print(f"wrote {write_result(args.output, report)}")


if __name__ == "__main__":
    main()
