"""One-GPU check of the SmolLM2 recipe's pieces in bf16 and 4-bit: step times, peak memory, Recommender users/s.

    python benchmarks/gpu_check.py                          # one CUDA GPU (sized for < 8 min; not yet run on one)
    python benchmarks/gpu_check.py --device cpu             # dry path: the same code, 2 steps, 16 users
    python benchmarks/gpu_check.py --device cpu --tiny      # the test suite's path: a tiny random Llama, 1 step

No Hub access: SmolLM2-135M-Instruct comes from the offline assets (docs/assets), MovieLens-100k from recbole's
files. For each arm (bf16 weights; NF4 4-bit weights with bf16 compute, bitsandbytes), a fresh base gets the
semantic-ID tokens and a GTI adapter (mean start, LoRA r=8 on all linear layers), then:

- grounding (`gti_peft.ground`, new rows only) and fine-tuning (`AnswerOnlyTrainer`, LoRA + rows) for
  `--steps` steps each at batch 16; the median step time leaves out the first (warm-up) step;
- peak CUDA memory of each stage (`torch.cuda.max_memory_allocated`) next to
  `gti_peft.training.memory.estimate_training_memory`'s prediction for the longest batch (CPU: prediction only);
- the trained adapter saved and loaded by `gti_peft.recsys.Recommender` (4-bit too for the 4-bit arm):
  users/s of `recommend(k=10)` on test users' histories.

The semantic IDs are residual k-means codes of seeded random vectors (3 levels x 32 codes): this checks speed
and memory, not quality. Result: benchmarks/results/gpu_check-<device>.json (`--output` to change).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, run_environment, write_result
from transformers import TrainerCallback

ARMS = ("bf16", "4bit")
TEXT_TO_TOKENS = ("title_to_tokens", "description_to_tokens", "title_description_to_tokens")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the dry path")
    parser.add_argument("--tiny", action="store_true", help="A tiny random Llama and 60 items (tests)")
    parser.add_argument("--steps", type=int, default=None, help="Steps per stage (default: 30 on cuda, 2 on cpu)")
    parser.add_argument("--users", type=int, default=None, help="Recommender users (default: 200 cuda, 16 cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--output", default=None, help="Default: benchmarks/results/gpu_check-<device>.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; run the dry path with --device cpu.")
    cpu = args.device == "cpu"
    args.steps = args.steps or (1 if args.tiny else 2 if cpu else 30)
    args.users = args.users or (4 if args.tiny else 16 if cpu else 200)
    if args.steps < 1 or args.users < 1 or args.batch_size < 1:
        parser.error(
            f"--steps, --users and --batch-size must be >= 1, got {args.steps}, {args.users}, {args.batch_size}."
        )
    tag = f"{args.device}-tiny" if args.tiny else args.device
    args.output = Path(args.output or RESULTS / f"gpu_check-{tag}.json")
    return args


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (CUDA synchronized)."""

    def __init__(self):
        self.seconds: list[float] = []

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self) -> dict:
        timed = self.seconds[1:] or self.seconds  # the first step warms up kernels and allocators
        return {"steps": len(self.seconds), "median_step_s": statistics.median(timed), "step_s": self.seconds}


def catalog(tiny: bool):
    """MovieLens-100k (the first 60 items for --tiny), its leave-one-out split and random-vector semantic IDs."""
    from gti_peft.recsys import SemanticIDs, leave_one_out, load_movielens_100k, user_histories

    interactions, items = load_movielens_100k()
    if tiny:
        items = items.select(range(60))
        keep = set(items["item"])
        interactions = interactions.filter(lambda row: row["item"] in keep)
    histories = user_histories(interactions, items, min_interactions=3)
    levels, codes = (2, 4) if tiny else (3, 32)
    vectors = torch.randn(len(items), 32, generator=torch.Generator().manual_seed(0))
    sids = SemanticIDs.from_embeddings(list(items["item"]), vectors, levels, codes, seed=0)
    return items, leave_one_out(histories, max_history=5), sids


def base_folder(tiny: bool, work: Path) -> str:
    """The base's folder: SmolLM2-135M-Instruct from the offline assets, or a tiny random Llama (SmolLM2 tokenizer)."""
    from transformers import AutoTokenizer

    from gti_peft.assets.offline import smollm2_path

    if not tiny:
        return smollm2_path()
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(work / "tiny")
    tokenizer.save_pretrained(work / "tiny")
    return str(work / "tiny")


def build_model(folder: str, arm: str, device: str, sids):
    """Base (bf16, or NF4 with bf16 compute) + the semantic-ID tokens + a GTI adapter (mean start)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gti_peft import GTIConfig, add_new_tokens
    from gti_peft.training.quantization import load_4bit_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    new_ids = add_new_tokens(tokenizer, sids.vocabulary())
    if arm == "4bit":
        base = load_4bit_causal_lm(folder, compute_dtype=torch.bfloat16, device_map={"": device})
    else:
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    config = GTIConfig(new_token_ids=new_ids, init="mean", r=8, lora_alpha=32, target_modules="all-linear")
    return tokenizer, get_peft_model(base, config)


def finetune_rows(tokenizer, split, sids, count: int, max_length: int = 160) -> list[dict]:
    """`count` next-item examples as the SmolLM2 recipe writes them (plain prompts, IDs without separators)."""
    from gti_peft.recsys import recommendation_messages, training_examples
    from gti_peft.training.templates import encode_prompt_answer

    ids = sids.to_dict()
    rows = []
    for example in training_examples(split.train, max_history=5)[:count]:
        prompt = recommendation_messages([ids[i] for i in example["history"]], separator="")[0]["content"]
        rows.append(encode_prompt_answer(tokenizer, prompt, ids[example["target"]], max_length, "plain"))
    return rows


def _peak_and_reset(device: str) -> int | None:
    if device != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return int(peak)


def predicted_peak(model, arm: str, n_new: int, batch: int, seq_len: int, answer_tokens: int) -> dict:
    from gti_peft.training.memory import estimate_training_memory

    estimate = estimate_training_memory(
        model.get_base_model().config, n_new_tokens=n_new, batch_size=batch, seq_len=seq_len,
        answer_tokens=answer_tokens, dtype="bfloat16", load_in_4bit=arm == "4bit", lora_r=8,
    )  # fmt: skip
    return estimate.breakdown()


def train_stages(model, tokenizer, items, split, sids, args, work: Path) -> dict:
    """Grounding, then fine-tuning, `args.steps` steps each: step times and peak memory."""
    from datasets import Dataset

    from gti_peft import ground
    from gti_peft.recsys import grounding_pairs
    from gti_peft.training.templates import DEFAULT_TEMPLATES
    from gti_peft.training.trainer import AnswerOnlyTrainer, answer_collator

    common = dict(
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, bf16=True, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=args.device == "cpu", dataloader_pin_memory=False,
    )  # fmt: skip
    results = {}
    _peak_and_reset(args.device)
    timer = StepTimer()
    templates = [t for t in DEFAULT_TEMPLATES if t.name in TEXT_TO_TOKENS]
    ground(
        model, tokenizer, grounding_pairs(items, sids), templates, prompt_style="plain", max_length=160,
        learning_rate=1e-2, output_dir=str(work / "ground"), callbacks=[timer], eval_examples_per_template=4,
        **common,
    )  # fmt: skip
    results["grounding"] = timer.summary() | {"peak_cuda_bytes": _peak_and_reset(args.device)}

    rows = finetune_rows(tokenizer, split, sids, count=max(2 * args.batch_size * args.steps, 64))
    timer = StepTimer()
    trainer = AnswerOnlyTrainer(
        model=model,
        args=_training_args(work / "finetune", learning_rate=1e-3, **common),
        train_dataset=Dataset.from_list(rows),
        data_collator=answer_collator(tokenizer),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    results["finetune"] = timer.summary() | {"peak_cuda_bytes": _peak_and_reset(args.device)}
    longest = max(len(r["input_ids"]) for r in rows)
    answers = args.batch_size * max(sum(label != -100 for label in r["labels"]) for r in rows)
    n_new = len(sids.vocabulary())
    results["finetune"]["predicted"] = predicted_peak(model, args.arm, n_new, args.batch_size, longest, answers)
    results["finetune"]["predicted_for"] = {"seq_len": longest, "answer_tokens": answers}
    return results


def _training_args(output_dir: Path, **options):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), **options)


def recommender_speed(model, tokenizer, sids, items, split, args, work: Path) -> dict:
    """Save the adapter, load it with `Recommender`, and time `recommend(k=10)` on test histories."""
    from gti_peft.recsys.recommender import PromptSettings, Recommender

    folder = work / f"adapter-{args.arm}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sids.save(folder)
    PromptSettings(prompt_style="plain", history_separator="", max_history=5, num_beams=10).save(folder)
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    recommender = Recommender.from_pretrained(
        str(folder), device=args.device, dtype=torch.bfloat16, load_in_4bit=args.arm == "4bit"
    )
    histories = [example["history"] for example in split.test[: args.users]]
    recommender.recommend(histories[:2], k=10)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ranked = recommender.recommend(histories, k=10)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert all(len(r) == 10 for r in ranked), "Recommender returned fewer than 10 items for some user"
    return {"users": len(histories), "seconds": seconds, "users_per_s": len(histories) / seconds}


def run_arm(arm: str, args, items, split, sids, work: Path) -> dict:
    args.arm = arm
    start = time.perf_counter()
    folder = base_folder(args.tiny, work / arm)
    tokenizer, model = build_model(folder, arm, args.device, sids)
    result = train_stages(model, tokenizer, items, split, sids, args, work / arm)
    result["recommender"] = recommender_speed(model, tokenizer, sids, items, split, args, work / arm)
    result["wall_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    items, split, sids = catalog(args.tiny)
    report = {
        "environment": run_environment(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": "tiny random Llama (SmolLM2 tokenizer)" if args.tiny else "SmolLM2-135M-Instruct (offline assets)",
        "catalog": {"items": len(items), "new_tokens": len(sids.vocabulary()), "test_users": len(split.test)},
        "arms": {},
    }
    with tempfile.TemporaryDirectory(prefix="gti-gpu-check-") as work:
        for arm in args.arms:
            report["arms"][arm] = run_arm(arm, args, items, split, sids, Path(work))
            print(format_arm(arm, report["arms"][arm]), flush=True)
    report["wall_s"] = time.perf_counter() - start
    write_result(args.output, report, environment=False)  # its environment is recorded above
    print(f"wall {report['wall_s']:.0f} s -> {args.output}")
    return report


def format_arm(arm: str, result: dict) -> str:
    def peak(stage):
        measured = result[stage]["peak_cuda_bytes"]
        return "n/a (CPU)" if measured is None else f"{measured / 1e9:.2f} GB"

    predicted = result["finetune"]["predicted"]["total"] / 1e9
    return (
        f"{arm}: grounding {result['grounding']['median_step_s']:.3f} s/step (peak {peak('grounding')}), "
        f"fine-tuning {result['finetune']['median_step_s']:.3f} s/step (peak {peak('finetune')}, predicted "
        f"{predicted:.2f} GB), Recommender {result['recommender']['users_per_s']:.1f} users/s"
    )


if __name__ == "__main__":
    main()
