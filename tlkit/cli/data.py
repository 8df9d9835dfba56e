"""`tlkit data ...`: look at a data source before training on it."""
from __future__ import annotations

import json
from pathlib import Path

import click

from tlkit.cli.options import TRAINING_ONLY, data_options, data_spec, flag_overrides, recipe_options
from tlkit.suspects import OUTLIER_THRESHOLD


@click.group("data")
def data():
    """Look at a data source (folder, CSV or tfds:NAME[:SPLIT]) before training on it."""


@data.command("inspect")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the inventory as JSON (for scripts).")
@click.option("--min-per-class", type=click.IntRange(min=1), default=5, show_default=True,
              help="Warn about classes with fewer usable images.")
@data_options
def inspect_command(source, as_json, min_per_class, path_column, label_column, image_dir, suffix):
    """Classes, counts, formats, size range, imbalance and problem files of SOURCE (every image is decoded)."""
    from tlkit.inventory import format_inventory, inventory

    report = inventory(source, min_per_class, data_spec(path_column, label_column, image_dir, suffix))
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else format_inventory(report))


@data.command("audit")
@click.argument("source")
@click.option("--recipe", default="quickstart", show_default=True, metavar="NAME|PATH",
              help="Recipe whose base, weights, image size and split the audit uses: the one you will train.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for audit.html, audit.json and audit.csv [default: runs/audit-SOURCE-TIME].")
@click.option("--json", "as_json", is_flag=True, help="Print audit.json as one JSON object.")
@click.option("--duplicate-threshold", type=click.FloatRange(0, 1, min_open=True),
              help="Aligned detail correlation that makes two images one photo [default: the recipe's "
                   "data.near_duplicate, 0.9].")
@click.option("--label-threshold", type=click.FloatRange(0, 1),
              help="Out-of-fold probability of its own label below which an image is a label suspect "
                   "[default: half of chance, 0.5 / classes].")
@click.option("--outlier-threshold", type=click.FloatRange(min=0), default=OUTLIER_THRESHOLD, show_default=True,
              help="Distance to the nearest class, in units of that class's own spread, beyond which an image "
                   "is an outlier.")
@recipe_options(without=TRAINING_ONLY)
def audit_command(source, recipe, out, as_json, duplicate_threshold, label_threshold, outlier_threshold, weights,
                  weights_dir, image_size, seed, assignments, cache_dir, cache_memory, path_column, label_column,
                  image_dir, suffix):
    """Find duplicates (and which span splits or carry different labels), likely label errors and outliers in
    SOURCE; write audit.html, audit.json and audit.csv (edit it, then `tlkit run --data audit.csv`). No file
    is changed."""
    from tlkit.audit import audit, text_summary
    from tlkit.overrides import override
    from tlkit.recipe import load_recipe
    from tlkit.runner import default_out

    sets = flag_overrides(weights, image_size=image_size, seed=seed, path_column=path_column,
                          label_column=label_column, image_dir=image_dir, suffix=suffix) + list(assignments)
    if duplicate_threshold is not None:
        sets.append(f"data.near_duplicate={duplicate_threshold}")
    resolved = override(load_recipe(recipe), sets)
    out = Path(out) if out else default_out(f"audit-{Path(source.rstrip('/')).name or 'data'}")
    result = audit(resolved, source, out, weights_dir=weights_dir, cache_dir=cache_dir, cache_memory=cache_memory,
                   label_threshold=label_threshold, outlier_threshold=outlier_threshold)
    click.echo(json.dumps(result.report, indent=2, ensure_ascii=False) if as_json
               else text_summary(result.report, result.folder))
