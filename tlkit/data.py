"""Images in, decoded splits out: stable stratified splits, the decoded-image cache, checks on the classes, class
weights. :func:`load_data` is the one way a run gets its data; the sources it reads (folders, CSV, TFDS) are
listed by :mod:`tlkit.sources` and decoded by :mod:`tlkit.images`."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.duplicates import Duplicates, Rows
from tlkit.errors import TlkitError
from tlkit.images import DECODER_VERSION, decode_failure, decode_stream
from tlkit.recipe import Data
from tlkit.sources import Item, Listing, list_source
from tlkit.storage import ArrayStore, free_disk, memory_budget
from tlkit.ui import progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHOWN_SKIPPED = 20  # skipped files logged one by one; the rest are counted (all are in skipped.csv)


@dataclass
class Split:
    """One split: where each image came from (a file ``Path`` or a ``"tfds:NAME/SPLIT/INDEX"`` id), int32
    labels, and pixels as uint8 ``(N, size, size, 3)``, in RAM or memory-mapped from the decoded-image cache."""

    paths: list[Path | str]
    labels: np.ndarray
    images: np.ndarray | None = None
    ids: list = field(default_factory=list)  # each image's identity (Listing.identity), which caches key on

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ImageData:
    """A dataset ready for training: class names in label order, splits, every file not used and why."""

    root: Path
    class_names: list[str]
    splits: dict[str, Split]
    skipped: list[tuple[Path | str, str]] = field(default_factory=list)
    source: str = ""
    kind: str = "class folders"
    warnings: list[str] = field(default_factory=list)
    class_weight: dict[str, float] | None = None  # by class name; None: unweighted
    decoded: dict | None = None  # the decoded-image cache: computed or reused, held in RAM or on disk
    duplicates: Grouping | None = None  # duplicate groups and what keeping them in one split moved

    def counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split."""
        return {name: dict(zip(self.class_names, np.bincount(split.labels, minlength=len(self.class_names)).tolist()))
                for name, split in self.splits.items()}

    def class_weight_by_id(self) -> dict[int, float] | None:
        """The class weights as ``model.fit(class_weight=...)`` takes them."""
        if self.class_weight is None:
            return None
        return {i: self.class_weight[name] for i, name in enumerate(self.class_names)}

    def summary(self) -> dict:
        """What the run folder records: the source, counts that add up (files = used + skipped), warnings."""
        used = sum(self.counts().values())
        return {"source": self.source, "kind": self.kind, "root": str(self.root), "classes": len(self.class_names),
                "files": used + len(self.skipped), "used": used, "skipped": len(self.skipped),
                "counts": self.counts(), "class_counts": self.class_counts(),
                "imbalance_ratio": imbalance_ratio(self.class_counts()["train"]), "class_weight": self.class_weight,
                "decoded_images": self.decoded, "duplicates": self.duplicates and self.duplicates.summary(),
                "warnings": self.warnings}

    def fingerprint(self) -> dict:
        """The identity of every image per split: cached features depend on it."""
        return {"root": str(self.root.resolve()), "files": {name: split.ids for name, split in self.splits.items()}}

    def rows(self) -> Rows:
        """Every image's pixels, split by split (SPLITS order): the positions duplicate search reports."""
        return Rows([split.images for split in self.splits.values()])

    def catalogue(self) -> tuple[list, dict[str, np.ndarray]]:
        """Every image's identity in an order no split decides (sorted), and each split's rows in it: features
        cached in this order serve any split of the same images."""
        ids = [i for split in self.splits.values() for i in split.ids]
        order = sorted(range(len(ids)), key=lambda k: json.dumps(ids[k], default=str))
        rank = np.empty(len(ids), np.int64)
        rank[order] = np.arange(len(ids))
        starts = np.cumsum([0] + [len(split) for split in self.splits.values()])
        return [ids[k] for k in order], {name: rank[starts[i]:starts[i + 1]]
                                         for i, name in enumerate(self.splits)}


# === Splits ===

def split_hash(key: str, seed: int = 0) -> float:
    """A file's place in [0, 1) for splitting: a hash of its path inside its class folder, salted by ``seed``
    (0: the path alone)."""
    text = f"{seed}:{key}" if seed else key
    name = text.encode("utf-8", "surrogateescape")  # a file name that is not UTF-8 hashes by its bytes
    return int(hashlib.sha1(name).hexdigest()[:8], 16) / 16**8


def quotas(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Images of a class of ``n`` that val and test take: the fractions of ``n`` rounded, but at least one each
    (when asked for) as long as one image is left for training."""
    def share(fraction, room):
        return min(max(1, math.floor(n * fraction + 0.5)), room) if fraction else 0
    val = share(val_fraction, n - 1)
    return val, share(test_fraction, n - 1 - val)


def assign_splits(items: list[Item], val_fraction: float, test_fraction: float,
                  seed: int = 0) -> dict[str, list[Item]]:
    """Items by split: splits the source fixes are kept; the val and test splits it lacks are carved out of
    each class by exact quotas (:func:`quotas`): its files ranked by :func:`split_hash`, the lowest go to val,
    the next to test.

    A file's rank among its class never changes, so adding or removing files moves an existing file only
    across a quota boundary: m files added to a class move at most m + 1 of its files across each boundary.
    """
    given = {item.split for item in items}
    val = 0.0 if "val" in given else val_fraction
    test = 0.0 if "test" in given else test_fraction
    by_split = {name: [] for name in SPLITS}
    by_class: dict[int, list[Item]] = {}
    for item in items:
        if item.split in (None, "train") and (val or test):
            by_class.setdefault(item.label, []).append(item)
        else:
            by_split[item.split or "train"].append(item)
    for group in by_class.values():
        group.sort(key=lambda item: (split_hash(item.key, seed), item.key))
        n_val, n_test = quotas(len(group), val, test)
        by_split["val"] += group[:n_val]
        by_split["test"] += group[n_val:n_val + n_test]
        by_split["train"] += group[n_val + n_test:]
    return by_split


def _in_order(by_split: dict[str, list[Item]]) -> list[Item]:
    """Items split by split (SPLITS order): the order of positions and decoded rows."""
    return [item for name in SPLITS for item in by_split[name]]


def _decode_into(out: np.ndarray, listing: Listing, by_split: dict[str, list[Item]], size: int,
                 failed: dict[int, str]) -> dict[int, str]:
    """Decode every item into ``out``: each split's decoded images in position order from the first row of its
    region (regions follow SPLITS, one row per item; failed items leave the region's last rows unused); return
    the reason for each failed position, starting with those already ``failed``. Payloads may come in any
    order (TFDS streams its examples in the dataset's order)."""
    order = _in_order(by_split)
    failures = dict(failed)
    payloads = ((p, x) for p, x in listing.payloads([item.origin for item in order]) if p not in failed)
    with progress(total=len(order) - len(failed), desc="decode", unit="img") as bar:
        for position, pixels, reason in decode_stream(payloads, size):
            bar.update(1)
            if reason:
                failures[position] = reason
            else:
                out[position] = pixels
    start = 0
    for name in SPLITS:  # close each region's gaps: its decoded rows first, in position order
        end = start + len(by_split[name])
        for row, position in enumerate((p for p in range(start, end) if p not in failures), start):
            if row != position:
                out[row] = out[position]
        start = end
    return failures


def _decoded(listing: Listing, by_split: dict[str, list[Item]], ids: list, size: int,
             store: ArrayStore | None, failed: dict[int, str]) -> tuple[np.ndarray, dict[int, str], dict | None]:
    """Decoded pixels by split region, failures by position, and what the cache did: from the decoded-image
    cache when the same images were decoded at this size before (held in RAM within the store's budget,
    else memory-mapped), else decoded now and stored for the next run."""
    shape = (len(ids), size, size, 3)
    if store is None:
        pixels = np.empty(shape, np.uint8)
        return pixels, _decode_into(pixels, listing, by_split, size, failed), None

    def compute(folder):
        out = np.lib.format.open_memmap(folder / "0.npy", "w+", np.uint8, shape)
        failures = _decode_into(out, listing, by_split, size, failed)
        out.flush()
        return {"failures": failures}

    entry = store.load_or_compute({"decoded images": DECODER_VERSION, "size": size,
                                   "root": str(listing.root.resolve()), "items": ids},
                                  f"decoded images, {size} px, of {listing.source}", compute, kind="images")
    failures = {int(k): v for k, v in entry.meta["failures"].items()}
    event = entry.event
    log.info("decoded images: %s, %.1f MB in %s", event["event"], event["bytes"] / 1e6, event["where"])
    return entry.arrays[0], failures, {k: event[k] for k in ("event", "bytes", "where", "folder")}


# === Duplicates: one split per group ===

@dataclass
class Grouping:
    """Duplicate groups of a dataset and what keeping each in one split did. Members are ``(image, label,
    split before, split after)``; a group's split is its first member's (by path), so no photo sits in two."""

    groups: list[list[tuple[Path | str, str, str, str]]]
    pairs: dict[str, int]  # pairs found by kind: exact, near
    method: str  # data.duplicates: near or exact

    def summary(self) -> dict:
        """Counts, every moved image and every group whose members carry different labels (JSON-ready)."""
        moved = [{"path": str(p), "from": a, "to": b} for group in self.groups for p, _, a, b in group if a != b]
        conflicts = [{"paths": [str(p) for p, *_ in group], "labels": [label for _, label, *_ in group]}
                     for group in self.groups if len({label for _, label, *_ in group}) > 1]
        return {"method": self.method, "groups": len(self.groups), "images": sum(map(len, self.groups)),
                "pairs": self.pairs, "merged": sum(len({m[2] for m in group}) > 1 for group in self.groups),
                "moved": moved, "conflicts": conflicts}

    def rows(self) -> list[dict]:
        """One row per member: what the run folder's duplicates.csv holds."""
        return [{"group": g + 1, "path": str(p), "label": label, "split": after,
                 "moved_from": before if before != after else ""}
                for g, group in enumerate(self.groups) for p, label, before, after in group]


def group_splits(data: ImageData, groups: list[list[int]]) -> list[str]:
    """The split of every image (positions in :meth:`ImageData.rows` order) once each group is moved into
    the split of its first member by path: a step after the split function, whatever it decided."""
    ids = [i for split in data.splits.values() for i in split.ids]
    target = [name for name, split in data.splits.items() for _ in range(len(split))]
    for members in groups:
        first = min(members, key=lambda m: _path_key(ids[m]))
        for m in members:
            target[m] = target[first]
    return target


def keep_groups_together(data: ImageData, found: Duplicates, spec: Data, store: ArrayStore | None = None
                         ) -> ImageData:
    """``data`` with each of ``found.groups`` in one split (:func:`group_splits`); the images of the splits
    that change are gathered through ``store`` (RAM within its budget, else memory-mapped)."""
    origins = [(name, i) for name, split in data.splits.items() for i in range(len(split))]
    target = group_splits(data, found.groups)
    groups = [[(data.splits[s].paths[i], data.class_names[data.splits[s].labels[i]], s, target[m])
               for m, (s, i) in ((m, origins[m]) for m in members)] for members in found.groups]
    pairs = {kind: sum(p.kind == kind for p in found.pairs) for kind in ("exact", "near")}
    grouped = ImageData(**{**data.__dict__, "duplicates": Grouping(groups, pairs, spec.duplicates)})
    if target == [name for name, _ in origins]:
        return grouped
    layout = [m for name in data.splits for m, t in enumerate(target) if t == name]
    pixels = _gathered(data.rows(), layout, [data.splits[origins[m][0]].ids[origins[m][1]] for m in layout],
                       data, store)
    grouped.splits, start = {}, 0
    for name in data.splits:
        members = [origins[m] for m in layout if target[m] == name]
        grouped.splits[name] = Split([data.splits[s].paths[i] for s, i in members],
                                     np.array([data.splits[s].labels[i] for s, i in members], np.int32),
                                     pixels[start:start + len(members)], [data.splits[s].ids[i] for s, i in members])
        start += len(members)
    source_warnings = [w for w in data.warnings if w not in _check(data, spec)]  # the listing's (CSV, ...)
    grouped.warnings = source_warnings + _check(grouped, spec)
    grouped.class_weight = class_weights(spec.class_weight, data.class_names, grouped.splits["train"].labels)
    return grouped


def _path_key(identity) -> str:
    """The stable name of an image: its path inside the data root (or its TFDS id)."""
    return identity[0] if isinstance(identity, list) else str(identity)


def _gathered(rows: Rows, positions: list[int], ids: list, data: ImageData, store: ArrayStore | None) -> np.ndarray:
    """The images at ``positions`` as one array, in that order: the decoded-image cache entry of this layout."""
    shape = (len(positions), *rows[0].shape)
    if store is None:
        return np.stack([rows[m] for m in positions]) if positions else np.empty(shape, np.uint8)

    def compute(folder):
        out = np.lib.format.open_memmap(folder / "0.npy", "w+", np.uint8, shape)
        for k, m in enumerate(positions):
            out[k] = rows[m]
        out.flush()
        return {"failures": {}}

    entry = store.load_or_compute({"decoded images": DECODER_VERSION, "size": shape[1],
                                   "root": str(data.root.resolve()), "items": ids},
                                  f"decoded images, {shape[1]} px, of {data.source} (duplicates kept together)",
                                  compute, kind="images")
    return entry.arrays[0]


# === Checks and weights ===

def imbalance_ratio(counts: dict[str, int]) -> float | None:
    """Images in the largest class over the smallest (None when a class has none)."""
    smallest = min(counts.values())
    return round(max(counts.values()) / smallest, 2) if smallest else None


def class_warnings(counts: dict[str, int], min_per_class: int) -> list[str]:
    """Warnings for classes too small to learn or judge reliably."""
    few = [f"{name} ({n})" for name, n in counts.items() if n < min_per_class]
    if not few:
        return []
    return [f"class(es) with fewer than {min_per_class} usable images (data.min_per_class): {', '.join(few)}; "
            "their accuracy will be unreliable: add images"]


def class_weights(choice, class_names: list[str], train_labels: np.ndarray) -> dict[str, float] | None:
    """``auto``: n / (classes x count), so every class weighs the same in the loss; a dict: as given, 1.0
    for classes it leaves out; None: None (unweighted)."""
    if choice is None:
        return None
    if choice == "auto":
        counts = np.bincount(train_labels, minlength=len(class_names))
        return {name: round(len(train_labels) / (len(class_names) * n), 6) if n else 1.0
                for name, n in zip(class_names, counts.tolist())}
    return {name: float(choice.get(name, 1.0)) for name in class_names}


# === The entry point ===

def load_data(source: str | Path | Listing, size: int, spec: Data | None = None, store=None) -> ImageData:
    """List (unless given a :class:`Listing`), split, decode and check a data source (folder, CSV or
    ``tfds:NAME[:SPLIT]``) for training.

    ``store`` keeps decoded images on disk for the next run and decides whether they are held in RAM or
    memory-mapped; without it they are decoded into RAM. Either way the decoded images must fit first.
    """
    spec = spec or Data()
    listing = source if isinstance(source, Listing) else list_source(source, spec)
    source = listing.source
    names = listing.class_names
    if len(names) < 2:
        raise TlkitError(f"{source} has {len(names)} class; a classifier needs at least two")
    unknown = sorted(set(spec.class_weight) - set(names)) if isinstance(spec.class_weight, dict) else []
    if unknown:
        raise TlkitError(f"data.class_weight names unknown class(es) {', '.join(unknown)}; classes: {', '.join(names)}")
    by_split = assign_splits(listing.items, spec.val_fraction, spec.test_fraction, spec.split_seed)
    for name in SPLITS:
        if not by_split[name] and (name != "test" or spec.test_fraction > 0):
            raise TlkitError(f"the {name} split of {source} is empty; add images or change the split fractions "
                             "(data.val_fraction, data.test_fraction)")
    check_decoded_size(len(listing.items), size, store)
    order = _in_order(by_split)
    ids, vanished = [], {}
    for position, item in enumerate(order):
        try:
            ids.append(listing.identity(item.origin))
        except OSError as error:  # listed, then gone or unreadable: skipped like any unusable file
            ids.append(None)
            vanished[position] = decode_failure(error)
    pixels, failures, decoded = _decoded(listing, by_split, ids, size, store, vanished)

    splits, start = {}, 0  # each split's region of rows starts at its first item's position
    for name in SPLITS:
        kept = [i for i in range(start, start + len(by_split[name])) if i not in failures]
        if by_split[name]:
            labels = np.array([order[i].label for i in kept], np.int32)
            splits[name] = Split([order[i].origin for i in kept], labels, pixels[start:start + len(kept)],
                                 [ids[i] for i in kept])
        start += len(by_split[name])
    skipped = listing.skipped + [(order[p].origin, reason) for p, reason in failures.items()]
    data = ImageData(listing.root, names, splits, sorted(skipped, key=lambda s: str(s[0])), str(source), listing.kind,
                     decoded=decoded)
    data.warnings = list(listing.warnings) + _check(data, spec)
    data.class_weight = class_weights(spec.class_weight, names, splits["train"].labels)
    _log_summary(data)
    return data


def check_decoded_size(images: int, size: int, store: ArrayStore | None) -> None:
    """Fail before decoding when ``images`` decoded at ``size`` px cannot fit where they go: the cache's disk
    (memory-mapped beyond its RAM budget), or RAM without a store."""
    needed = images * size * size * 3
    if store is None:
        where, free = "RAM available", memory_budget(1.0)
    else:
        where, free = f"free on the disk of the cache {store.root}", free_disk(store.root)
    if needed > free:
        raise TlkitError(f"--image-size {size}: {images} images decoded at {size}x{size} px take about "
                         f"{_gigabytes(needed)} and only {_gigabytes(free)} is {where}; use a smaller --image-size "
                         "(the base's default is usually 224) or free space (--cache-dir on a larger disk)")


def _gigabytes(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GB"


def _check(data: ImageData, spec: Data) -> list[str]:
    """Errors for splits or classes without usable images; the warnings for small or unvalidated classes."""
    for name, split in data.splits.items():
        if not len(split):
            grouped = " after duplicates were kept together (data.duplicates)" if data.duplicates else ""
            raise TlkitError(f"no usable images in the {name} split of {data.source}{grouped}; {len(data.skipped)} "
                             "file(s) were skipped (`tlkit data inspect` lists them with reasons)")
    counts = data.class_counts()
    untrained = [c for c, n in counts["train"].items() if n == 0]
    if untrained:
        raise TlkitError(f"class(es) without usable training images in {data.source}: {', '.join(untrained)} "
                         "(add images to them, or remove them)")
    totals = {c: sum(counts[s][c] for s in counts) for c in data.class_names}
    warnings = class_warnings(totals, spec.min_per_class)
    unjudged = [c for c, n in counts["val"].items() if n == 0]
    if unjudged:
        warnings.append(f"class(es) without validation images: {', '.join(unjudged)}; validation "
                        "accuracy says nothing about them (add images or raise data.val_fraction)")
    return warnings


def _log_summary(data: ImageData) -> None:
    summary = data.summary()
    log.info("data %s (%s): %d classes; %s; %d file(s) in, %d used, %d skipped; imbalance %sx", data.source,
             data.kind, len(data.class_names), ", ".join(f"{k} {v}" for k, v in data.counts().items()),
             summary["files"], summary["used"], summary["skipped"], summary["imbalance_ratio"])
    for path, reason in data.skipped[:SHOWN_SKIPPED]:
        log.warning("skipped %s: %s", path, reason)
    if len(data.skipped) > SHOWN_SKIPPED:
        log.warning("... and %d more skipped file(s)", len(data.skipped) - SHOWN_SKIPPED)
    for warning in data.warnings:
        log.warning(warning)
