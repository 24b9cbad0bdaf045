"""What `import gti_peft` adds over `import peft`: modules loaded and resident memory, each in a fresh process.

    .venv/bin/python benchmarks/import_cost.py

Prints a table and writes benchmarks/results/import_cost.json (with the run environment).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from common import result_path, write_result

PROBE = """
import sys
{pre}
import {module}
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(len(sys.modules), rss / 1024)
"""


def measure(module: str, pre: str = "", repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(pre=pre, module=module)], capture_output=True, text=True, check=True
        )
        modules, rss = out.stdout.split()
        runs.append((int(modules), float(rss)))
    return {"modules": min(m for m, _ in runs), "rss_mb": round(min(r for _, r in runs), 1)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows = {}
    for pre, label in (("", "alone"), ("import transformers", "after transformers")):
        peft, gti = measure("peft", pre), measure("gti_peft", pre)
        rows[label] = {
            "peft": peft,
            "gti_peft": gti,
            "extra_modules": gti["modules"] - peft["modules"],
            "extra_rss_mb": round(gti["rss_mb"] - peft["rss_mb"], 1),
        }
        print(
            f"{label:>20}: peft {peft['modules']} modules {peft['rss_mb']} MB; gti_peft {gti['modules']} modules "
            f"{gti['rss_mb']} MB (+{rows[label]['extra_modules']} modules, +{rows[label]['extra_rss_mb']} MB)"
        )
    print(f"wrote {write_result(result_path('import_cost'), {'import_cost': rows})}")


if __name__ == "__main__":
    main()
