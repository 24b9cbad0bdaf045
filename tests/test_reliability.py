"""Interruptions, determinism and several processes, on the tiny recipe run (subprocesses, like a user would)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ["--set", "output.stages=[ground,finetune]", "--set", "adapter.lora_dropout=0.0"]
# long enough that a kill after the first checkpoint lands mid-stage
LONGER = ["--set", "grounding.max_steps=8", "--set", "finetune.max_steps=12", "--set", "finetune.save_steps=4"]


def recipe_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "recipes" / "gti.py"), "--config", str(config), *TRAIN_ONLY, *extra]


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run_until(command: list[str], marker: Path, sig: int, timeout: float = 240, poll: float = 0.05) -> None:
    """Start the recipe and send `sig` once `marker` exists (a finished Trainer checkpoint; may be a glob)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env())
    deadline = time.monotonic() + timeout
    while not list(marker.parent.glob(marker.name)):
        assert process.poll() is None, f"the run ended before {marker.name} appeared (where it should be killed)"
        assert time.monotonic() < deadline, f"{marker.name} did not appear in time"
        time.sleep(poll)
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode != 0


def tamper_checkpoint(checkpoint: Path) -> None:
    """Shift the new rows saved in a Trainer checkpoint: a run that resumes from it cannot match the reference."""
    path = checkpoint / "adapter_model.safetensors"
    tensors = load_file(path)
    assert any("gti_rows" in k for k in tensors)
    save_file({k: v + 0.5 if "gti_rows" in k else v for k, v in tensors.items()}, path)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x - b[k]).abs().max().item() for k, x in a.items())


def adapter_tensors(out: Path, folder: str = "adapter") -> dict[str, torch.Tensor]:
    return load_file(out / folder / "adapter_model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> float:
    assert a.keys() == b.keys()
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    assert worst <= atol, worst
    return worst


def test_resuming_from_the_last_checkpoint_trains_no_step_past_max_steps(tmp_path):
    """A run killed after its last checkpoint (mid-epoch) but before saving resumes to that checkpoint exactly:
    transformers alone trains one more step there (global step 7 of 6, and a checkpoint-7)."""
    from conftest import tiny_llama
    from datasets import Dataset
    from transformers import TrainingArguments

    from gti_peft.training.trainer import AnswerOnlyTrainer

    ids = [[1, 5, 7, 2, 9, 11, 3, 4]] * 16  # 4 steps an epoch: step 6 is mid-epoch
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    options = {"max_steps": 6, "save_steps": 3, "per_device_train_batch_size": 4, "report_to": "none"}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, logging_steps=1, **options)
    finished = tiny_llama(True)
    AnswerOnlyTrainer(model=finished, args=args, train_dataset=data).train()
    resumed = tiny_llama(True)
    result = AnswerOnlyTrainer(model=resumed, args=args, train_dataset=data).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-6")
    )
    assert result.global_step == 6 and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), finished.parameters()))


@pytest.mark.slow
def test_killed_runs_resume_to_the_uninterrupted_result(tiny_run_files, tmp_path):
    reference = tmp_path / "reference"
    run(recipe_command(tiny_yaml(tiny_run_files, reference), *LONGER))
    # determinism: the same seed gives the same semantic IDs, grounded rows and adapter
    again = tmp_path / "again"
    run(recipe_command(tiny_yaml(tiny_run_files, again), *LONGER))
    assert (reference / "semantic_ids.safetensors").read_bytes() == (again / "semantic_ids.safetensors").read_bytes()
    assert_same(adapter_tensors(reference, "grounded"), adapter_tensors(again, "grounded"))
    assert_same(adapter_tensors(reference), adapter_tensors(again))

    interrupted = tmp_path / "interrupted"
    command = recipe_command(tiny_yaml(tiny_run_files, interrupted), *LONGER)
    # SIGTERM during grounding (after its checkpoint at step 2), SIGKILL during fine-tuning (after step 4)
    run_until(command, interrupted / "checkpoints-ground" / "checkpoint-2" / "trainer_state.json", signal.SIGTERM)
    assert not (interrupted / "grounded").exists()
    run_until(command, interrupted / "checkpoints-finetune" / "checkpoint-4" / "trainer_state.json", signal.SIGKILL)
    assert not (interrupted / "adapter").exists()
    assert not list(interrupted.glob(".adapter.tmp-*"))
    grounded_file = (interrupted / "grounded" / "adapter_model.safetensors").stat()

    # runs are deterministic, so matching the reference cannot tell resuming from restarting: a copy whose
    # checkpoint holds shifted rows must end elsewhere (a restart would ignore the checkpoint and match)
    tampered = tmp_path / "tampered"
    shutil.copytree(interrupted, tampered)
    tamper_checkpoint(tampered / "checkpoints-finetune" / "checkpoint-4")
    run(recipe_command(tiny_yaml(tiny_run_files, tampered), *LONGER))
    assert max_difference(adapter_tensors(reference), adapter_tensors(tampered)) > 0.1, "the checkpoint was not read"

    # SIGKILL while the adapter is being written: no half-written adapter under its name, ever
    run_until(command, interrupted / ".adapter.tmp-*", signal.SIGKILL, poll=0.002)
    adapter = interrupted / "adapter"
    assert not adapter.exists() or {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }
    left = set(interrupted.glob(".*"))  # what the kill left (its temporary folder)
    run(command)
    assert_same(adapter_tensors(reference, "grounded"), adapter_tensors(interrupted, "grounded"))
    assert_same(adapter_tensors(reference), adapter_tensors(interrupted))
    # the resumed runs never redid grounding (its folder is the one the second run wrote), and the next save of the
    # adapter removed what the killed writer left: no temporary folder remains
    now = (interrupted / "grounded" / "adapter_model.safetensors").stat()
    assert (now.st_ino, now.st_mtime_ns) == (grounded_file.st_ino, grounded_file.st_mtime_ns)
    assert all(path.name.startswith(".adapter.") for path in left)
    assert not list(interrupted.glob(".*"))


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tiny_run_files, tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU path is the simple launcher);
    # torchrun starts two gloo ranks, which Trainer/accelerate pick up as MULTI_CPU.
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    single = tmp_path / "single"
    run(recipe_command(tiny_yaml(tiny_run_files, single)))
    double = tmp_path / "double"
    launcher = [torchrun, "--nproc_per_node", "2", "--master_port", "29533"]
    command = recipe_command(tiny_yaml(tiny_run_files, double), "--set", "grounding.per_device_train_batch_size=2")
    run(launcher + command[1:] + ["--set", "finetune.per_device_train_batch_size=2"])
    worst = assert_same(adapter_tensors(single), adapter_tensors(double), atol=1e-4)
    print(f"two processes vs one: max abs difference of adapter tensors {worst:.2e}")
    # only the main process wrote: one adapter folder, no leftovers
    assert sorted(p.name for p in double.iterdir() if p.name.startswith(".")) == []


def test_a_save_removes_what_a_killed_writer_left_and_keeps_a_live_writers(tmp_path):
    from gti_peft.sharing.saving import write_folder_atomically

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    leftovers = [tmp_path / f".adapter.tmp-{dead_pid}-x1", tmp_path / f".adapter.old-{dead_pid}"]
    kept = [tmp_path / f".adapter.tmp-{live_pid}-x2", tmp_path / f".other.tmp-{dead_pid}-x3"]
    for folder in leftovers + kept:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
    write_folder_atomically(tmp_path / "adapter", lambda tmp: (tmp / "adapter_config.json").write_text("{}"))
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)  # a running writer's, and another folder's
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == "{}"
