"""`tlkit explain`: Grad-CAM pictures of why the model answered what it did."""
from __future__ import annotations

import sys

import click


@click.command("explain")
@click.argument("model", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the NAME.gradcam.png files.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes shown per image.")
@click.option("--threshold", type=float, help="Answer unknown below this score [default: the run's].")
def explain_command(model, images, out, top_k, threshold):
    """Write a Grad-CAM PNG (the photo, the heatmap over it, the top classes) for each of IMAGES (files or
    folders), by MODEL: a run folder or an export inside one (its Keras model explains).

    Exits with status 1 if any file could not be read (each is named on stderr)."""
    from tlkit.evaluation.explain import explain

    written, failures = explain(model, list(images), out, top_k, threshold)
    for path in written:
        click.echo(str(path))
    for path, reason in failures:
        click.echo(f"tlkit: cannot read {path}: {reason}", err=True)
    if failures:
        click.echo(f"tlkit: {len(failures)} of {len(written) + len(failures)} file(s) failed", err=True)
        sys.exit(1)
