"""``python -m dlcore.train.recipes {nuclei,tissue,classifier} [--registry DIR] [--quick]``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

RECIPES = {"nuclei": "dlcore.train.recipes.nuclei", "tissue": "dlcore.train.recipes.tissue",
           "classifier": "dlcore.train.recipes.classifier"}


def main(argv: list[str] | None = None) -> int:
    """Build a recipe's dataset, train it and add the package to the registry; prints the test metrics."""
    from dlcore.config import load_config
    from dlcore.progress import LineProgress
    from dlcore.train.api import train_model

    parser = argparse.ArgumentParser(prog="python -m dlcore.train.recipes", description=main.__doc__)
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--registry", type=Path, help="registry folder (default: the configured models_dir)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test, not for shipping)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = importlib.import_module(RECIPES[args.recipe])
    started = time.monotonic()
    dataset = recipe.build_dataset()
    result = train_model(dataset, spec=recipe.spec(quick=args.quick), out_registry=args.registry or load_config().models_dir,
                         progress=LineProgress(interval=5))
    print(f"{args.recipe}: {result.package_path} in {time.monotonic() - started:.0f} s; report {result.report_path}")
    from dlcore.train.evaluate import headline

    for key, value in headline(result.metrics["test"], dataset.task).items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
