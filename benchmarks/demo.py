"""`make demo`, measured: the default recipe, and the same settings without grounding (one seed each).

    .venv/bin/python benchmarks/demo.py      # ~25 min on 2 cores; a finished run is not run again

Each run is the README's demo command in its own process (wall time includes start-up), with its own output_dir
under outputs/benchmarks/demo/. Writes benchmarks/results/demo-smollm2-movielens.json, which render_results.py
turns into the README's demo section.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from environment import run_environment

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "recipes/smollm2-135m/movielens.yaml"
OUT = ROOT / "outputs" / "benchmarks" / "demo"
RUNS = {"gti": [], "mean_no_grounding": ["--set", "grounding.max_steps=0"]}


def run(name: str, extra: list[str]) -> dict:
    """The recipe in a fresh process; its metrics.json plus the measured wall time."""
    out = OUT / name
    wall_file = out / "demo_wall.json"
    command = ["recipes/gti.py", "--config", CONFIG, *extra, "--set", f"output.output_dir={out.relative_to(ROOT)}"]
    if not wall_file.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
        wall_file.write_text(json.dumps({"wall_seconds": time.perf_counter() - start}))
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics | json.loads(wall_file.read_text()) | {"command": "python " + " ".join(command)}


def main() -> None:
    gti, base = (run(name, extra) for name, extra in RUNS.items())
    keep = ("command", "wall_seconds", "metrics", "timings_s", "geometry")
    result = {k: gti[k] for k in (*keep, "table", "grounding", "finetune")}
    result |= run_environment() | {"baseline_mean_no_grounding": {k: base[k] for k in keep}}
    path = ROOT / "benchmarks" / "results" / "demo-smollm2-movielens.json"
    path.write_text(json.dumps(result, indent=2))
    print(result["table"])


if __name__ == "__main__":
    main()
