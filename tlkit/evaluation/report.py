"""Reports people read: a table for the terminal, and PNG plots and an HTML page written to a folder.

Plots use matplotlib's object-oriented API (``Figure``, rendered by Agg), never pyplot's global state.
"""
from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path

import numpy as np

from tlkit.evaluation.evaluate import Evaluation
from tlkit.images import decode_image
from tlkit.runfolder import RunFolder
from tlkit.training.stage import stage_title

log = logging.getLogger(__name__)

SHOWN_MISTAKES = 24  # images on the contact sheet and rows on the page
LISTED_MISTAKES = 10  # lines in the terminal


def write_report(evaluation: Evaluation, out: str | Path) -> Path:
    """Write evaluation.json, confusion_matrix.png, misclassified.png, training_curves.png (when the model
    came from a run) and report.html into ``out``; return the page's path."""
    folder = RunFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    result = evaluation.to_dict()
    folder.write_json(folder.evaluation_file, result)
    confusion_plot(result, folder.confusion_file)
    misclassified_sheet(evaluation, folder.misclassified_file)
    curves = None
    if evaluation.run and evaluation.run.history_file.is_file():
        curves = folder.curves_file
        training_curves(RunFolder.read_csv(evaluation.run.history_file), curves)
    folder.report_file.write_text(html_page(result, folder.confusion_file, folder.misclassified_file, curves),
                                  encoding="utf-8")
    log.info("report: %s (accuracy %.4f on %d images of %s)", folder.report_file, result["accuracy"],
             result["images"], result["data"])
    return folder.report_file


# === Pictures ===

def training_curves(history: list[dict], file: Path) -> None:
    """Loss and accuracy per epoch, training and validation, for all stages; stage boundaries dashed and the
    epoch of the lowest validation loss starred."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in history]
    stages = [row["stage"] for row in history]
    starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for key, label, style in ((metric, "training", "o-"), (f"val_{metric}", "validation", "s-")):
            ax.plot(epochs, [_number(row.get(key)) for row in history], style, label=label, markersize=4)
        for first, end in zip(starts, starts[1:] + [len(stages)]):
            if first:
                ax.axvline(epochs[first] - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text((epochs[first] + epochs[end - 1]) / 2, 0.98, stage_title(stages[first]), ha="center", va="top",
                    transform=ax.get_xaxis_transform(), fontsize=9, color="dimgrey")
        if metric == "loss":
            val_loss = [_number(row.get("val_loss")) for row in history]
            best = int(np.nanargmin(val_loss))
            ax.plot(epochs[best], val_loss[best], "*", color="crimson", markersize=15,
                    label=f"lowest validation loss (epoch {epochs[best]})")
        else:
            ax.set_ylim(0, 1.08)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    figure.suptitle("Training curves")
    figure.savefig(file, dpi=110)


def confusion_plot(result: dict, file: Path) -> None:
    """The confusion matrix: counts in the cells, shading by share of the true class (row-normalised)."""
    from matplotlib.figure import Figure

    classes = result["classes"]
    matrix = np.array(result["confusion_matrix"])
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    n = len(classes)
    side = min(4.5 + 0.55 * n, 30)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    tilt = n > 4 or max(map(len, classes)) > 8
    ax.set_xticks(range(n), classes, rotation=40 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 40:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=10 if n <= 12 else 7,
                    color="white" if shares[i, j] > 0.55 else "black")
    ax.set_title(f"{result['data']}: accuracy {result['accuracy']:.3f} on {result['images']} images")
    figure.savefig(file, dpi=110)


def misclassified_sheet(evaluation: Evaluation, file: Path, limit: int = SHOWN_MISTAKES, size: int = 128) -> None:
    """A contact sheet of the worst mistakes: each image with its true and predicted class and confidence."""
    from matplotlib.figure import Figure

    mistakes = evaluation.mistakes()
    shown = mistakes[:limit]
    row_of = {str(path): i for i, path in enumerate(evaluation.paths)}
    columns, cell, picture, caption, header = 6, 1.7, 1.5, 0.5, 0.6  # inches; a fixed grid needs no layout pass
    rows = max(1, math.ceil(len(shown) / columns))
    height = header + rows * (picture + caption)
    figure = Figure(figsize=(columns * cell, height if shown else 1.6))
    if not shown:
        figure.text(0.5, 0.5, f"No misclassified images\nall {len(evaluation.labels)} images of {evaluation.data} "
                              "are classified correctly", ha="center", va="center", fontsize=12)
    else:
        figure.text(0.5, 1 - 0.1 / height, f"{len(shown)} of {len(mistakes)} misclassified images, worst first "
                    f"(lowest probability of the true class)\n{evaluation.data}", ha="center", va="top", fontsize=11)
    for i, mistake in enumerate(shown):
        row, column = divmod(i, columns)
        bottom = height - header - (row + 1) * (picture + caption)
        ax = figure.add_axes([(column * cell + (cell - picture) / 2) / (columns * cell), bottom / height,
                              picture / (columns * cell), picture / height])
        ax.set_axis_off()
        ax.imshow(decode_image(Path(mistake["path"]), size) if evaluation.images is None
                  else evaluation.images[row_of[mistake["path"]]])
        ax.set_title(f"true: {_short(mistake['true'])}\npredicted: {_short(mistake['predicted'])} "
                     f"{mistake['confidence']:.0%}\n{_short(Path(mistake['path']).name, 26)}",
                     fontsize=7.5, color="darkred", pad=3)
    figure.savefig(file, dpi=100)


def _number(value) -> float:
    return float(value) if value not in (None, "") else math.nan


def _short(text: str, width: int = 18) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# === Text and HTML ===

def text_report(result: dict) -> str:
    """The figures of ``Evaluation.to_dict()`` as a table for the terminal."""
    classes = result["classes"]
    width = max(16, *map(len, classes))
    lines = [f"model     {result['model']}",
             f"data      {result['data']}: {result['images']} images, {len(classes)} classes", "",
             f"{'accuracy':<{width}}  {result['accuracy']:.4f}",
             f"{'top-%d accuracy' % result['top_k']:<{width}}  {result['top_k_accuracy']:.4f}",
             f"{'log loss':<{width}}  {result['log_loss']:.4f}", "",
             f"{'class':<{width}}  precision  recall      f1  support"]
    for name, row in [*result["per_class"].items(), ("macro avg", result["macro"]),
                      ("weighted avg", result["weighted"])]:
        support = row.get("support", result["images"])
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {support:7d}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    matrix = result["confusion_matrix"]
    widths = [max(len(name), len(str(max(r[j] for r in matrix)))) for j, name in enumerate(classes)]
    lines.append(" " * width + "".join(f"  {name:>{w}}" for name, w in zip(classes, widths)))
    for name, counts in zip(classes, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"  {c:>{w}}" for c, w in zip(counts, widths)))
    mistakes = result["misclassified"]
    if mistakes:
        lines += ["", f"{len(mistakes)} misclassified, worst first" +
                  (f" (first {LISTED_MISTAKES}; --json lists all)" if len(mistakes) > LISTED_MISTAKES else "")]
        lines += [f"  {m['path']}  {m['true']} -> {m['predicted']} ({m['confidence']:.2f})"
                  for m in mistakes[:LISTED_MISTAKES]]
    if result["skipped"]:
        lines += ["", f"{len(result['skipped'])} file(s) skipped"]
        lines += [f"  {s['path']}: {s['reason']}" for s in result["skipped"]]
    if result.get("report"):
        lines += ["", f"report: {result['report']}"]
    return "\n".join(lines)


_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .7em;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{text-align:left;background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}code{font-size:90%}"""


def html_page(result: dict, confusion: Path, misclassified: Path, curves: Path | None = None) -> str:
    """One self-contained page: the tables of ``Evaluation.to_dict()`` and the pictures, embedded."""
    e = html.escape
    summary = [("images", result["images"]), ("accuracy", f"{result['accuracy']:.4f}"),
               (f"top-{result['top_k']} accuracy", f"{result['top_k_accuracy']:.4f}"),
               ("log loss", f"{result['log_loss']:.4f}")]
    summary += [(f"{kind} {figure}", f"{result[kind][figure]:.4f}")
                for kind in ("macro", "weighted") for figure in ("precision", "recall", "f1")]
    per_class = [[name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
                 for name, r in result["per_class"].items()]
    confusion_rows = [[name, *counts] for name, counts in zip(result["classes"], result["confusion_matrix"])]
    mistakes = [[m["path"], m["true"], m["predicted"], f"{m['confidence']:.3f}"]
                for m in result["misclassified"][:SHOWN_MISTAKES]]
    skipped = [[s["path"], s["reason"]] for s in result["skipped"]]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tlkit evaluation: {e(result['model'])}"
             f"</title><style>{_STYLE}</style></head><body>",
             f"<h1>Evaluation</h1><p>Model <code>{e(result['model'])}</code> on <code>{e(result['data'])}</code>: "
             f"{result['images']} images, {len(result['classes'])} classes.</p>",
             "<h2>Summary</h2>", _table(["figure", "value"], summary),
             "<h2>Per class</h2>", _table(["class", "precision", "recall", "f1", "support"], per_class),
             "<h2>Confusion matrix</h2>", _image(confusion, "confusion matrix"),
             "<p>Rows: true class; columns: predicted class.</p>", _table(["", *result["classes"]], confusion_rows),
             *(["<h2>Training curves</h2>", _image(curves, "training curves")] if curves else []),
             f"<h2>Misclassified ({len(result['misclassified'])}, worst first)</h2>",
             _image(misclassified, "worst mistakes"),
             _table(["file", "true", "predicted", "confidence"], mistakes) if mistakes else "",
             f"<h2>Skipped files ({len(skipped)})</h2>",
             _table(["file", "reason"], skipped) if skipped else "<p>None.</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _image(file: Path, description: str) -> str:
    data = base64.b64encode(Path(file).read_bytes()).decode("ascii")
    return f"<img alt='{description}' src='data:image/png;base64,{data}'>"


def _table(header: list, rows: list[list]) -> str:
    def cell(value):
        number = isinstance(value, (int, float)) or value.replace(".", "", 1).isdigit()
        return f"<td class='n'>{value}</td>" if number else f"<td>{html.escape(str(value))}</td>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
