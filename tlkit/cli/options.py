"""Options several commands share, so each is spelled and applied the same way everywhere: the recipe and cache
options of `tlkit run` and `tlkit lr-find`, and how to read a CSV given as --data (run, lr-find, data inspect,
evaluate)."""
from __future__ import annotations

import json
from pathlib import Path

import click

_DATA_OPTIONS = (
    click.option("--path-column", metavar="COLUMN",
                 help="CSV --data: the column with each image's path or id [default: recognised by name: path, "
                      "file, filename, image, id, ...] (data.path_column)."),
    click.option("--label-column", metavar="COLUMN",
                 help="CSV --data: the column with the label [default: recognised by name: label, class, "
                      "category, ..., or the one other column] (data.label_column)."),
    click.option("--image-dir", type=click.Path(file_okay=False),
                 help="CSV --data: the folder its paths or ids are relative to [default: the CSV's folder] "
                      "(data.image_dir)."),
    click.option("--suffix", help="CSV --data: appended to each path or id that does not end with it, e.g. .jpg "
                                  "for Kaggle-style ids (data.suffix)."),
)

_RECIPE_OPTIONS = (
    click.option("--weights", help="imagenet | none | auto | path to a .h5 weights file."),
    click.option("--weights-dir", type=click.Path(file_okay=False),
                 help="Folder of Keras ImageNet .h5 files (also: TLKIT_WEIGHTS_DIR); it must exist."),
    click.option("--batch-size", type=int, help="Images per training step."),
    click.option("--image-size", type=int, help="Square input side in pixels."),
    click.option("--seed", type=int, help="Random seed (weights init, splits order, shuffling)."),
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Override any recipe field, e.g. --set head.dropout=0.3 --set stage2.learning_rate=1e-5 "
                      "(stages counted from 1, as in the console)."),
    click.option("--no-cache", is_flag=True, help="Run the whole base every step instead of caching its frozen part."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Where cached features live [default: TLKIT_CACHE_DIR or ~/.cache/tlkit]."),
    click.option("--cache-memory", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Fraction of available RAM cached features may take; the rest is memory-mapped from disk."),
    *_DATA_OPTIONS,
)


def _add(options, command):
    for option in reversed(options):
        command = option(command)
    return command


def recipe_options(command):
    """Add the shared recipe, cache and CSV options to a click command."""
    return _add(_RECIPE_OPTIONS, command)


def data_options(command):
    """Add the options that say how to read a CSV given as --data."""
    return _add(_DATA_OPTIONS, command)


def data_assignments(path_column=None, label_column=None, image_dir=None, suffix=None) -> list[str]:
    """The CSV options as `--set data.*` assignments (values JSON-quoted: a column may be named 1 or true)."""
    values = {"path_column": path_column, "label_column": label_column, "image_dir": image_dir, "suffix": suffix}
    return [f"data.{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def data_spec(path_column=None, label_column=None, image_dir=None, suffix=None):
    """The CSV options as a recipe's `data` spec, for commands without a recipe (inspect, evaluate)."""
    from tlkit.recipe import Data

    folder = str(Path(image_dir).expanduser().absolute()) if image_dir else None
    return Data(path_column=path_column, label_column=label_column, image_dir=folder, suffix=suffix or "")


def flag_overrides(weights, batch_size, image_size, seed, no_cache, path_column=None, label_column=None,
                   image_dir=None, suffix=None) -> list[str]:
    """The everyday flags as `--set` assignments (explicit `--set` values come after and win)."""
    flags = {"weights": weights, "batch_size": batch_size, "image_size": image_size, "seed": seed,
             "cache": "false" if no_cache else None}
    return ([f"{key}={value}" for key, value in flags.items() if value is not None]
            + data_assignments(path_column, label_column, image_dir, suffix))
