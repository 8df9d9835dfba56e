"""`tlkit export` and `tlkit predict`: parse options, call tlkit.serving, print the answers."""
from __future__ import annotations

import csv
import json
import sys

import click

from tlkit.errors import TlkitError


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)).rstrip())


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "formats", default="savedmodel", show_default=True, metavar="FORMATS",
              help="savedmodel, tflite, onnx (comma-separated) or all.")
@click.option("--name", default="model", show_default=True, help="Model name: export/NAME/VERSION.")
@click.option("--version", type=click.IntRange(min=1), help="Version number [default: the next free one].")
@click.option("--force", is_flag=True, help="Replace an existing version.")
@click.option("--check", is_flag=True, help="Compare every export with the Keras model on the validation split.")
def export_command(run_dir, formats, name, version, force, check):
    """Export a run folder's model for serving: SavedModel (TF Serving), TFLite variants, ONNX."""
    from tlkit.runfolder import RunFolder
    from tlkit.serving.export import export_run, parse_formats

    folder = RunFolder.open(run_dir)
    exports = export_run(folder, parse_formats(formats), name, version, force, check)
    rows = []
    for export in exports:
        for variant, entry in export.files.items():
            row = [export.format, variant if variant != export.format else "", entry["path"], _size(entry["bytes"])]
            if check:
                result = export.check[variant]
                row += [f"{result['top1_agreement']:.4f}", f"{result['max_probability_difference']:.2g}"]
            rows.append(row)
    header = ["format", "variant", "path", "size"]
    if check:
        n = next(iter(exports[0].check.values()))["images"] if exports else 0
        header += [f"top-1 agreement ({n} val images)", "max prob diff"]
    _table(rows, header)


@click.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--threshold", type=float,
              help="Answer unknown below this confidence score [default: the export's, fitted on validation].")
def predict_command(model, images, top_k, as_json, as_csv, threshold):
    """Classify IMAGES (files or folders) with MODEL: a run folder, a SavedModel folder or a .tflite/.onnx file.

    Folders are walked as `tlkit run` walks data: links followed, each real file once (repeats are skipped and
    named). Exits with status 1 if any file could not be read (each is named on stderr)."""
    from tlkit.files import repeated
    from tlkit.serving.predictors import load_predictor, predict_files

    if as_json and as_csv:
        raise TlkitError("choose one of --json and --csv")
    predictor = load_predictor(model)
    predictions, failures = predict_files(predictor, list(images), top_k, threshold)
    score = predictor.confidence.score
    if as_json:
        click.echo(json.dumps([{"file": str(p.path), "class": p.answer, "probability": p.top[0][1], score: p.score,
                                "top_k": [{"class": c, "probability": v} for c, v in p.top]}
                               for p in predictions], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        k = max((len(p.top) for p in predictions), default=0)
        writer.writerow(["file", "answer", score] + [f"{col}_{i}" for i in range(1, k + 1)
                                                     for col in ("class", "probability")])
        for p in predictions:
            writer.writerow([p.path, p.answer, f"{p.score:.6f}"] + [v for c, prob in p.top for v in (c, f"{prob:.6f}")])
    elif predictions:
        _table([[str(p.path), p.answer, f"{p.top[0][1]:.4f}", f"{p.score:.4f}",
                 ", ".join(f"{c} {v:.4f}" for c, v in p.top)] for p in predictions],
               ["file", "answer", "probability", score, f"top-{top_k}"])
    repeats = [(path, reason) for path, reason in failures if repeated(reason)]
    failures = [(path, reason) for path, reason in failures if not repeated(reason)]
    for path, reason in repeats:
        click.echo(f"tlkit: skipped {path}: {reason}", err=True)
    for path, reason in failures:
        click.echo(f"tlkit: cannot read {path}: {reason}", err=True)
    if failures or repeats:
        repeated_note = (f", {len(repeats)} skipped as repeats (links to files or folders already listed)"
                         if repeats else "")
        click.echo(f"tlkit: {len(predictions)} file(s) predicted, {len(failures)} failed{repeated_note}", err=True)
    if failures:
        sys.exit(1)
