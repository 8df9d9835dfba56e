"""Images in, decoded splits out: stable hash splits, Pillow decoding, the decoded-image cache, checks on
the classes, class weights. :func:`load_data` is the one way a run gets its data; the sources it reads
(folders, CSV, TFDS) are listed by :mod:`tlkit.sources`."""
from __future__ import annotations

import functools
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tlkit.errors import TlkitError
from tlkit.progress import progress
from tlkit.recipe import Data
from tlkit.sources import Item, Listing, list_source

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DECODER_VERSION = 1  # bump when decoding changes what pixels a file gives: old decoded caches are then unused
SHOWN_SKIPPED = 20  # skipped files logged one by one; the rest are counted (all are in skipped.csv)
DECODE_BATCH = 16  # images one thread decodes at a time (those of one shape are resized together)
LARGE_IMAGE = 2**20  # pixels; larger images are resized right after decoding, so memory in flight stays small


@dataclass
class Split:
    """One split: where each image came from (a file ``Path`` or a ``"tfds:NAME/SPLIT/INDEX"`` id), int32
    labels, and pixels as uint8 ``(N, size, size, 3)``, in RAM or memory-mapped from the decoded-image cache."""

    paths: list[Path | str]
    labels: np.ndarray
    images: np.ndarray | None = None

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
                "decoded_images": self.decoded, "warnings": self.warnings}

    def fingerprint(self) -> dict:
        """Identity of every image per split (file: relative path, size, mtime; TFDS: its id under ``root``,
        which names dataset, config and version): cached features depend on it."""
        def image_id(origin):
            if isinstance(origin, str):
                return origin
            stat = origin.stat()
            name = origin.relative_to(self.root).as_posix() if origin.is_relative_to(self.root) else str(origin)
            return [name, stat.st_size, stat.st_mtime_ns]
        return {"root": str(self.root.resolve()),
                "files": {name: [image_id(p) for p in split.paths] for name, split in self.splits.items()}}


# === Splits ===

def split_of(relative_path: str, val_fraction: float, test_fraction: float) -> str:
    """The split a file belongs to, from a hash of its path inside its class folder.

    Adding or removing other files never moves a file to another split (TF Hub's retrain.py scheme), and
    each class is split by the same fractions (stratified).
    """
    bucket = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    if bucket < val_fraction:
        return "val"
    if bucket < val_fraction + test_fraction:
        return "test"
    return "train"


def assign_splits(items: list[Item], val_fraction: float, test_fraction: float) -> dict[str, list[Item]]:
    """Items by split: splits the source fixes are kept; val and test it lacks are hashed out of train."""
    given = {item.split for item in items}
    val = 0.0 if "val" in given else val_fraction
    test = 0.0 if "test" in given else test_fraction
    by_split = {name: [] for name in SPLITS}
    for item in items:
        name = item.split or "train"
        by_split[split_of(item.key, val, test) if name == "train" else name].append(item)
    return by_split


# === Decoding ===

class ImageError(ValueError):
    """A file that is not a usable image; the message is the reason listed in skipped.csv."""


_SIGNATURES = {b"\xff\xd8": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


def _signature(head: bytes) -> str | None:
    """The image format the first bytes announce, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def _rgb(image) -> np.ndarray:
    """Pillow image -> uint8 RGB. 16-bit grayscale keeps its high byte (scaled, not clipped, like 16-bit
    colour PNGs); alpha is dropped, as the exported model's decoder does, so serving sees the same pixels."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.clip(np.asarray(image, np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def read_image(source: Path | bytes) -> tuple[np.ndarray, str]:
    """Upright uint8 RGB pixels ``(height, width, 3)`` of a file or encoded bytes, and the format name.

    JPEG EXIF orientation is applied, grayscale and palettes become RGB, animations give their first frame.
    Raises :class:`ImageError` (or an OSError) with the reason when the data is not a usable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    data = isinstance(source, (bytes, bytearray))
    if (len(source) if data else Path(source).stat().st_size) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(source) if data else source) as image:
            image.load()
            return _rgb(ImageOps.exif_transpose(image)), image.format
    except UnidentifiedImageError:
        if data:
            head = bytes(source[:12])
        else:
            with open(source, "rb") as f:
                head = f.read(12)
        kind = _signature(head)
        raise ImageError(f"corrupt {kind} image (unreadable header)" if kind else
                         "not an image (unrecognised format)") from None


def read_pixels(source: Path | bytes) -> np.ndarray:
    """Upright uint8 RGB pixels at their own size (see :func:`read_image`)."""
    return read_image(source)[0]


def decode_failure(error: Exception) -> str:
    """Why an image could not be used, on one line (the reason listed for skipped files)."""
    if isinstance(error, ImageError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, PermissionError):
        return "cannot read: permission denied"
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, EOFError) or "truncated" in message.lower():
        return "truncated image"
    return f"cannot decode: {message}"


def decode_image(source: Path | bytes, size: int) -> np.ndarray:
    """A file's pixels as uint8 RGB ``(size, size, 3)``: upright, resized as serving does."""
    return resize_pixels(read_pixels(source), size)


def resize_pixels(pixels, size: int):
    """Resize uint8 pixels ``(height, width, 3)``, or a batch of one shape ``(n, height, width, 3)``, to
    ``size`` x ``size`` exactly as the exported model does."""
    if pixels.ndim == 3:
        return _resizer(size)(pixels[None]).numpy()[0]
    return _resizer(size)(pixels).numpy()


@functools.cache
def _resizer(size: int):
    """:func:`resize_tensor` on a batch, traced once per size (safe to call from several threads)."""
    import tensorflow as tf
    return tf.function(lambda pixels: resize_tensor(pixels, size),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])


def resize_tensor(images, size: int):
    """Bilinear, antialiased resize to a square, rounded back to uint8: one definition for train and serve."""
    import tensorflow as tf
    resized = tf.image.resize(images, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def parallel(work: Callable, items: Iterable) -> Iterator[tuple[object, object, str | None]]:
    """``(item, work(item), None)`` or ``(item, None, reason)`` in the items' order, computed on a thread per
    core with a few items in flight (Pillow and TensorFlow release the GIL while they work)."""
    workers = max(2, os.cpu_count() or 2)
    window = deque()

    def finish():
        item, future = window.popleft()
        try:
            return item, future.result(), None
        except Exception as error:  # every failure becomes a listed reason, never a crash
            return item, None, decode_failure(error)

    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            window.append((item, pool.submit(work, item)))
            if len(window) >= 4 * workers:
                yield finish()
        while window:
            yield finish()


def _decode_batch(payloads: list, size: int) -> list[tuple[np.ndarray | None, str | None]]:
    """``(pixels, None)`` or ``(None, reason)`` per payload; images of one shape are resized in one call (the
    same pixels as one by one, 2-3x faster), large ones right away so little memory is held."""
    done, reasons, by_shape = {}, {}, {}
    for k, payload in enumerate(payloads):
        try:
            pixels = read_pixels(payload)
        except Exception as error:  # listed with its reason
            reasons[k] = decode_failure(error)
            continue
        if pixels.shape[0] * pixels.shape[1] > LARGE_IMAGE:
            done[k] = resize_pixels(pixels, size)
        else:
            by_shape.setdefault(pixels.shape, []).append((k, pixels))
    for group in by_shape.values():
        done.update(zip([k for k, _ in group], resize_pixels(np.stack([p for _, p in group]), size)))
    return [(done.get(k), reasons.get(k)) for k in range(len(payloads))]


def decode_stream(payloads: Iterable[tuple[int, Path | bytes]],
                  size: int) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """``(position, pixels, None)`` or ``(position, None, reason)`` in the payloads' order, pixels resized to
    ``size``: each thread decodes a batch of images at a time."""
    def batches():
        batch = []
        for pair in payloads:
            batch.append(pair)
            if len(batch) == DECODE_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch, results, failure in parallel(lambda b: _decode_batch([p for _, p in b], size), batches()):
        for (position, _), (pixels, reason) in zip(batch, results or [(None, failure)] * len(batch)):
            yield position, pixels, reason


def decode_all(paths: list, size: int, what: str, listing: Listing | None = None
               ) -> tuple[np.ndarray, list[tuple[Path | str, str]], np.ndarray]:
    """Decode files (or, given their ``listing``, TFDS examples by id) in parallel: pixels of those that
    decoded, failures with reasons, and the ok mask."""
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    failures = []
    payloads = listing.payloads([Item(p, 0, str(p)) for p in paths]) if listing else enumerate(paths)
    with progress(total=len(paths), desc=f"decode {what}", unit="img") as bar:
        for i, pixels, reason in decode_stream(payloads, size):
            bar.update(1)
            if reason:
                failures.append((paths[i], reason))
            else:
                images[i], ok[i] = pixels, True
    return images[ok], failures, ok


def _in_order(by_split: dict[str, list[Item]]) -> list[Item]:
    """Items split by split (SPLITS order): the order of positions and decoded rows."""
    return [item for name in SPLITS for item in by_split[name]]


def _decode_into(out: np.ndarray, listing: Listing, by_split: dict[str, list[Item]], size: int) -> dict[int, str]:
    """Decode every item into ``out``: each split's images in order from the first row of its region
    (regions follow SPLITS, one row per item); return the reason for each failed position."""
    order = _in_order(by_split)
    region = np.repeat(np.arange(len(SPLITS)), [len(by_split[name]) for name in SPLITS])
    next_row = np.cumsum([0] + [len(by_split[name]) for name in SPLITS[:-1]])
    failures = {}
    with progress(total=len(order), desc="decode", unit="img") as bar:
        for position, pixels, reason in decode_stream(listing.payloads(order), size):
            bar.update(1)
            if reason:
                failures[position] = reason
            else:
                out[next_row[region[position]]] = pixels
                next_row[region[position]] += 1
    return failures


def _decoded(listing: Listing, by_split: dict[str, list[Item]], size: int,
             store) -> tuple[np.ndarray, dict[int, str], dict | None]:
    """Decoded pixels by split region, failures by position, and what the cache did: from the decoded-image
    cache when the same images were decoded at this size before, held in RAM within the store's budget
    (which it shares with the feature cache), else memory-mapped."""
    order = _in_order(by_split)
    shape = (len(order), size, size, 3)
    if store is None:
        pixels = np.empty(shape, np.uint8)
        return pixels, _decode_into(pixels, listing, by_split, size), None
    key = store.key({"decoded images": DECODER_VERSION, "size": size, "root": str(listing.root),
                     "items": [listing.identity(item) for item in order]})
    folder = store.root / "images" / key
    event = "reused"
    if (folder / "meta.json").is_file():
        with contextlib.suppress(OSError):  # a read-only cache is still reused
            (folder / "meta.json").touch()  # last used now, for `tlkit cache clear --older-than`
    else:
        tmp = folder.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        out = np.lib.format.open_memmap(tmp / "pixels.npy", "w+", np.uint8, shape)
        failures = _decode_into(out, listing, by_split, size)
        out.flush()
        del out
        (tmp / "meta.json").write_text(json.dumps({"what": f"decoded images, {size} px, of {listing.source}",
                                                   "failures": failures}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        event = "computed"
    failures = {int(k): v for k, v in json.loads((folder / "meta.json").read_text())["failures"].items()}
    pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    where = "disk (memory-mapped)"
    if store.used + pixels.nbytes <= store.budget:
        pixels = np.array(pixels)
        store.used += pixels.nbytes
        where = "RAM"
    log.info("decoded images: %s, %.1f MB in %s", event, pixels.nbytes / 1e6, where)
    return pixels, failures, {"event": event, "bytes": pixels.nbytes, "where": where, "folder": str(folder)}


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

def load_data(source: str | Path, size: int, spec: Data | None = None, store=None) -> ImageData:
    """List, split, decode and check a data source (folder, CSV or ``tfds:NAME[:SPLIT]``) for training.

    ``store`` (a :class:`tlkit.cache.FeatureStore`) keeps decoded images on disk for the next run and decides
    whether they are held in RAM or memory-mapped; without it they are decoded into RAM.
    """
    spec = spec or Data()
    listing = list_source(source)
    names = listing.class_names
    if len(names) < 2:
        raise TlkitError(f"{source} has {len(names)} class; a classifier needs at least two")
    unknown = sorted(set(spec.class_weight) - set(names)) if isinstance(spec.class_weight, dict) else []
    if unknown:
        raise TlkitError(f"data.class_weight names unknown class(es) {', '.join(unknown)}; classes: {', '.join(names)}")
    by_split = assign_splits(listing.items, spec.val_fraction, spec.test_fraction)
    for name in SPLITS:
        if not by_split[name] and (name != "test" or spec.test_fraction > 0):
            raise TlkitError(f"the {name} split of {source} is empty; add images or change the split fractions "
                             "(data.val_fraction, data.test_fraction)")
    pixels, failures, decoded = _decoded(listing, by_split, size, store)

    splits, start = {}, 0  # each split's region of rows starts at its first item's position
    for name in SPLITS:
        kept = [item for i, item in enumerate(by_split[name], start) if i not in failures]
        if by_split[name]:
            labels = np.array([item.label for item in kept], np.int32)
            splits[name] = Split([item.origin for item in kept], labels, pixels[start:start + len(kept)])
        start += len(by_split[name])
    order = _in_order(by_split)
    skipped = listing.skipped + [(order[p].origin, reason) for p, reason in failures.items()]
    data = ImageData(listing.root, names, splits, sorted(skipped, key=lambda s: str(s[0])), str(source), listing.kind,
                     decoded=decoded)
    _check(data, spec)
    data.class_weight = class_weights(spec.class_weight, names, splits["train"].labels)
    _log_summary(data)
    return data


def _check(data: ImageData, spec: Data) -> None:
    """Errors for splits or classes without usable images; warnings for small or unvalidated classes."""
    for name, split in data.splits.items():
        if not len(split):
            raise TlkitError(f"no usable images in the {name} split of {data.source}; {len(data.skipped)} "
                             "file(s) were skipped (`tlkit data inspect` lists them with reasons)")
    counts = data.class_counts()
    untrained = [c for c, n in counts["train"].items() if n == 0]
    if untrained:
        raise TlkitError(f"class(es) without usable training images in {data.source}: {', '.join(untrained)} "
                         "(add images to them, or remove them)")
    totals = {c: sum(counts[s][c] for s in counts) for c in data.class_names}
    data.warnings += class_warnings(totals, spec.min_per_class)
    unjudged = [c for c, n in counts["val"].items() if n == 0]
    if unjudged:
        data.warnings.append(f"class(es) without validation images: {', '.join(unjudged)}; validation "
                             "accuracy says nothing about them (add images or raise data.val_fraction)")


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
