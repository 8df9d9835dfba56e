"""`tlkit data inspect`: what a data source holds before training on it: classes, counts, formats, sizes,
imbalance, and every file that would be skipped, with the reason."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tlkit.data import class_warnings, imbalance_ratio
from tlkit.images import parallel, read_image
from tlkit.recipe import Data
from tlkit.sources import list_source
from tlkit.ui import progress


def _shape_and_format(pair) -> tuple[int, int, str]:
    pixels, fmt = read_image(pair[1])
    return pixels.shape[1], pixels.shape[0], fmt


def inventory(source: str | Path, min_per_class: int = 5, spec: Data | None = None) -> dict:
    """Decode every image of a source once (no resizing) and tally it per class; JSON-ready. ``spec``: how to
    read a CSV source."""
    listing = list_source(source, spec)
    items = listing.items
    counts = Counter()
    splits = {name: Counter() for name in listing.class_names}
    formats = {name: Counter() for name in listing.class_names}
    sizes = {name: [] for name in listing.class_names}
    skipped = list(listing.skipped)
    payloads = listing.payloads([item.origin for item in items])
    for (position, _), shape, reason in progress(parallel(_shape_and_format, payloads), total=len(items),
                                                 desc="inspect", unit="img"):
        item = items[position]
        if reason:
            skipped.append((item.origin, reason))
            continue
        name = listing.class_names[item.label]
        width, height, fmt = shape
        counts[name] += 1
        splits[name][item.split or "(hashed)"] += 1
        formats[name][fmt] += 1
        sizes[name].append((width * height, width, height))
    per_class = {name: counts[name] for name in listing.class_names}

    def extreme(name, pick):
        return f"{pick(sizes[name])[1]}x{pick(sizes[name])[2]}" if sizes[name] else None

    fixed = any(item.split for item in items)  # the source's own splits; otherwise the run hashes them
    classes = [{"name": name, "images": per_class[name], **({"splits": dict(splits[name])} if fixed else {}),
                "formats": dict(formats[name]), "smallest": extreme(name, min), "largest": extreme(name, max)}
               for name in listing.class_names]
    used = sum(per_class.values())
    return {"source": str(source), "kind": listing.kind, "root": str(listing.root), "classes": classes,
            "files": used + len(skipped), "used": used,
            "skipped": [{"path": str(path), "reason": reason} for path, reason in sorted(skipped, key=str)],
            "imbalance_ratio": imbalance_ratio(per_class),
            "warnings": listing.warnings + class_warnings(per_class, min_per_class)}


def format_inventory(report: dict) -> str:
    """The inventory as a plain-text table for the console."""
    split_names = sorted({s for c in report["classes"] for s in c.get("splits", {})})
    show_splits = bool(split_names)
    header = ["class", "images"] + (split_names if show_splits else []) + ["formats", "smallest", "largest"]
    rows = [[c["name"], str(c["images"])] + ([str(c["splits"].get(s, 0)) for s in split_names] if show_splits else [])
            + [", ".join(f"{k} {v}" for k, v in sorted(c["formats"].items())) or "-", c["smallest"] or "-",
               c["largest"] or "-"] for c in report["classes"]]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [f"{report['source']} ({report['kind']}): {len(report['classes'])} classes, {report['files']} files: "
             f"{report['used']} usable, {len(report['skipped'])} skipped"]
    lines += ["  ".join(cell.ljust(w) if i == 0 or i >= len(header) - 3 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header] + rows]
    ratio = report["imbalance_ratio"]
    lines.append(f"imbalance ratio (largest / smallest class): {'n/a (a class is empty)' if ratio is None else ratio}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    if report["skipped"]:
        lines.append(f"skipped files ({len(report['skipped'])}):")
        lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)
