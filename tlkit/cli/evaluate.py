"""`tlkit evaluate`: figures, pictures and an accuracy gate for a run folder or an exported model."""
from __future__ import annotations

import json
import sys

import click

from tlkit.cli.options import data_options, data_spec


@click.command("evaluate")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("--data", help="val | test | train (a split of the run), or any data source (class folders, split "
              "folders, a CSV, tfds:NAME[:SPLIT]: every labelled image it lists) [default: the run's test split if it "
              "has one, else its val split; required for an exported model].")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="k of the top-k accuracy (capped at the number of classes minus one).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for report.html, the PNGs and "
              "evaluation.json [default: the run folder for its own split, RUN/evaluations/DATA for other data; "
              "an exported model writes them only with --out].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1),
              help="Exit with status 1 when accuracy is below this (a gate for CI).")
@click.option("--threshold", type=float,
              help="Count answers below this confidence score as unknown [default: the run's, fitted on validation].")
@data_options
def evaluate_command(model, data, top_k, out, as_json, min_accuracy, threshold, path_column, label_column, image_dir,
                     suffix):
    """Evaluate MODEL (a run folder or an exported model folder) on labelled images."""
    from tlkit.evaluation.evaluate import evaluate
    from tlkit.evaluation.report import text_report, write_report

    evaluation = evaluate(model, data, spec=data_spec(path_column, label_column, image_dir, suffix), top_k=top_k,
                          threshold=threshold)
    out = out or evaluation.report_dir
    result = evaluation.to_dict()
    if out:
        result["report"] = str(write_report(evaluation, out))
    click.echo(json.dumps(result, indent=2) if as_json else text_report(result))
    if min_accuracy is not None:
        verdict = "is below" if result["accuracy"] < min_accuracy else "meets"
        click.echo(f"tlkit: accuracy {result['accuracy']:.4f} {verdict} --min-accuracy {min_accuracy}", err=True)
        if result["accuracy"] < min_accuracy:
            sys.exit(1)
