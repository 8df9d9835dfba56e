"""`tlkit cache ...`: see and free the disk the feature and decoded-image caches take."""
from __future__ import annotations

import time

import click

_CACHE_DIR = click.option("--cache-dir", type=click.Path(file_okay=False),
                          help="The cache folder [default: TLKIT_CACHE_DIR or ~/.cache/tlkit].")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


@click.group("cache")
def cache():
    """See or clear cached features and decoded images (reused by runs on the same data)."""


@cache.command("list")
@_CACHE_DIR
def list_command(cache_dir):
    """Each cache entry, least recently used first, with its size and age."""
    from tlkit.storage import cache_entries

    entries = cache_entries(cache_dir)
    for entry in entries:
        days = (time.time() - entry["last_used"]) / 86400
        click.echo(f"{_size(entry['bytes']):>12}  {days:6.1f} days  {entry['what']}  {entry['folder']}")
    click.echo(f"{len(entries)} entries, {_size(sum(e['bytes'] for e in entries))}")


@cache.command("clear")
@_CACHE_DIR
@click.option("--older-than", type=click.FloatRange(min=0), metavar="DAYS",
              help="Only entries not used for this many days.")
def clear_command(cache_dir, older_than):
    """Delete cache entries; later runs recompute what they need."""
    from tlkit.storage import clear_cache

    removed = clear_cache(cache_dir, older_than)
    click.echo(f"removed {len(removed)} entries, {_size(sum(e['bytes'] for e in removed))}")
