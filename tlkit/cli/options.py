"""The options `tlkit run`, `tlkit lr-find` and `tlkit data audit` share, so all spell and apply them the same
way."""
from __future__ import annotations

import click

_RECIPE_OPTIONS = {
    "weights": click.option("--weights", help="imagenet | none | auto | path to a .h5 weights file."),
    "weights_dir": click.option("--weights-dir", type=click.Path(file_okay=False),
                                help="Folder of Keras ImageNet .h5 files (also: TLKIT_WEIGHTS_DIR)."),
    "batch_size": click.option("--batch-size", type=int, help="Images per training step."),
    "image_size": click.option("--image-size", type=int, help="Square input side in pixels."),
    "seed": click.option("--seed", type=int, help="Random seed (weights init, splits order, shuffling)."),
    "assignments": click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                                help="Override any recipe field, e.g. --set head.dropout=0.3 "
                                     "--set stages.1.learning_rate=1e-5."),
    "no_cache": click.option("--no-cache", is_flag=True,
                             help="Run the whole base every step instead of caching its frozen part."),
    "cache_dir": click.option("--cache-dir", type=click.Path(file_okay=False),
                              help="Where cached features live [default: TLKIT_CACHE_DIR or ~/.cache/tlkit]."),
    "cache_memory": click.option("--cache-memory", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                                 help="Fraction of available RAM cached features may take; the rest is "
                                      "memory-mapped from disk."),
}
TRAINING_ONLY = ("batch_size", "no_cache")  # options that change training, not what the base computes


def recipe_options(command=None, *, without: tuple[str, ...] = ()):
    """Add the shared recipe and cache options (all but ``without``) to a click command."""
    def add(command):
        for name, option in reversed(_RECIPE_OPTIONS.items()):
            if name not in without:
                command = option(command)
        return command
    return add(command) if command is not None else add


def flag_overrides(weights, batch_size=None, image_size=None, seed=None, no_cache=False) -> list[str]:
    """The everyday flags as `--set` assignments (explicit `--set` values come after and win)."""
    flags = {"weights": weights, "batch_size": batch_size, "image_size": image_size, "seed": seed,
             "cache": "false" if no_cache else None}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]
