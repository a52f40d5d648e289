"""``python -m dlcore.train.recipes RECIPE [--registry DIR] [--quick] [--data DIR]``."""
from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
import time
from pathlib import Path

RECIPES = {"nuclei": "dlcore.train.recipes.nuclei", "tissue": "dlcore.train.recipes.tissue",
           "classifier": "dlcore.train.recipes.classifier",
           "nuclei-brightfield": "dlcore.train.recipes.nuclei_brightfield",
           "nuclei-fluorescence": "dlcore.train.recipes.nuclei_fluorescence",
           # prediction models (dlcore.restore): these recipes train and write their package themselves (run())
           "translation-ihc": "dlcore.train.recipes.translation_ihc",
           "denoise-n2v": "dlcore.train.recipes.denoise_n2v"}


def main(argv: list[str] | None = None) -> int:
    """Build a recipe's dataset, train it and add the package to the registry; prints the test metrics."""
    from dlcore.config import load_config
    from dlcore.progress import LineProgress
    from dlcore.train.api import train_model

    parser = argparse.ArgumentParser(prog="python -m dlcore.train.recipes", description=main.__doc__)
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--registry", type=Path, help="registry folder (default: the configured models_dir)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test, not for shipping)")
    parser.add_argument("--data", type=Path, help="the training data folder of recipes that read real annotated "
                                                  "images (nuclei-brightfield, nuclei-fluorescence: a MoNuSeg copy)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = importlib.import_module(RECIPES[args.recipe])
    if hasattr(recipe, "run"):
        return recipe.run(registry=args.registry, quick=args.quick, data=args.data)
    started = time.monotonic()
    takes_data = "data" in inspect.signature(recipe.build_dataset).parameters
    if args.data and not takes_data:
        parser.error(f"recipe {args.recipe} builds its own data; it takes no --data")
    dataset = recipe.build_dataset(args.data) if takes_data else recipe.build_dataset()
    options = {"dataset": dataset} if "dataset" in inspect.signature(recipe.spec).parameters else {}
    result = train_model(dataset, spec=recipe.spec(quick=args.quick, **options), out_registry=args.registry or load_config().models_dir,
                         progress=LineProgress(interval=5))
    print(f"{args.recipe}: {result.package_path} in {time.monotonic() - started:.0f} s; report {result.report_path}")
    from dlcore.train.evaluate import headline

    for key, value in headline(result.metrics["test"], dataset.task).items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
