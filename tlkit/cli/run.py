"""`tlkit recipes` and `tlkit run`: list the bundled recipes, train one into a run folder."""
from __future__ import annotations

from pathlib import Path

import click

from tlkit.cli.options import flag_overrides, recipe_options
from tlkit.errors import TlkitError
from tlkit.training.checkpoint import CHECKPOINT_SECONDS
from tlkit.training.distribute import PRECISIONS, STRATEGIES


@click.command("recipes")
def recipes_command():
    """List the bundled recipes."""
    from tlkit.recipe import bundled_recipes
    recipes = bundled_recipes()
    width = max(map(len, recipes))
    for name, recipe in sorted(recipes.items()):
        click.echo(f"{name:<{width}}  {recipe.description}")


def _epochs(value: str | None, stages: int) -> list[str]:
    """`--epochs 5` sets every stage, `--epochs 5,3` one value per stage; 0 skips a stage."""
    if value is None:
        return []
    parts = [p.strip() for p in value.split(",")]
    if len(parts) == 1:
        parts = parts * stages
    if len(parts) != stages or not all(p.isdigit() for p in parts):
        raise TlkitError(f"--epochs takes one whole number or {stages} comma-separated ones (one per stage); "
                         f"received: {value!r}")
    if not any(int(p) for p in parts):
        raise TlkitError(f"--epochs {value}: nothing would train; 0 skips a stage (e.g. --epochs 5,0 trains only "
                         "the first), and at least one stage needs 1 or more")
    return [f"stage{i + 1}.epochs={p}" for i, p in enumerate(parts)]


@click.command("run")
@click.argument("recipe", required=False)
@click.option("--data", help="Class folders, train/val(/test) folders, a CSV of path,label, or tfds:NAME[:SPLIT] "
              "(overrides the recipe's data.path).")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder to write [default: runs/RECIPE-TIME].")
@click.option("--epochs", help="Epochs for every stage, or one per stage: 5,3 (0 skips a stage).")
@recipe_options
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True,
              help="auto: TF_CONFIG -> multiworker, several GPUs -> mirrored, one GPU -> gpu, else cpu.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: mixed_float16 on GPUs with tensor cores, else float32.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              help="Continue the unfinished run in this folder with its own recipe.json (rerunning the same "
                   "command with the same --out does too); other recipe flags are an error.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0), default=CHECKPOINT_SECONDS, show_default=True,
              metavar="SECONDS", help="Checkpoint at the end of every stage and of an epoch this long after the "
              "last checkpoint (0: every epoch); a kill loses at most this much training.")
@click.option("--force", is_flag=True, help="Replace the run --out holds (finished, or unfinished with other "
              "settings) instead of stopping; only the run's own files are deleted.")
@click.option("--export", "export_formats", default="savedmodel", show_default=True, metavar="FORMATS",
              help="Export at the end: savedmodel, tflite, onnx (comma-separated), all (those installed) or none.")
def run_command(recipe, data, out, weights, weights_dir, epochs, batch_size, image_size, seed, assignments,
                no_cache, cache_dir, cache_memory, path_column, label_column, image_dir, suffix, strategy,
                precision, resume_dir, checkpoint_every, force, export_formats):
    """Train RECIPE (a bundled name or a .py file) and write a run folder with the model and its export."""
    from tlkit.overrides import override
    from tlkit.recipe import load_recipe
    from tlkit.runfolder import RunFolder
    from tlkit.runner import default_out, run
    from tlkit.serving.export import parse_formats

    formats = parse_formats(export_formats)
    if resume_dir:
        if recipe or out:
            raise TlkitError("--resume takes the recipe and folder from the run; pass no RECIPE or --out")
        folder = RunFolder(resume_dir)
        if not folder.checkpoint_dir.joinpath("latest").is_file():
            raise TlkitError(f"{folder.path} has no checkpoint to resume from (it finished, or was stopped before "
                             "its first checkpoint); start it again with tlkit run RECIPE --out DIR")
        recipe, out = str(folder.recipe_file), resume_dir
    if not recipe:
        raise TlkitError("missing RECIPE: a bundled recipe name (see `tlkit recipes`) or a .py recipe file")
    resolved = load_recipe(recipe)
    sets = (flag_overrides(weights, batch_size, image_size, seed, no_cache, path_column, label_column, image_dir,
                           suffix) + _epochs(epochs, len(resolved.stages)))
    resolved = override(resolved, sets + list(assignments))
    out = Path(out) if out else default_out(Path(recipe).stem)
    result = run(resolved, out, data=data, weights_dir=weights_dir, cache_dir=cache_dir, cache_memory=cache_memory,
                 strategy=strategy, precision=precision, export_formats=formats, force=force,
                 checkpoint_every=checkpoint_every)
    if result.export:
        click.echo(f"SavedModel: {result.export}")
    val, test = result.metrics["val"], result.metrics.get("test")
    state = f" (RANDOM INIT, no pretrained weights: trained {result.random_init})" if result.random_init else ""
    held = " before the refit on train + val" if result.metrics["refit"] else ""
    tested = f", test accuracy {test['accuracy']:.4f} on {test['images']} images" if test else ""
    click.echo(f"validation accuracy {val['accuracy']:.4f} on {val['images']} images{held}{tested}{state}; "
               f"run folder: {result.folder}")
