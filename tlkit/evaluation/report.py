"""Reports people read: a table for the terminal, and PNG plots and an HTML page written to a folder.

Plots use matplotlib's object-oriented API (``Figure``, rendered by Agg), never pyplot's global state; the contact
sheet of mistakes is drawn by :func:`tlkit.evaluation.pictures.contact_sheet`.
"""
from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path

import numpy as np

from tlkit.evaluation.evaluate import Evaluation
from tlkit.evaluation.explain import mistakes_sheet
from tlkit.evaluation.pictures import contact_sheet, save_png
from tlkit.images import decode_image
from tlkit.runfolder import RunFolder
from tlkit.training.stage import stage_title

log = logging.getLogger(__name__)

SHOWN_MISTAKES = 24  # images on the contact sheet and rows on the page
SHOWN_DUPLICATES = 60  # rows of moved or conflicting duplicates on the page (duplicates.csv has all)
LISTED_MISTAKES = 10  # lines in the terminal
EXPLAINED_MISTAKES = 6  # Grad-CAM rows on the page


def write_report(evaluation: Evaluation, out: str | Path) -> Path:
    """Write evaluation.json, confusion_matrix.png, misclassified.png, training_curves.png (when the model
    came from a run), reliability.png and accuracy_coverage.png (with a confidence record), explanations.png
    (Grad-CAM of the worst mistakes, for a Keras model) and report.html (with the run's duplicate groups, when
    it kept any together) into ``out``; return the page's path."""
    folder = RunFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    result = evaluation.to_dict()
    folder.write_json(folder.evaluation_file, result)
    confusion_plot(result, folder.confusion_file)
    misclassified_sheet(evaluation, folder.misclassified_file)
    pictures = {"confusion": folder.confusion_file, "misclassified": folder.misclassified_file}
    if evaluation.run and evaluation.run.history_file.is_file():
        pictures["curves"] = folder.curves_file
        training_curves(RunFolder.read_csv(evaluation.run.history_file), folder.curves_file)
    if result["confidence"]:
        pictures["reliability"], pictures["coverage"] = folder.reliability_file, folder.coverage_file
        reliability_plot(result["confidence"], folder.reliability_file)
        coverage_plot(result["confidence"], folder.coverage_file)
    worst = result["misclassified"][:EXPLAINED_MISTAKES]
    if evaluation.keras is not None and worst:
        row_of = {str(path): i for i, path in enumerate(evaluation.paths)}
        pixels = np.stack([decode_image(Path(m["path"]), evaluation.images.shape[1]) if evaluation.images is None
                           else evaluation.images[row_of[m["path"]]] for m in worst])
        pictures["explanations"] = folder.explanations_file
        mistakes_sheet(evaluation.keras, pixels, worst, evaluation.class_names, folder.explanations_file)
    duplicates = None
    if evaluation.run and evaluation.run.duplicates_file.is_file():
        duplicates = RunFolder.read_csv(evaluation.run.duplicates_file)
    folder.report_file.write_text(html_page(result, pictures, duplicates),
                                  encoding="utf-8", errors="backslashreplace")  # file names that are not UTF-8
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
    save_png(figure, file, 110)


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
    save_png(figure, file, 110)


def misclassified_sheet(evaluation: Evaluation, file: Path, limit: int = SHOWN_MISTAKES, size: int = 128) -> None:
    """A contact sheet of the worst mistakes: each image with its true and predicted class and confidence."""
    mistakes = evaluation.mistakes()
    shown = mistakes[:limit]
    if not shown:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10.2, 1.6))
        figure.text(0.5, 0.5, f"No misclassified images\nall {len(evaluation.labels)} images of {evaluation.data} "
                              "are classified correctly", ha="center", va="center", fontsize=12)
        save_png(figure, file, 100)
        return
    row_of = {str(path): i for i, path in enumerate(evaluation.paths)}
    tiles = [(evaluation.images[row_of[m["path"]]] if evaluation.images is not None else
              decode_image(Path(m["path"]), size),
              f"true: {_short(m['true'])}\npredicted: {_short(m['predicted'])} {m['confidence']:.0%}\n"
              f"{_short(Path(m['path']).name, 26)}", "darkred") for m in shown]
    contact_sheet(tiles, 6, f"{len(shown)} of {len(mistakes)} misclassified images, worst first (lowest probability "
                  f"of the true class)\n{evaluation.data}", file, picture=1.5, caption=0.5, gap=0.2, header=0.6,
                  fontsize=7.5, title_size=11, dpi=100)


def reliability_plot(trust: dict, file: Path) -> None:
    """The reliability diagram: accuracy against confidence per bin, before and after calibration."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6, 5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    lines = (("reliability_uncalibrated", f"uncalibrated (ECE {trust.get('ece_uncalibrated', 0):.3f})", "s--"),
             ("reliability", f"temperature {trust['temperature']:.2f} (ECE {trust['ece']:.3f})", "o-"))
    for key, label, style in lines:
        if key in trust:
            bins = trust[key]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _save_chart(figure, ax, file, "Reliability diagram", "confidence (top probability), per bin", "accuracy in the bin",
                "upper left")


def coverage_plot(trust: dict, file: Path) -> None:
    """Accuracy of the answered images against the share answered, for each score; the threshold in use marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = figure.subplots()
    for name, curve in trust["curves"].items():
        auroc = trust["auroc"].get(name)
        ax.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], "-",
                label=f"{name} (AUROC {'n/a' if auroc is None else f'{auroc:.3f}'})")
    if trust["threshold"] is not None and trust["accuracy_answered"] is not None:
        ax.plot(trust["coverage"], trust["accuracy_answered"], "*", color="crimson", markersize=14,
                label=f"threshold {trust['threshold']:.3g} on {trust['score']}")
    ax.set_xlim(0, 1.02)
    _save_chart(figure, ax, file, "Accuracy against coverage", "coverage (share of images answered)",
                "accuracy of the answered images", "lower left")


def _save_chart(figure, ax, file: Path, title: str, xlabel: str, ylabel: str, legend: str) -> None:
    """Label, grid and legend one line chart the same way, and write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=8)
    ax.set_title(title)
    save_png(figure, file, 110)


def _number(value) -> float:
    return float(value) if value not in (None, "") else math.nan


def _short(text: str, width: int = 18) -> str:
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # a name that is not UTF-8
    return text if len(text) <= width else text[:width - 1] + "…"


# === Text and HTML ===

def text_report(result: dict) -> str:
    """The figures of ``Evaluation.to_dict()`` as a table for the terminal."""
    classes = result["classes"]
    width = max(16, *map(len, classes))
    lines = [f"model     {result['model']}",
             *([f"RANDOM INIT, {result['random_init']}"] if result.get("random_init") else []),
             *([f"NOTE: {result['caveat']}"] if result.get("caveat") else []),
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
    lines += _trust_lines(result["confidence"])
    if result["skipped"]:
        lines += ["", f"{len(result['skipped'])} file(s) skipped"]
        lines += [f"  {s['path']}: {s['reason']}" for s in result["skipped"]]
    if result.get("report"):
        lines += ["", f"report: {result['report']}"]
    return "\n".join(lines)


def _auroc(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _trust_lines(trust: dict | None) -> list[str]:
    """Calibration and unknown answers, for the terminal."""
    if not trust:
        return []
    fit = trust["fit"]
    lines = ["", f"calibration: temperature {trust['temperature']:.3f}, ECE {trust['ece']:.4f}"
             + (f" ({trust['ece_uncalibrated']:.4f} uncalibrated)" if "ece_uncalibrated" in trust else "")]
    threshold = "none" if trust["threshold"] is None else f"{trust['threshold']:.4g}"
    answered = "" if trust["accuracy_answered"] is None else f", accuracy {trust['accuracy_answered']:.4f} of those"
    lines.append(f"unknown below {threshold} on {trust['score']} ({trust['threshold_from']}): "
                 f"{trust['unknown']} unknown, {trust['coverage']:.1%} answered{answered}")
    for name, value in trust["auroc"].items():
        at_fit = fit.get("auroc", {}).get(name)
        lines.append(f"  AUROC {name}: {_auroc(value)} ({trust['auroc_on']})"
                     + (f", {_auroc(at_fit)} at the fit ({fit['auroc_on']})" if fit.get("auroc") else ""))
    if fit.get("better"):
        lines.append(f"  {fit['better']} separates better ({fit['auroc_on']})")
    return lines


STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .7em;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{text-align:left;background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}code{font-size:90%}
.banner{background:#fff3cd;border:2px solid #e0a800;padding:.7em 1em;font-weight:600}"""


def _trust_html(result: dict, pictures: dict) -> list[str]:
    """The page's calibration and unknown-answer sections."""
    trust = result["confidence"]
    if not trust:
        return []
    fit = trust["fit"]
    calibration = [("temperature (fitted on validation)", f"{trust['temperature']:.4f}"),
                   (f"ECE on {result['data']}, calibrated", f"{trust['ece']:.4f}")]
    if "ece_uncalibrated" in trust:
        calibration.append((f"ECE on {result['data']}, uncalibrated", f"{trust['ece_uncalibrated']:.4f}"))
    if "ece_before" in fit:
        calibration += [("validation ECE before", f"{fit['ece_before']:.4f}"),
                        ("validation ECE after", f"{fit['ece_after']:.4f}")]
    threshold = "none (always answer)" if trust["threshold"] is None else f"{trust['threshold']:.6g}"
    rejection = [("score", trust["score"]), ("threshold", f"{threshold} ({trust['threshold_from']})"),
                 ("unknown label", trust["unknown_label"]), ("unknown answers", trust["unknown"]),
                 ("coverage", f"{trust['coverage']:.4f}"),
                 ("accuracy of the answered", "n/a" if trust["accuracy_answered"] is None
                  else f"{trust['accuracy_answered']:.4f}"),
                 ("accuracy, unknown counted wrong", f"{trust['accuracy']:.4f}")]
    if "target" in fit:
        rejection.append(("target at the fit", fit["target"]))
    if "ood_unknown" in fit:
        rejection.append(("out-of-distribution images answered unknown at the fit", f"{fit['ood_unknown']:.4f}"))
    scores = [[name, _auroc(value), _auroc(fit.get("auroc", {}).get(name))] for name, value in trust["auroc"].items()]
    better = (f"<p><b>{html.escape(fit['better'])}</b> separates better on {html.escape(fit['auroc_on'])}; the "
              f"threshold is on <b>{html.escape(trust['score'])}</b> ({html.escape(fit.get('chosen', ''))}).</p>"
              if fit.get("better") else "")
    return ["<h2>Calibration</h2>", html_table(["figure", "value"], calibration),
            _image(pictures["reliability"], "reliability diagram"),
            "<h2>Unknown answers</h2>", html_table(["figure", "value"], rejection),
            html_table(["score", f"AUROC: {trust['auroc_on']}", f"AUROC at the fit: {fit.get('auroc_on', '')}"],
                       scores),
            better, _image(pictures["coverage"], "accuracy against coverage")]


def html_page(result: dict, pictures: dict[str, Path], duplicates: list[dict] | None = None) -> str:
    """One self-contained page: the tables of ``Evaluation.to_dict()`` and the pictures (``write_report``'s
    names: confusion, misclassified, and when made curves, reliability, coverage, explanations), embedded;
    and the run's duplicate groups (rows of duplicates.csv) when given."""
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
             f"</title><style>{STYLE}</style></head><body>",
             f"<p class='banner' id='random-init'>RANDOM INIT, {e(result['random_init'])}. Expect less than a "
             "pretrained base gives; with the ImageNet weights file (--weights-dir) the run starts from them.</p>"
             if result.get("random_init") else "",
             f"<p class='banner' id='caveat'>{e(result['caveat'])}.</p>" if result.get("caveat") else "",
             f"<h1>Evaluation</h1><p>Model <code>{e(result['model'])}</code> on <code>{e(result['data'])}</code>: "
             f"{result['images']} images, {len(result['classes'])} classes.</p>",
             "<h2>Summary</h2>", html_table(["figure", "value"], summary),
             "<h2>Per class</h2>", html_table(["class", "precision", "recall", "f1", "support"], per_class),
             "<h2>Confusion matrix</h2>", _image(pictures["confusion"], "confusion matrix"),
             "<p>Rows: true class; columns: predicted class.</p>", html_table(["", *result["classes"]], confusion_rows),
             *(["<h2>Training curves</h2>", _image(pictures["curves"], "training curves")]
               if "curves" in pictures else []),
             *_trust_html(result, pictures),
             f"<h2>Misclassified ({len(result['misclassified'])}, worst first)</h2>",
             _image(pictures["misclassified"], "worst mistakes"),
             html_table(["file", "true", "predicted", "confidence"], mistakes) if mistakes else "",
             *(["<h2>Why: Grad-CAM of the worst mistakes</h2>", _image(pictures["explanations"], "explanations")]
               if "explanations" in pictures else []),
             f"<h2>Skipped files ({len(skipped)})</h2>",
             html_table(["file", "reason"], skipped) if skipped else "<p>None.</p>",
             *(_duplicates_section(duplicates) if duplicates is not None else []), "</body></html>"]
    return "\n".join(parts) + "\n"


def _duplicates_section(rows: list[dict]) -> list[str]:
    """How many duplicate groups the run kept in one split, the images it moved and the groups whose
    members carry different labels."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    moved = [row for row in rows if row["moved_from"]]
    conflicts = [g for g in groups.values() if len({row["label"] for row in g}) > 1]
    notable = [row for g in groups.values() if any(r["moved_from"] for r in g) or g in conflicts for row in g]
    table = [[row["group"], row["path"], row["label"], row["split"], row["moved_from"]]
             for row in notable[:SHOWN_DUPLICATES]]
    return [f"<h2>Duplicates ({len(groups)} groups, {len(rows)} images)</h2>",
            f"<p>Each group of copies of one photo was kept in one split: {len(moved)} image(s) moved, "
            f"{sum(any(r['moved_from'] for r in g) for g in groups.values())} group(s) had spanned splits; "
            f"{len(conflicts)} group(s) carry different labels (<code>tlkit data audit</code> shows them side by "
            "side). Every group is in duplicates.csv.</p>",
            html_table(["group", "file", "label", "split", "moved from"], table) if table else ""]


def _image(file: Path, description: str) -> str:
    data = base64.b64encode(Path(file).read_bytes()).decode("ascii")
    return f"<img alt='{description}' src='data:image/png;base64,{data}'>"


def html_table(header: list, rows: list[list]) -> str:
    """An HTML table; numbers right-aligned, text escaped."""
    def cell(value):
        number = isinstance(value, (int, float)) or value.replace(".", "", 1).isdigit()
        return f"<td class='n'>{value}</td>" if number else f"<td>{html.escape(str(value))}</td>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
