"""Peak memory of GTI's paths at Llama-3.1-8B's embedding shape, next to plain LoRA and PEFT TrainableTokens.

    python benchmarks/memory.py                 # every path, bf16 and 4-bit (CPU, ~10 min)
    python benchmarks/memory.py --validate      # the memory model against measured training peaks (3+ shapes)

The base is a 1-layer Llama with Llama-3.1-8B's embedding (128,256 x 4,096, untied, hidden 4,096, MLP 14,336),
random weights, 1,024 new tokens, LoRA r=16 on all linear layers. Each path runs in its own subprocess; reported
is the rise of the process's peak RSS (VmHWM, reset once the base is in memory) over the RSS of the loaded base:
what the path costs beyond the base's own bytes. Training: 3 AdamW steps, batch 1 x 256, logits at the last
16 positions. Targets (issue 16): GTI's build costs at most 10% of the embedding's bytes more than plain LoRA's,
and GTI's training peak is at or below TrainableTokens'. Result: benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import result_path, write_result

SHAPE = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 1, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 128_256}  # fmt: skip
NEW, RANK, SEQ, ANSWER, STEPS = 1024, 16, 256, 16, 3
GTI_PATHS = ("build", "train", "from_pretrained", "merge_and_unload", "save_merged", "export_for_peft",
             "save_for_hub", "diagnostics")  # fmt: skip
ARMS = {"gti": GTI_PATHS, "lora": ("build", "train"), "trainable_tokens": ("build", "train")}
# fixed: large blocks always mmapped and returned on free, so RSS follows the live tensors; default: glibc's dynamic
# threshold keeps freed blocks of up to 32 MB in the heap, and RSS also counts that retained memory
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
ALLOCATORS = {"fixed mmap threshold": FIXED_MMAP, "default": {}}
VALIDATION_SHAPES = [  # (config, batch, seq, dropout, gradient checkpointing): CPU, float32
    ({"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
      "num_key_value_heads": 4, "vocab_size": 32_000}, 4, 256, 0.0, False),
    ({"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 2, "num_attention_heads": 16,
      "num_key_value_heads": 4, "vocab_size": 50_000}, 2, 512, 0.05, False),
    ({"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 12,
      "num_key_value_heads": 4, "vocab_size": 32_000}, 8, 256, 0.0, True),
    ({"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 4,
      "num_key_value_heads": 2, "vocab_size": 49_152}, 8, 512, 0.05, False),
]  # fmt: skip


def _status(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS; return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _config(shape: dict):
    from transformers import LlamaConfig

    return LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=False)


def _base(quant: str, folder: Path, shape: dict | None = None, dtype=torch.bfloat16):
    from transformers import LlamaForCausalLM

    if quant == "4bit":
        from gti_peft.training.quantization import load_4bit_causal_lm

        return load_4bit_causal_lm(str(folder / "base"), compute_dtype=torch.bfloat16)
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    model = LlamaForCausalLM(_config(shape or SHAPE))
    torch.set_default_dtype(torch.float32)
    return model


def _tokenizer(size: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")), eos_token="t1")


def _adapter(arm: str, base, dropout: float = 0.0, r: int = RANK):
    from peft import LoraConfig, get_peft_model

    from gti_peft import GTIConfig

    vocab = base.config.vocab_size
    ids = list(range(vocab, vocab + NEW))
    lora = {"r": r, "lora_alpha": 2 * r, "lora_dropout": dropout, "target_modules": "all-linear"}
    if arm == "gti":
        return get_peft_model(base, GTIConfig(new_token_ids=ids, init="mean", **lora))
    base.resize_token_embeddings(vocab + NEW, mean_resizing=False)
    tokens = {"trainable_token_indices": {"embed_tokens": ids, "lm_head": ids}} if arm == "trainable_tokens" else {}
    return get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora, **tokens))


def _train(model, batch: int, seq: int, steps: int = STEPS) -> float:
    from gti_peft.training.trainer import answer_loss

    vocab = model.get_input_embeddings().weight.shape[0] if hasattr(model.get_input_embeddings(), "weight") else 0
    vocab = vocab or model.get_input_embeddings().base_weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (batch, seq), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[:, -ANSWER:] = ids[:, -ANSWER:]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for _ in range(steps):
        loss = answer_loss(model, {"input_ids": ids, "labels": labels})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def child(arm: str, path: str, quant: str, folder: Path) -> dict:
    import gti_peft
    from gti_peft.training import diagnostics

    tokenizer = _tokenizer(SHAPE["vocab_size"] + NEW)  # made before the measurement starts
    base = _base(quant, folder)
    base_rss = start_rss = _reset_peak()
    if path in ("build", "train"):
        model = _adapter(arm, base)
        if path == "train":
            start_rss = _reset_peak()
            _train(model, 1, SEQ)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, folder / f"adapter-{quant}")
        if path != "from_pretrained":
            start_rss = _reset_peak()
        out = Path(tempfile.mkdtemp(dir=folder)) / "out"
        if path == "merge_and_unload":
            model.merge_and_unload()
        elif path == "save_merged":
            gti_peft.save_merged(model, tokenizer, out)
        elif path == "export_for_peft":
            gti_peft.export_for_peft(model, tokenizer, out)
        elif path == "save_for_hub":
            gti_peft.save_for_hub(model, tokenizer, out)
        elif path == "diagnostics":
            ids, rows, _ = gti_peft.new_token_rows(model)
            old = model.get_input_embeddings().base_weight
            diagnostics.nearest_old_tokens(rows, old, k=10, exclude_ids=ids)
            diagnostics.summarize(rows, old_rows=old)
        shutil.rmtree(out.parent)  # a merged model is as large as the base
    peak = _status("VmHWM")  # rise: over the loaded base; own: over the RSS just before the measured call
    return {"rise_bytes": peak - base_rss, "own_bytes": peak - start_rss, "base_rss_bytes": base_rss}


def setup(folder: Path, quant: str) -> None:
    """Save the random base (for 4-bit loading) and a GTI adapter (for the reload paths), once."""
    if quant == "4bit" and not (folder / "base" / "config.json").exists():
        _base("bf16", folder).save_pretrained(folder / "base")
    if not (folder / f"adapter-{quant}" / "adapter_config.json").exists():
        _adapter("gti", _base(quant, folder)).save_pretrained(folder / f"adapter-{quant}")


def validate_child(index: int) -> dict:
    from gti_peft.training.memory import estimate_training_memory

    shape, batch, seq, dropout, checkpointing = VALIDATION_SHAPES[index]
    start = _reset_peak()
    model = _adapter("gti", _base("fp32", Path("."), shape, torch.float32), dropout=dropout, r=8)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    _reset_peak()
    _train(model, batch, seq, steps=2)
    measured = _status("VmHWM") - start
    estimate = estimate_training_memory(
        _config(shape), n_new_tokens=NEW, batch_size=batch, seq_len=seq, answer_tokens=ANSWER, dtype="float32",
        lora_r=8, lora_dropout=dropout, gradient_checkpointing=checkpointing,
    )  # fmt: skip
    return {"shape": shape, "batch": batch, "seq": seq, "lora_dropout": dropout, "gradient_checkpointing":
            checkpointing, "measured_bytes": measured, "predicted": estimate.breakdown(),
            "residual": estimate.total / measured - 1}  # fmt: skip


def _run(args: list[str], env: dict | None = None) -> dict:
    environment = os.environ | (env or {})
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=environment)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-1500:]}


def _bnb_on_cpu() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validate", action="store_true", help="Check the memory model at CPU shapes instead.")
    parser.add_argument("--quant", nargs="+", default=["bf16", "4bit"], choices=["bf16", "4bit"])
    parser.add_argument("--folder", default="/tmp/gti-memory-bench", help="Saved base and adapters.")
    parser.add_argument("--out", default=None, help="JSON result (default benchmarks/results/memory*.json).")
    parser.add_argument("--only", nargs="+", help="Run only these quant/arm/path keys, e.g. bf16/gti/build.")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--validate-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, folder)), flush=True)
        return
    if args.validate_child is not None:
        print("RESULT " + json.dumps(validate_child(args.validate_child)), flush=True)
        return
    if args.setup:
        setup(folder, args.setup)
        print("RESULT {}", flush=True)
        return
    results = {"shape": SHAPE, "new_tokens": NEW, "rank": RANK, "seq": SEQ}
    if args.validate:
        results["validation"] = {}
        for allocator, env in ALLOCATORS.items():
            rows = [_run(["--validate-child", str(i)], env) for i in range(len(VALIDATION_SHAPES))]
            results["validation"][allocator] = rows
            print(f"\nglibc malloc: {allocator}")
            print(f"{'shape':<44}{'measured GB':>12}{'predicted GB':>13}{'residual':>10}")
            for row in rows:
                if "error" in row:
                    print("error:", row["error"])
                    continue
                shape = row["shape"]
                label = f"h{shape['hidden_size']} L{shape['num_hidden_layers']} {row['batch']}x{row['seq']}"
                label += f" drop {row['lora_dropout']} gc {row['gradient_checkpointing']}"
                print(f"{label:<44}{row['measured_bytes'] / 1e9:12.3f}{row['predicted']['total'] / 1e9:13.3f}"
                      f"{row['residual']:+10.1%}")  # fmt: skip
        write_result(args.out or result_path("memory_model"), results)
        return
    folder.mkdir(parents=True, exist_ok=True)
    embedding_bytes = SHAPE["vocab_size"] * SHAPE["hidden_size"] * 2
    results |= {"embedding_bytes_bf16": embedding_bytes, "runs": {}}
    for quant in args.quant:
        if quant == "4bit" and not _bnb_on_cpu():
            print("4-bit skipped: bitsandbytes does not import here")
            continue
        setup_result = _run(["--folder", str(folder), "--setup", quant])
        if "error" in setup_result:
            print(f"setup {quant} failed:", setup_result["error"])
            continue
        for arm, paths in ARMS.items():
            for path in paths if quant == "bf16" else ("build", "train"):  # a quantized base is not merged
                key = f"{quant}/{arm}/{path}"
                if args.only and key not in args.only:
                    continue
                results["runs"][key] = _run(["--folder", str(folder), "--child", arm, path, quant])
                rise = results["runs"][key].get("rise_bytes")
                print(f"{key:<36}", f"{rise / 1e9:7.3f} GB" if rise is not None else results["runs"][key])
    results["targets"] = _targets(results["runs"], embedding_bytes)
    for name, ok in results["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    write_result(args.out or result_path("memory"), results)


def _targets(runs: dict, embedding_bytes: int) -> dict[str, bool]:
    targets = {}
    for quant in ("bf16", "4bit"):
        rise = {k.split("/", 1)[1]: v.get("rise_bytes") for k, v in runs.items() if k.startswith(quant + "/")}
        if rise.get("gti/build") is not None and rise.get("lora/build") is not None:
            targets[f"{quant}: GTI build <= plain LoRA build + 10% of the embedding"] = (
                rise["gti/build"] <= rise["lora/build"] + 0.1 * embedding_bytes
            )
        if rise.get("gti/train") is not None and rise.get("trainable_tokens/train") is not None:
            targets[f"{quant}: GTI training peak <= TrainableTokens'"] = (
                rise["gti/train"] <= rise["trainable_tokens/train"]
            )
    return targets


if __name__ == "__main__":
    main()
