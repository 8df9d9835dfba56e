"""Options several commands share, so each is spelled and applied the same way everywhere: the recipe and cache
options of `tlkit run`, `tlkit lr-find` and `tlkit data audit`, and how to read a CSV given as --data (run,
lr-find, data inspect, data audit, evaluate)."""
from __future__ import annotations

import json
from pathlib import Path

import click

_DATA_OPTIONS = {
    "path_column": click.option(
        "--path-column", metavar="COLUMN",
        help="CSV --data: the column with each image's path or id [default: recognised by name: path, file, "
             "filename, image, id, ...] (data.path_column)."),
    "label_column": click.option(
        "--label-column", metavar="COLUMN",
        help="CSV --data: the column with the label [default: recognised by name: label, class, category, ..., "
             "or the one other column] (data.label_column)."),
    "image_dir": click.option(
        "--image-dir", type=click.Path(file_okay=False),
        help="CSV --data: the folder its paths or ids are relative to [default: the CSV's folder] (data.image_dir)."),
    "suffix": click.option(
        "--suffix", help="CSV --data: appended to each path or id that does not end with it, e.g. .jpg for "
                         "Kaggle-style ids (data.suffix)."),
}

_RECIPE_OPTIONS = {
    "weights": click.option("--weights", help="imagenet | none | auto | path to a .h5 weights file."),
    "weights_dir": click.option("--weights-dir", type=click.Path(file_okay=False),
                                help="Folder of Keras ImageNet .h5 files (also: TLKIT_WEIGHTS_DIR); it must exist."),
    "batch_size": click.option("--batch-size", type=int, help="Images per training step."),
    "image_size": click.option("--image-size", type=int, help="Square input side in pixels."),
    "seed": click.option("--seed", type=int, help="Random seed (weights init, splits order, shuffling)."),
    "assignments": click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                                help="Override any recipe field, e.g. --set head.dropout=0.3 "
                                     "--set stage2.learning_rate=1e-5 (stages counted from 1, as in the console)."),
    "no_cache": click.option("--no-cache", is_flag=True,
                             help="Run the whole base every step instead of caching its frozen part."),
    "cache_dir": click.option("--cache-dir", type=click.Path(file_okay=False),
                              help="Where cached features live [default: TLKIT_CACHE_DIR or ~/.cache/tlkit]."),
    "cache_memory": click.option("--cache-memory", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                                 help="Fraction of available RAM cached features may take; the rest is "
                                      "memory-mapped from disk."),
    **_DATA_OPTIONS,
}
TRAINING_ONLY = ("batch_size", "no_cache")  # options that change training, not what the base computes


def _adder(options: dict, without: tuple[str, ...]):
    def add(command):
        for name, option in reversed(options.items()):
            if name not in without:
                command = option(command)
        return command
    return add


def recipe_options(command=None, *, without: tuple[str, ...] = ()):
    """Add the shared recipe, cache and CSV options (all but ``without``) to a click command."""
    add = _adder(_RECIPE_OPTIONS, without)
    return add(command) if command is not None else add


def data_options(command):
    """Add the options that say how to read a CSV given as --data."""
    return _adder(_DATA_OPTIONS, ())(command)


def data_assignments(path_column=None, label_column=None, image_dir=None, suffix=None) -> list[str]:
    """The CSV options as `--set data.*` assignments (values JSON-quoted: a column may be named 1 or true)."""
    values = {"path_column": path_column, "label_column": label_column, "image_dir": image_dir, "suffix": suffix}
    return [f"data.{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def data_spec(path_column=None, label_column=None, image_dir=None, suffix=None):
    """The CSV options as a recipe's `data` spec, for commands without a recipe (inspect, evaluate)."""
    from tlkit.recipe import Data

    folder = str(Path(image_dir).expanduser().absolute()) if image_dir else None
    return Data(path_column=path_column, label_column=label_column, image_dir=folder, suffix=suffix or "")


def flag_overrides(weights, batch_size=None, image_size=None, seed=None, no_cache=False, path_column=None,
                   label_column=None, image_dir=None, suffix=None) -> list[str]:
    """The everyday flags as `--set` assignments (explicit `--set` values come after and win)."""
    flags = {"weights": weights, "batch_size": batch_size, "image_size": image_size, "seed": seed,
             "cache": "false" if no_cache else None}
    return ([f"{key}={value}" for key, value in flags.items() if value is not None]
            + data_assignments(path_column, label_column, image_dir, suffix))
