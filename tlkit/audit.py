"""`tlkit data audit`: what in a data source deserves a look before training on it. Exact and near-duplicates
(grouped; which groups span splits, which carry different labels), likely label errors (images whose
out-of-fold probability of their own label is low) and outliers (images far from every class), all from
the base's pooled features, which the audit caches exactly as `tlkit run` does: a run with the same recipe
reuses them, and an audit after a run reuses the run's.

It writes audit.json, audit.html (thumbnails of every group and suspect) and audit.csv, which `tlkit run
--data audit.csv` takes as a data source once its ``action`` column says keep, drop or relabel. It reads the
data and never changes, moves or deletes a file.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.data import ImageData, group_splits
from tlkit.duplicates import NEIGHBOURS, Duplicates, Rows, embed, find_duplicates, neighbours, unit_rows
from tlkit.evaluation.report import STYLE, html_table
from tlkit.recipe import Recipe
from tlkit.runfolder import RunFolder
from tlkit.session import prepare
from tlkit.suspects import OUTLIER_THRESHOLD, blank, default_label_threshold, out_of_fold, outlier_scores

log = logging.getLogger(__name__)

SHOWN = 100  # groups and suspects with thumbnails on the page (audit.json and audit.csv have all)
CSV_COLUMNS = ["path", "label", "split", "action", "suggested_label", "label_probability", "outlier_score", "issues"]


@dataclass
class Audit:
    """The audit of one data source: its JSON object, and where the files went."""

    report: dict
    folder: Path


def audit(recipe: Recipe, data: str | Path | None, out: str | Path, *, weights_dir: str | None = None,
          cache_dir: str | Path | None = None, cache_memory: float = 0.5, label_threshold: float | None = None,
          outlier_threshold: float = OUTLIER_THRESHOLD) -> Audit:
    """Audit ``data`` with the base, weights and image size of ``recipe`` (its ``data.near_duplicate`` is the
    near-duplicate threshold; the splits reported are those `tlkit run` with this recipe would use) and write
    audit.json, audit.html and audit.csv into ``out``. ``label_threshold`` defaults to
    :func:`tlkit.suspects.default_label_threshold`."""
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    session = prepare(recipe, data, weights_dir=weights_dir, cache_dir=cache_dir, cache_memory=cache_memory,
                      group_duplicates=False)
    images, spec = session.data, session.recipe.data
    timings = {k: round(v, 2) for k, v in session.timings.items()}
    mark = time.perf_counter()
    features = session.pooled_features()
    timings["features"] = round(time.perf_counter() - mark, 2)
    mark = time.perf_counter()
    rows, labels = images.rows(), np.concatenate([split.labels for split in images.splits.values()])
    with threadpool_limits(1):  # many small products: one thread is faster, and leaves TensorFlow alone
        z = embed(features)
        nearest = neighbours(z, NEIGHBOURS)[0]
        found = find_duplicates(rows, spec.near_duplicate, nearest=nearest)
        timings["duplicates"] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()
        group = found.group_ids(len(rows))
        probabilities = out_of_fold(z, labels, group, len(images.class_names))
        timings["labels"] = round(time.perf_counter() - mark, 2)
        mark = time.perf_counter()
        scores = outlier_scores(unit_rows(features), labels, group, len(images.class_names))
        blanks = blank(rows)
        timings["outliers"] = round(time.perf_counter() - mark, 2)
    folder = RunFolder(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    if label_threshold is None:
        label_threshold = default_label_threshold(len(images.class_names))
    report = _report(session, found, probabilities, scores, blanks, label_threshold, outlier_threshold)
    mark = time.perf_counter()
    write_outputs(report, rows, folder.path)
    timings["write"] = round(time.perf_counter() - mark, 2)
    report["timings"] = {**timings, "total": round(time.perf_counter() - started, 2)}
    folder.write_json(folder.path / "audit.json", report)
    log.info("audit of %s: %d duplicate group(s) (%d span splits, %d with different labels), %d label "
             "suspect(s), %d outlier(s); %s", report["data"]["source"], len(report["duplicates"]),
             report["counts"]["groups_spanning_splits"], report["counts"]["groups_with_different_labels"],
             report["counts"]["label_suspects"], report["counts"]["outliers"], folder.path / "audit.html")
    return Audit(report, folder.path)


# === The report ===

def _report(session, found: Duplicates, probabilities: np.ndarray, scores: np.ndarray, blanks: np.ndarray,
            label_threshold: float, outlier_threshold: float) -> dict:
    """audit.json: what was audited and how, the duplicate groups, label suspects and outliers, and one row
    per image as audit.csv holds it."""
    images: ImageData = session.data
    recipe, names = session.recipe, images.class_names
    paths = [p for split in images.splits.values() for p in split.paths]
    labels = np.concatenate([split.labels for split in images.splits.values()])
    before = [name for name, split in images.splits.items() for _ in range(len(split))]
    kept = {"near": found, "exact": found.of_kind("exact")}.get(recipe.data.duplicates)  # what tlkit run merges
    after = group_splits(images, kept.groups) if kept else before
    pair_scores = {}
    for pair in found.pairs:
        pair_scores.setdefault(pair.a, []).append(pair)
    groups = []
    for g, members in enumerate(found.groups):
        kinds = {p.kind for m in members for p in pair_scores.get(m, [])}
        groups.append({"group": g + 1, "kind": "exact" if kinds == {"exact"} else "near",
                       "spans_splits": len({before[m] for m in members}) > 1,
                       "different_labels": len({int(labels[m]) for m in members}) > 1,
                       "members": [{"index": m, "path": str(paths[m]), "label": names[labels[m]], "split": before[m],
                                    "split_in_run": after[m]} for m in members],
                       "pairs": [{"a": str(paths[p.a]), "b": str(paths[p.b]), "kind": p.kind, "score": p.score}
                                 for m in members for p in pair_scores.get(m, [])]})
    given = probabilities[np.arange(len(labels)), labels]
    suggested = np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)
    ranked = [int(i) for i in np.argsort(np.nan_to_num(given, nan=np.inf), kind="stable") if np.isfinite(given[i])]
    suspects = [{"index": i, "path": str(paths[i]), "label": names[labels[i]], "suggested": names[suggested[i]],
                 "probability": round(float(given[i]), 4),
                 "suggested_probability": round(float(probabilities[i, suggested[i]]), 4), "rank": r + 1}
                for r, i in enumerate(ranked) if given[i] < label_threshold and suggested[i] != labels[i]]
    order = [int(i) for i in np.lexsort((-scores, ~blanks))]  # blank images first, then the farthest
    outliers = [{"index": i, "path": str(paths[i]), "label": names[labels[i]], "score": round(float(scores[i]), 3),
                 "reason": "blank" if blanks[i] else "far from every class"}
                for i in order if blanks[i] or scores[i] > outlier_threshold]
    group_of = found.group_of()
    suspect_of, outlier_of = {s["index"]: s for s in suspects}, {o["index"]: o for o in outliers}
    table = []
    for i, path in enumerate(paths):
        issues = [text for flagged, text in ((i in group_of, f"duplicate group {group_of.get(i, 0) + 1}"),
                                             (i in suspect_of, "label suspect"), (i in outlier_of, "outlier"))
                  if flagged]
        table.append({"path": str(Path(path).resolve()) if isinstance(path, Path) else path,
                      "label": names[labels[i]], "split": after[i], "action": "keep",
                      "suggested_label": names[suggested[i]] if np.isfinite(given[i]) and suggested[i] != labels[i]
                      else "", "label_probability": round(float(given[i]), 4) if np.isfinite(given[i]) else "",
                      "outlier_score": round(float(scores[i]), 3), "issues": "; ".join(issues)})
    untested = int(np.isnan(given).sum())
    return {
        "data": {"source": images.source, "kind": images.kind, "images": len(paths), "classes": names,
                 "skipped": [{"path": str(p), "reason": r} for p, r in images.skipped]},
        "recipe": {"base": recipe.base, "alpha": recipe.alpha, "image_size": recipe.size,
                   "weights": session.weights.describe(), "data.duplicates": recipe.data.duplicates},
        "thresholds": {"near_duplicate": recipe.data.near_duplicate, "label": label_threshold,
                       "outlier": outlier_threshold},
        "warnings": [w for w in [session.weights.warning] if w] + images.warnings +
                    ([f"{untested} image(s) of classes with fewer than two images have no label check"]
                     if untested else []),
        "counts": {"groups": len(groups), "images_in_groups": sum(len(g["members"]) for g in groups),
                   "exact_pairs": sum(p.kind == "exact" for p in found.pairs),
                   "near_pairs": sum(p.kind == "near" for p in found.pairs),
                   "groups_spanning_splits": sum(g["spans_splits"] for g in groups),
                   "groups_with_different_labels": sum(g["different_labels"] for g in groups),
                   "label_suspects": len(suspects), "outliers": len(outliers)},
        "duplicates": groups, "label_suspects": suspects, "outliers": outliers, "images": table,
    }


# === Files ===

def write_outputs(report: dict, rows: Rows, out: Path) -> None:
    """audit.csv (one row per image: path, label, split, action, suggested_label, label_probability,
    outlier_score, issues) and audit.html."""
    RunFolder.write_csv(out / "audit.csv", report["images"], CSV_COLUMNS)
    (out / "audit.html").write_text(html_page(report, rows), encoding="utf-8")


def _thumbnail(pixels: np.ndarray, caption: str, note: str = "") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels)).save(buffer, "JPEG", quality=85)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure><img src='data:image/jpeg;base64,{data}' alt=''><figcaption>{caption}"
            f"{'<br>' + note if note else ''}</figcaption></figure>")


def html_page(report: dict, rows: Rows) -> str:
    """One self-contained page: the figures, then thumbnails side by side for each duplicate group, label
    suspect and outlier, with the given (and suggested) label."""
    e = html.escape
    counts, data = report["counts"], report["data"]

    def caption(item, extra=""):
        return f"<code>{e(Path(item['path']).name)}</code><br>{e(item['label'])}{extra}"

    groups = []
    for group in report["duplicates"][:SHOWN]:
        flags = [text for key, text in (("spans_splits", "spans splits"), ("different_labels", "different labels"))
                 if group[key]]
        best = max((p["score"] for p in group["pairs"]), default=1.0)
        cells = [_thumbnail(rows[m["index"]], caption(m, f" · {m['split']}" + (
            f" → {m['split_in_run']}" if m["split_in_run"] != m["split"] else ""))) for m in group["members"]]
        groups.append(f"<div class='group'><h3>Group {group['group']}: {group['kind']}"
                      f"{', ' + ', '.join(flags) if flags else ''} (score {best:.3f})</h3>{''.join(cells)}</div>")
    suspects = [_thumbnail(rows[s["index"]], caption(s, f" → <b>{e(s['suggested'])}</b>"),
                           f"p={s['probability']:.3f} (suggested {s['suggested_probability']:.2f})")
                for s in report["label_suspects"][:SHOWN]]
    outliers = [_thumbnail(rows[o["index"]], caption(o), f"{o['reason']}, score {o['score']:.2f}")
                for o in report["outliers"][:SHOWN]]
    summary = [[key.replace("_", " "), value] for key, value in counts.items()]
    settings = [["base", f"{report['recipe']['base']} (alpha {report['recipe']['alpha']}), "
                         f"{report['recipe']['image_size']} px"],
                ["weights", report["recipe"]["weights"]],
                *[[f"{key.replace('_', ' ')} threshold", value] for key, value in report["thresholds"].items()]]
    style = STYLE + ("figure{display:inline-block;margin:.3em;width:140px;vertical-align:top;font-size:80%}"
                     "figure img{width:128px;height:128px}.group{border-top:1px solid #ddd;margin:.5em 0}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tlkit audit: {e(data['source'])}</title>"
             f"<style>{style}</style></head><body>",
             f"<h1>Audit</h1><p><code>{e(data['source'])}</code>: {data['images']} images, "
             f"{len(data['classes'])} classes. Nothing was changed: edit <code>audit.csv</code> (action keep, drop "
             "or relabel) and pass it to <code>tlkit run --data</code>.</p>",
             *[f"<p><b>warning:</b> {e(w)}</p>" for w in report["warnings"]],
             html_table(["figure", "count"], summary), html_table(["setting", "value"], settings),
             f"<h2>Duplicate groups ({counts['groups']})</h2><p>Splits as hashed → as <code>tlkit run</code> "
             "keeps each group together.</p>", *groups,
             f"<h2>Likely label errors ({counts['label_suspects']})</h2><p>Given label → suggested; p is the "
             "out-of-fold probability of the given label. Most likely first.</p>", *suspects,
             f"<h2>Outliers ({counts['outliers']})</h2><p>Blank images, then images far from every class "
             "(score: distance to the nearest class over its own spread; 1 is typical), farthest first.</p>",
             *outliers,
             f"<h2>Skipped files ({len(data['skipped'])})</h2>",
             html_table(["file", "reason"], [[s["path"], s["reason"]] for s in data["skipped"]])
             if data["skipped"] else "<p>None.</p>", "</body></html>"]
    return "\n".join(parts) + "\n"


def text_summary(report: dict, folder: Path) -> str:
    """The audit for the console: counts, the first few of each finding, and where the files are."""
    counts = report["counts"]
    lines = [f"{report['data']['source']}: {report['data']['images']} images, {len(report['data']['classes'])} "
             f"classes ({report['recipe']['base']}, {report['recipe']['image_size']} px, "
             f"weights {report['recipe']['weights']})"]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append(f"duplicate groups: {counts['groups']} ({counts['images_in_groups']} images; {counts['exact_pairs']}"
                 f" exact and {counts['near_pairs']} near pairs), {counts['groups_spanning_splits']} spanning splits, "
                 f"{counts['groups_with_different_labels']} with different labels")
    for group in report["duplicates"][:5]:
        lines.append("  " + ", ".join(f"{m['path']} ({m['label']}, {m['split']})" for m in group["members"]))
    lines.append(f"likely label errors: {counts['label_suspects']}")
    lines += [f"  {s['path']}: {s['label']} -> {s['suggested']} (p={s['probability']:.3f})"
              for s in report["label_suspects"][:5]]
    lines.append(f"outliers: {counts['outliers']}")
    lines += [f"  {o['path']} ({o['label']}): {o['score']:.2f}" for o in report["outliers"][:5]]
    lines.append(f"report: {folder / 'audit.html'}; edit {folder / 'audit.csv'} and train on it with "
                 f"tlkit run RECIPE --data {folder / 'audit.csv'}")
    return "\n".join(lines)
