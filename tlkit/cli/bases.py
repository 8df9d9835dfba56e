"""`tlkit bases`: the bases a recipe can name, as a table or JSON."""
from __future__ import annotations

import json

import click


@click.command("bases")
@click.option("--weights-dir", type=click.Path(file_okay=False), help="Also look here for weights files.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bases_command(weights_dir, as_json):
    """List the bases: parameters, default size, preprocessing, weights found offline, ImageNet top-1, blocks."""
    from tlkit.backbones import base_rows
    from tlkit.cli.serving import _table
    from tlkit.weights import search_dirs

    rows = base_rows(search_dirs(weights_dir))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table([[r["name"], f"{r['parameters'] / 1e6:.1f}M" if r["parameters"] else "-", str(r["default_size"]),
             r["preprocessing"], r["weights_offline"], f"{r['imagenet_top1']:.1%}" if r["imagenet_top1"] else "-",
             "fine" if r["int8"] == "fine" else "not advised", r["blocks"] or "-"] for r in rows],
           ["base", "params", "size", "preprocessing", "weights here", "ImageNet top-1", "int8", "blocks"])
