"""Training-step time, peak memory and adapter size: plain LoRA vs PEFT's TrainableTokens vs GTI.

Arms (LoRA r=8, alpha=32, all-linear in each):
  lora              (a) plain LoRA, base resized to the same vocabulary, no new rows trained
  trainable_tokens  (b) LoraConfig(trainable_token_indices=new_ids), base resized with resize_token_embeddings
  gti               (c) GTIConfig(new_token_ids=new_ids, init="mean"), base NOT pre-resized (get_peft_model resizes)
Models: `large` = random Llama, vocab 128,256, hidden 256, 2 layers, TIED embeddings (like Llama 3.2 1B/3B),
1,024 new tokens; `large-untied` = the same untied; `smollm2` = real SmolLM2-135M-Instruct (tied), 768 new tokens.
Batch: random ids, `--new-frac` of positions new ids, labels = input ids, fp32, AdamW (forward+backward+step).

Timing: one process builds the three arms, warms each up, then steps them round-robin (order rotated every
round) for `--repeats` rounds; median step time is reported. Memory: each arm runs in a fresh subprocess (this
script with `--child`); after building, the kernel's peak RSS (VmHWM) is reset via /proc/self/clear_refs and the
peak increase over the post-build RSS across `--mem-steps` steps (AdamW state included) is reported (fallback:
ru_maxrss delta). On CUDA: max_memory_allocated - memory_allocated. Adapter size: bytes of the save_pretrained
folder; the base's name_or_path holds its unresized config (as a Hub model would), so (b) uses PEFT's default
save_embedding_layers="auto"; (a) saves with save_embedding_layers=False (a plain LoRA adapter); (c) default.

Usage:
  .venv/bin/python benchmarks/new_token_layers.py                      # large, large-untied, smollm2
  .venv/bin/python benchmarks/new_token_layers.py --models large --repeats 9 --warmup 2
  .venv/bin/python benchmarks/new_token_layers.py --quick              # tiny smoke run
  .venv/bin/python benchmarks/new_token_layers.py --threads 1          # steadier when other jobs share the CPU
Results: printed Markdown table + benchmarks/results/new_token_layers.json (`--out`).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import result_path, write_result
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import gti_peft
from gti_peft.assets.offline import smollm2_path

ARMS = ("lora", "trainable_tokens", "gti")
LORA = {"r": 8, "lora_alpha": 32, "target_modules": "all-linear"}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TMP = tempfile.TemporaryDirectory(prefix="gti-bench-")  # unresized configs, removed at exit


def llama_config(spec: dict, tied: bool) -> LlamaConfig:
    q = spec["quick"]
    return LlamaConfig(
        vocab_size=4096 if q else 128_256,
        hidden_size=64 if q else 256,
        intermediate_size=128 if q else 1024,
        num_hidden_layers=1 if q else 2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(spec["seq"], 128),
        tie_word_embeddings=tied,
    )


def load_base(key: str, spec: dict) -> tuple[torch.nn.Module, int]:
    """The base model (unresized) and its number of new tokens."""
    if key == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32)
        return model, 64 if spec["quick"] else 768
    config = llama_config(spec, tied=key == "large")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    folder = str(Path(_TMP.name) / key)  # holds the unresized config, so PEFT's "auto" save sees the resize
    config.save_pretrained(folder)
    model.name_or_path = model.config._name_or_path = folder
    return model, 64 if spec["quick"] else 1024


def build(key: str, arm: str, spec: dict):
    """(peft model on DEVICE, AdamW, batch) for one arm."""
    base, n_new = load_base(key, spec)
    n_old = base.get_input_embeddings().weight.shape[0]
    new_ids = list(range(n_old, n_old + n_new))
    if arm == "gti":
        config = gti_peft.GTIConfig(new_token_ids=new_ids, init="mean", **LORA)
    else:
        base.resize_token_embeddings(n_old + n_new, mean_resizing=False)
        config = LoraConfig(**LORA, trainable_token_indices=new_ids if arm == "trainable_tokens" else None)
    model = get_peft_model(base, config).to(DEVICE)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    shape = (spec["batch"], spec["seq"])
    ids = torch.randint(0, n_old, shape, generator=gen)
    is_new = torch.rand(shape, generator=gen) < spec["new_frac"]
    ids[is_new] = torch.randint(n_old, n_old + n_new, shape, generator=gen)[is_new]
    return model, opt, ids.to(DEVICE)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, ids: torch.Tensor) -> float:
    sync()
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sync()
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def child(key: str, arm: str, spec: dict) -> dict:
    """Peak memory of `mem_steps` training steps and the adapter size, in this (fresh) process."""
    model, opt, ids = build(key, arm, spec)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.detach().sum()  # fault in mmap-loaded weights now, so they do not count as step memory
    gc.collect()
    if DEVICE == "cuda":
        method = "cuda max_memory_allocated - memory_allocated after build"
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            method, before = "VmHWM after /proc/self/clear_refs reset - VmRSS after build", _status_kib("VmRSS") * 1024
        except OSError:
            method = "ru_maxrss after steps - ru_maxrss after build (may hide under a build peak)"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(spec["mem_steps"]):
        train_step(model, opt, ids)
    if DEVICE == "cuda":
        peak, total = torch.cuda.max_memory_allocated() - before, torch.cuda.max_memory_allocated()
    elif method.startswith("VmHWM"):
        total = _status_kib("VmHWM") * 1024
        peak = total - before
    else:
        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = total - before
    with tempfile.TemporaryDirectory() as folder:
        kwargs = {"save_embedding_layers": False} if arm == "lora" else {}
        model.save_pretrained(folder, **kwargs)
        files = {p.name: p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "peak_increase_bytes": peak,
        "peak_total_bytes": total,
        "memory_method": method,
        "adapter_bytes": sum(files.values()),
        "adapter_files": files,
        "trainable_params": trainable,
    }


def measure_memory(key: str, spec: dict) -> dict:
    out = {}
    for arm in ARMS:
        cmd = [sys.executable, __file__, "--child", json.dumps({**spec, "model": key, "arm": arm})]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"child {key}/{arm} failed:\n{proc.stderr[-4000:]}")
        out[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory {key}/{arm}: {out[arm]['peak_increase_bytes'] / 2**20:.0f} MiB", flush=True)
    return out


def measure_time(key: str, spec: dict) -> dict:
    runs = {arm: build(key, arm, spec) for arm in ARMS}
    for arm in ARMS:
        for _ in range(spec["warmup"]):
            train_step(*runs[arm])
    times = {arm: [] for arm in ARMS}
    for r in range(spec["repeats"]):
        order = ARMS[r % 3 :] + ARMS[: r % 3]
        for arm in order:
            times[arm].append(train_step(*runs[arm]))
        print(f"  round {r + 1}/{spec['repeats']}: " + ", ".join(f"{a} {times[a][-1]:.3f}s" for a in ARMS), flush=True)
    del runs
    gc.collect()
    return times


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else platform.processor()


def loadavg() -> list[str] | None:
    return Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None


def report(results: dict) -> tuple[str, list[str]]:
    lines = [
        "| model | arm | median step s | ratio vs plain LoRA | peak MiB | adapter MB |",
        "|---|---|---|---|---|---|",
    ]
    checks = []
    for key, res in results.items():
        med = {arm: statistics.median(res["times"][arm]) for arm in ARMS}
        mem = res["memory"]
        for arm in ARMS:
            lines.append(
                f"| {key} | {arm} | {med[arm]:.3f} | {med[arm] / med['lora']:.3f} | "
                f"{mem[arm]['peak_increase_bytes'] / 2**20:.0f} | {mem[arm]['adapter_bytes'] / 1e6:.2f} |"
            )
        res["median_s"] = med
        res["ratios"] = {
            "gti/lora": med["gti"] / med["lora"],
            "gti/trainable_tokens": med["gti"] / med["trainable_tokens"],
        }
        targets = {
            "step gti/lora <= 1.05": res["ratios"]["gti/lora"] <= 1.05,
            "step gti < trainable_tokens": med["gti"] < med["trainable_tokens"],
            "peak gti < trainable_tokens": mem["gti"]["peak_increase_bytes"]
            < mem["trainable_tokens"]["peak_increase_bytes"],
        }
        res["targets"] = targets
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in res["ratios"].items())
        checks.append(
            f"{key} ({ratios}): " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in targets.items())
        )
    return "\n".join(lines), checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="large,large-untied,smollm2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-frac", type=float, default=0.25, help="share of positions holding new ids")
    parser.add_argument("--mem-steps", type=int, default=2, help="steps per memory subprocess")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes for a smoke run")
    parser.add_argument("--out", default=str(result_path("new_token_layers")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        print(json.dumps(child(spec["model"], spec["arm"], spec)))
        return
    if args.quick:
        args.batch, args.seq, args.repeats, args.warmup, args.mem_steps = 2, 16, 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = ("batch", "seq", "new_frac", "mem_steps", "repeats", "warmup", "quick", "threads")
    spec = {k: getattr(args, k) for k in keys}
    results, load_start = {}, loadavg()
    for key in args.models.split(","):
        if key not in ("large", "large-untied", "smollm2"):
            parser.error(f"unknown model {key!r}")
        print(f"[{key}] memory (fresh subprocess per arm)", flush=True)
        memory = measure_memory(key, spec)
        print(f"[{key}] timing (interleaved, {args.repeats} rounds after {args.warmup} warm-up)", flush=True)
        results[key] = {"memory": memory, "times": measure_time(key, spec)}
    table, checks = report(results)
    print("\n" + table + "\n\nTargets:\n" + "\n".join(checks))
    record = {
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "loadavg_start_end": [load_start, loadavg()],
        "settings": {**spec, "lora": LORA, "dtype": "float32", "optimizer": "AdamW(lr=1e-4)"},
        "models": {
            "large": "random LlamaForCausalLM: " + llama_config(spec, True).to_json_string(use_diff=True),
            "large-untied": "same as large with tie_word_embeddings=False",
            "smollm2": "SmolLM2-135M-Instruct fp32 (tied, vocab 49152)",
        },
        "results": results,
        "table_markdown": table,
        "targets": checks,
    }
    write_result(args.out, record)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
