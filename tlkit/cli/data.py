"""`tlkit data ...`: look at a data source before training on it."""
from __future__ import annotations

import json

import click

from tlkit.cli.options import data_options, data_spec


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
