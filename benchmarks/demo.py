"""`make demo`, measured: the default recipe, and the same settings without grounding (one seed each).

    .venv/bin/python benchmarks/demo.py      # ~25 min on 2 cores; a finished run is not run again
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        .venv/bin/python benchmarks/demo.py --tag avx2 --runs gti   # the demo on an AVX2-only CPU, approximately

Each run is the README's demo command in its own process (wall time includes start-up), with its own output_dir
under outputs/benchmarks/demo[-<tag>]/. Writes benchmarks/results/demo-smollm2-movielens[-<tag>].json (with the
CPU's instruction sets), which render_results.py turns into the demo section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import OUTPUTS, ROOT, result_path, write_result

CONFIG = "recipes/smollm2-135m/movielens.yaml"
RUNS = {"gti": [], "mean_no_grounding": ["--set", "grounding.max_steps=0", "--set", "finetune.grounding_mix=0"]}
KEEP = ("command", "wall_seconds", "metrics", "ranking", "timings_s", "geometry")


def run(out_root: Path, name: str, extra: list[str]) -> dict:
    """The recipe in a fresh process; its metrics.json plus the measured wall time."""
    out = out_root / name
    wall_file = out / "demo_wall.json"
    command = ["recipes/gti.py", "--config", CONFIG, *extra, "--set", f"output.output_dir={out.relative_to(ROOT)}"]
    if not wall_file.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
        wall_file.write_text(json.dumps({"wall_seconds": time.perf_counter() - start}))
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics | json.loads(wall_file.read_text()) | {"command": "python " + " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="", help="names the output folder and results file, e.g. avx2")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {list(RUNS)}")
    args = parser.parse_args()
    suffix = f"-{args.tag}" if args.tag else ""
    out_root = OUTPUTS / f"demo{suffix}"
    done = {name: run(out_root, name, RUNS[name]) for name in args.runs.split(",")}
    gti = done["gti"]
    result = {k: gti[k] for k in (*KEEP, "table", "grounding", "finetune") if k in gti}
    if "mean_no_grounding" in done:
        result["baseline_mean_no_grounding"] = {k: done["mean_no_grounding"][k] for k in KEEP}
    path = write_result(result_path(f"demo-smollm2-movielens{suffix}"), result)
    print(result["table"], f"\nwall time {result['wall_seconds'] / 60:.1f} min; wrote {path}")


if __name__ == "__main__":
    main()
