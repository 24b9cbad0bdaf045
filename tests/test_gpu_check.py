"""benchmarks/gpu_check.py's CPU dry path: both arms (bf16, 4-bit) ground, fine-tune and serve a Recommender."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmark scripts import their sibling `common`
import gpu_check  # noqa: E402


def test_the_cpu_dry_path_runs_both_arms_and_writes_its_report(tmp_path):
    output = tmp_path / "gpu_check.json"
    gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--users", "2", "--output", str(output)])
    report = json.loads(output.read_text())
    assert set(report["arms"]) == {"bf16", "4bit"} and report["environment"]["cpu_instruction_sets"] is not None
    for result in report["arms"].values():
        for stage in ("grounding", "finetune"):
            assert result[stage]["steps"] == 1 and result[stage]["median_step_s"] > 0
            assert result[stage]["peak_cuda_bytes"] is None  # no CUDA peak on the dry path
        predicted = result["finetune"]["predicted"]
        assert predicted["total"] == sum(v for k, v in predicted.items() if k != "total") > 0
        assert result["recommender"]["users"] == 2 and result["recommender"]["users_per_s"] > 0
    # the 4-bit arm's weights are predicted smaller than the bf16 arm's
    assert (
        report["arms"]["4bit"]["finetune"]["predicted"]["weights"]
        < report["arms"]["bf16"]["finetune"]["predicted"]["weights"]
    )


@pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason="a GPU is visible: --device cuda is valid here")
def test_asking_for_cuda_without_a_gpu_says_what_to_run(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cuda"])
    assert "no CUDA device is visible here; run the dry path with --device cpu" in capsys.readouterr().err
