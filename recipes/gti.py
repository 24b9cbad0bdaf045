"""GTI recipe from a source checkout: the same as ``gti-peft train`` (``gti_peft/cli/train.py``).

    python recipes/gti.py --config recipes/smollm2-135m/movielens.yaml
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml \\
        recipes/gti.py --config recipes/qwen3-0.6b/movielens_qlora.yaml
    # override any key: --set adapter.init=description --set output.output_dir=outputs/desc
    # evaluate a saved run only: --set output.stages=[evaluate]
"""

from __future__ import annotations

import sys

from gti_peft.cli import main as cli_main


def main(argv: list[str] | None = None) -> dict:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
