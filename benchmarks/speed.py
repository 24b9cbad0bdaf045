"""Speed and memory in one run: our training step against a stock Trainer + PEFT step, and the sub-benchmarks.

    .venv/bin/python benchmarks/speed.py                    # all parts, ~20 min on 2 cores
    .venv/bin/python benchmarks/speed.py --parts trainer    # one part

Parts (run in this order, each result kept in benchmarks/results/speed.json):
  trainer   SmolLM2-135M on the recipe's real fine-tuning batches (16 x ~77 tokens), interleaved rounds:
            stock  = `transformers.Trainer` + PEFT `LoraConfig(trainable_token_indices=new_ids)`, labels -> loss
                     over the full 49k-token head, fp32 (what a PEFT user writes today);
            ours   = `AnswerOnlyTrainer` + `GTIConfig`: logits only at answer positions, optimizer state only for
                     the new rows, fp32 and bf16 autocast (where the CPU has bf16 instructions);
            plus the grounding step (`gti_peft.ground`, only the new rows train). Same init, so the first batch's
            loss must agree: it is printed for every arm. The recipe's lora_dropout (0.05) costs a large share of
            a CPU step (random masks for every LoRA input), so a second stock/ours pair runs with lora_dropout 0:
            each arm's speed-up is against the stock arm at the same LoRA settings.
  layers    benchmarks/new_token_layers.py: LoRA vs TrainableTokens vs GTI step, peak memory and adapter bytes on
            SmolLM2 and a 128k-vocabulary config (its own JSON: new_token_layers.json).
  decoding  benchmarks/constrained_decoding.py at the recipe's 20 beams (its own JSON: constrained_decoding.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, load_result, result_path, write_result
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from gti_peft import ground
from gti_peft.recipe.config import load_recipe_config
from gti_peft.recipe.data import finetune_dataset, load_data, semantic_ids_stage
from gti_peft.recipe.model import build_model, load_base
from gti_peft.recsys import grounding_pairs
from gti_peft.training.precision import bf16_is_faster
from gti_peft.training.trainer import AnswerOnlyTrainer, answer_collator, answer_loss

CONFIG = ROOT / "recipes" / "smollm2-135m" / "movielens.yaml"
STOCK = "stock Trainer + PEFT TrainableTokens, fp32"


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward, backward, optimizer)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def stock_model(config, tokenizer, new_ids: list[int]):
    """The base resized, new rows at the mean of the old rows (as GTI's `init="mean"`), PEFT LoRA + TrainableTokens."""
    _, base = load_base(config)
    old = base.get_input_embeddings().weight.shape[0]
    base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = base.get_input_embeddings().weight
        weight[old:] = weight[:old].mean(0)
    a = config.adapter
    lora = LoraConfig(
        r=a.r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=a.target_modules,
        trainable_token_indices=new_ids,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora)


def trainer_part(args) -> dict:
    config = load_recipe_config(CONFIG, ["output.output_dir=outputs/benchmarks/speed"])
    data = load_data(config)
    out = Path(config.output.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from accelerate import PartialState

    sids = semantic_ids_stage(config, data, out, PartialState())
    no_dropout = load_recipe_config(CONFIG, ["output.output_dir=outputs/benchmarks/speed", "adapter.lora_dropout=0.0"])
    models = {}
    for key, cfg in (("dropout", config), ("no dropout", no_dropout)):
        torch.manual_seed(0)
        tokenizer, gti = build_model(cfg, sids, data, None)
        new_ids = tokenizer.convert_tokens_to_ids(sids.vocabulary())
        torch.manual_seed(0)
        models[key] = (stock_model(cfg, tokenizer, new_ids), gti)
    stock, gti = models["dropout"]
    train = finetune_dataset(config, tokenizer, sids, data)
    collator = answer_collator(tokenizer)
    batch = collator([train[i] for i in range(config.finetune.per_device_train_batch_size)])

    bf16 = bf16_is_faster()
    losses = {}
    with torch.no_grad():
        stock.eval()
        gti.eval()
        losses["stock fp32"] = stock(**batch).loss.item()
        losses["ours fp32"] = answer_loss(gti, batch).item()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses["ours bf16"] = answer_loss(gti, batch).item()
    print("first-batch loss:", losses, flush=True)

    pairs = grounding_pairs(data.items, sids)
    templates = config.grounding.grounding_templates()
    stock_name, stock0_name = STOCK, f"{STOCK}, lora_dropout 0"
    # name: (trainer class, model, bf16, the stock arm at the same LoRA settings)
    arms = {
        stock_name: (Trainer, stock, False, stock_name),
        "ours (GTI + answer-only logits), fp32": (AnswerOnlyTrainer, gti, False, stock_name),
        "ours (GTI + answer-only logits), bf16": (AnswerOnlyTrainer, gti, True, stock_name),
        stock0_name: (Trainer, models["no dropout"][0], False, stock0_name),
        "ours, bf16, lora_dropout 0": (AnswerOnlyTrainer, models["no dropout"][1], True, stock0_name),
    }
    if not bf16:
        arms = {name: arm for name, arm in arms.items() if not arm[2]}
    times = {name: [] for name in [*arms, "grounding step (ours)"]}
    tmp = tempfile.mkdtemp(prefix="gti-speed-")
    common = {
        "output_dir": tmp,
        "per_device_train_batch_size": config.finetune.per_device_train_batch_size,
        "max_steps": args.steps_per_round,
        "learning_rate": 1e-4,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "logging_strategy": "no",
        "remove_unused_columns": False,
        "use_cpu": not torch.cuda.is_available(),
    }
    for round_ in range(args.rounds):
        names = list(times)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotate the order every round
        for name in names:
            timer = StepTimer()
            if name == "grounding step (ours)":
                options = {k: v for k, v in common.items() if k != "logging_strategy"}
                options |= {"bf16": bf16, "learning_rate": config.grounding.learning_rate}
                ground(gti, tokenizer, pairs, templates, eval_examples_per_template=1, callbacks=[timer], **options)
            else:
                trainer_cls, model, use_bf16, _ = arms[name]
                model.train()
                trainer = trainer_cls(
                    model=model,
                    args=TrainingArguments(**common, bf16=use_bf16),
                    train_dataset=train,
                    data_collator=collator,
                    callbacks=[timer],
                )
                trainer.train()
            times[name] += timer.times[1:]  # the first step of a round builds the optimizer state
            print(f"round {round_}: {name}: {statistics.median(timer.times[1:]):.2f} s/step", flush=True)
    rows = {}
    for name, t in times.items():
        baseline = arms[name][3] if name in arms else stock_name
        rows[name] = {
            "median_s": statistics.median(t),
            "steps": len(t),
            "vs": baseline,
            "speedup_vs_stock": statistics.median(times[baseline]) / statistics.median(t),
        }
    shapes = [len(train[i]["input_ids"]) for i in range(len(train))]
    return {
        "rows": rows,
        "first_batch_loss": losses,
        "bf16_instructions": bf16,
        "batch": config.finetune.per_device_train_batch_size,
        "mean_tokens_per_example": sum(shapes) / len(shapes),
        "lora_dropout": config.adapter.lora_dropout,
        "vocab": len(tokenizer),
        "new_tokens": len(new_ids),
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
    }


def subprocess_part(script: str, extra: list[str]) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *extra], check=True)
    name = script.removesuffix(".py")
    json_path = result_path(name).relative_to(ROOT)
    return {"json": str(json_path), "wall_s": time.perf_counter() - start, "args": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="trainer,layers,decoding")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=4, help="the first of each round is not timed")
    parser.add_argument("--out", default=str(result_path("speed")))
    args = parser.parse_args()
    path = Path(args.out)
    results = load_result(path) or {}
    for part in args.parts.split(","):
        if part == "trainer":
            results["trainer"] = trainer_part(args)
        elif part == "layers":
            results["layers"] = subprocess_part("new_token_layers.py", [])
        elif part == "decoding":
            results["decoding"] = subprocess_part("constrained_decoding.py", ["--num-beams", "20", "--users", "40"])
        else:
            raise ValueError(f"--parts has unknown part {part!r}; known: trainer, layers, decoding.")
        write_result(path, results)
    print(json.dumps(results.get("trainer", {}).get("rows", {}), indent=2))


if __name__ == "__main__":
    main()
