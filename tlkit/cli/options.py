"""The options `tlkit run` and `tlkit lr-find` share, so both spell and apply them the same way."""
from __future__ import annotations

import click

_RECIPE_OPTIONS = (
    click.option("--weights", help="imagenet | none | auto | path to a .h5 weights file."),
    click.option("--weights-dir", type=click.Path(file_okay=False),
                 help="Folder of Keras ImageNet .h5 files (also: TLKIT_WEIGHTS_DIR)."),
    click.option("--batch-size", type=int, help="Images per training step."),
    click.option("--image-size", type=int, help="Square input side in pixels."),
    click.option("--seed", type=int, help="Random seed (weights init, splits order, shuffling)."),
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Override any recipe field, e.g. --set head.dropout=0.3 --set stages.1.learning_rate=1e-5."),
    click.option("--no-cache", is_flag=True, help="Run the whole base every step instead of caching its frozen part."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Where cached features live [default: TLKIT_CACHE_DIR or ~/.cache/tlkit]."),
    click.option("--cache-memory", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Fraction of available RAM cached features may take; the rest is memory-mapped from disk."),
)


def recipe_options(command):
    """Add the shared recipe and cache options to a click command."""
    for option in reversed(_RECIPE_OPTIONS):
        command = option(command)
    return command


def flag_overrides(weights, batch_size, image_size, seed, no_cache) -> list[str]:
    """The everyday flags as `--set` assignments (explicit `--set` values come after and win)."""
    flags = {"weights": weights, "batch_size": batch_size, "image_size": image_size, "seed": seed,
             "cache": "false" if no_cache else None}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]
