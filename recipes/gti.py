"""GTI recipe: semantic IDs -> new tokens -> ground -> fine-tune (LoRA) -> evaluate -> save.

    python recipes/gti.py --config recipes/smollm2-135m/movielens.yaml
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml \\
        recipes/gti.py --config recipes/qwen3-0.6b/movielens_qlora.yaml
    # override any key: --set adapter.init=description --set output.output_dir=outputs/desc
    # evaluate a saved run only: --set output.stages=[evaluate]
"""

from __future__ import annotations

import argparse
import logging

from gti_peft.recipe import load_recipe_config, run_recipe


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Recipe YAML (see recipes/*/*.yaml).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="Override a key."
    )
    args = parser.parse_args(argv)
    config = load_recipe_config(args.config, args.overrides)  # every config error surfaces before any loading
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_recipe(config)


if __name__ == "__main__":
    main()
