"""GPU only: peak memory and step time of QLoRA on an 8B-shape base with 1,024 new tokens, GTI vs TrainableTokens.

    python benchmarks/gpu_memory.py                    # one GPU, < 10 min (goal: peak < 16 GB)
    python benchmarks/gpu_memory.py --shape tiny       # the same code path on a tiny config (CPU: no 4-bit)

The base has Llama-3.1-8B's shape (hidden 4,096, 32 layers, vocabulary 128,256, untied) and random weights: it is
built on the GPU in bf16, saved once to `--folder` (nothing is downloaded), then loaded in NF4 with double
quantization like a real QLoRA run. Each arm runs in a fresh subprocess: LoRA r=16 on all linear layers plus
the 1,024 new rows (embedding and head: the base is untied), gradient checkpointing, batch 1 x 512 tokens (a
quarter of them new ids), paged AdamW 8-bit on GPU. Reported: median step time and
`torch.cuda.max_memory_allocated` / `max_memory_reserved`, next to
`gti_peft.training.memory.estimate_training_memory`'s prediction for the GTI arm (and the residual). Without a
GPU the 8B shape exits at once, saying so.
Result: benchmarks/results/gpu_memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import result_path, write_result
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SHAPES = {
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128_256},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 4096},
}  # fmt: skip
NEW_TOKENS, SEQ, RANK = 1024, 512, 16
CUDA = torch.cuda.is_available()


def build_base(shape: str, folder: Path) -> None:
    """A random base of the shape, saved in bf16 (skipped when the folder holds one)."""
    if (folder / "config.json").exists():
        return
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=5e5)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if CUDA else "cpu"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    del model


def child(arm: str, folder: Path, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from gti_peft import GTIConfig
    from gti_peft.training.quantization import load_4bit_causal_lm

    if CUDA:
        base = load_4bit_causal_lm(str(folder), compute_dtype=torch.bfloat16, device_map={"": 0})
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    else:
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        base.gradient_checkpointing_enable()
    vocab = base.config.vocab_size
    new_ids = list(range(vocab, vocab + NEW_TOKENS))
    lora = {"r": RANK, "lora_alpha": 2 * RANK, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
    if arm == "gti":
        model = get_peft_model(base, GTIConfig(new_token_ids=new_ids, init="mean", **lora))
    else:
        base.resize_token_embeddings(vocab + NEW_TOKENS)
        tt_targets = {"embed_tokens": new_ids, "lm_head": new_ids}  # untied: the head's new rows train too
        model = get_peft_model(base, LoraConfig(trainable_token_indices=tt_targets, **lora))
    params = [p for p in model.parameters() if p.requires_grad]
    if CUDA:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    device = "cuda" if CUDA else "cpu"
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (1, SEQ), generator=generator)
    new_positions = torch.rand(1, SEQ, generator=generator) < 0.25
    ids[new_positions] = torch.randint(vocab, vocab + NEW_TOKENS, (int(new_positions.sum()),), generator=generator)
    ids = ids.to(device)
    times = []
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    gib = 2**30
    return {
        "arm": arm,
        "median_step_s": statistics.median(times[2:] or times),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / gib if CUDA else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / gib if CUDA else None,
        "trainable_params": sum(p.numel() for p in params),
        "loss": loss.item(),
    }


def predict(shape: str) -> dict:
    """The memory model's breakdown (bytes) for the GTI arm's settings."""
    from gti_peft.training.memory import estimate_training_memory

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=False)
    estimate = estimate_training_memory(
        config, n_new_tokens=NEW_TOKENS, batch_size=1, seq_len=SEQ, dtype="bfloat16" if CUDA else "float32",
        load_in_4bit=CUDA, lora_r=RANK, optimizer="paged_adamw_8bit" if CUDA else "adamw",
        gradient_checkpointing=True,
    )  # fmt: skip
    return estimate.breakdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--folder", default="/tmp/gti-random-base", help="Where the random base is saved once.")
    parser.add_argument("--steps", type=int, default=6, help="Steps per arm; the first two are not timed.")
    parser.add_argument("--out", default=str(result_path("gpu_memory")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder) / args.shape
    if args.child:
        print("RESULT " + json.dumps(child(args.child, folder, args.steps)), flush=True)
        return
    if args.shape == "8b" and not CUDA:
        print("No CUDA GPU here: nothing measured (--shape 8b needs one; --shape tiny is a CPU smoke run).")
        return
    start = time.perf_counter()
    build_base(args.shape, folder)
    results = {"shape": args.shape, "seq": SEQ, "rank": RANK, "new_tokens": NEW_TOKENS, "arms": {}}
    results["build_s"] = time.perf_counter() - start
    results["device"] = torch.cuda.get_device_name() if CUDA else "cpu"
    for arm in ("gti", "trainable_tokens"):
        cmd = [sys.executable, __file__, "--shape", args.shape, "--folder", args.folder, "--steps", str(args.steps)]
        proc = subprocess.run([*cmd, "--child", arm], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        results["arms"][arm] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]}
        print(arm, results["arms"][arm], flush=True)
    gti, tt = results["arms"]["gti"], results["arms"]["trainable_tokens"]
    results["prediction"] = predict(args.shape)
    if CUDA and "error" not in gti:
        predicted = results["prediction"]["total"] / 2**30
        results["predicted_vs_measured_gti"] = {
            "predicted_gib": predicted,
            "measured_gib": gti["peak_allocated_gib"],
            "residual": predicted / gti["peak_allocated_gib"] - 1,
        }
    if CUDA and "error" not in gti and "error" not in tt:
        results["gti_fits_16_gib"] = gti["peak_allocated_gib"] < 16
        results["memory_ratio_gti_vs_tt"] = gti["peak_allocated_gib"] / tt["peak_allocated_gib"]
        results["step_ratio_gti_vs_tt"] = gti["median_step_s"] / tt["median_step_s"]
    write_result(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
