"""`tlkit lr-find`: the learning-rate range test for one stage of a recipe."""
from __future__ import annotations

from pathlib import Path

import click

from tlkit.cli.options import flag_overrides, recipe_options


@click.command("lr-find")
@click.argument("recipe")
@click.option("--data", help="Class folders, train/val(/test) folders, a CSV of path,label, or tfds:NAME[:SPLIT] "
              "(overrides the recipe's data.path).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for lr_find.png, .csv and .json [default: runs/RECIPE-lr-find-TIME].")
@click.option("--stage", type=click.IntRange(min=1), default=1, show_default=True,
              help="Stage to sweep, counted from 1 as in the logs; earlier stages train first, as in `tlkit run`.")
@click.option("--start", type=float, default=1e-7, show_default=True, help="First learning rate.")
@click.option("--end", type=float, default=1.0, show_default=True, help="Last learning rate.")
@click.option("--steps", type=int, default=100, show_default=True, help="Batches (rates) in the sweep.")
@recipe_options
def lr_find_command(recipe, data, out, stage, start, end, steps, weights, weights_dir, batch_size, image_size, seed,
                    assignments, no_cache, cache_dir, cache_memory, path_column, label_column, image_dir, suffix):
    """Sweep the learning rate of one stage of RECIPE exponentially, plot loss against rate, suggest a rate."""
    from tlkit.lrfind import lr_find
    from tlkit.overrides import override
    from tlkit.recipe import load_recipe
    from tlkit.runner import default_out

    sets = flag_overrides(weights, batch_size, image_size, seed, no_cache, path_column, label_column, image_dir, suffix)
    resolved = override(load_recipe(recipe), sets + list(assignments))
    out = Path(out) if out else default_out(f"{Path(recipe).stem}-lr-find")
    result = lr_find(resolved, out, data=data, weights_dir=weights_dir, cache_dir=cache_dir,
                     cache_memory=cache_memory, stage=stage, start=start, end=end, steps=steps)
    click.echo(f"stage {result.stage} ({result.mode}): {result.stopped}; sweep {result.sweep_seconds:.1f}s, "
               f"features {result.feature_seconds:.1f}s")
    click.echo(f"suggested learning rate {result.suggestion:.2e} (rule: {result.rule})")
    click.echo(f"plot: {out / 'lr_find.png'}")
