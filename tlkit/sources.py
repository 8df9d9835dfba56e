"""Where images come from, chosen by ``--data``: a folder of class folders, a folder of ``train/``, ``val/``
(or ``validation/``) and ``test/`` folders, a CSV of ``path,label[,split]``, or ``tfds:NAME[:SPLIT]``.

Each source is listed as :class:`Item` s (where the image is, its label, the split the source fixes if any)
plus the files it could not use; :mod:`tlkit.data` splits and decodes them.
"""
from __future__ import annotations

import csv
import logging
import os
import socket
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tlkit.errors import TlkitError
from tlkit.files import Walker, loose_files, visible_dirs

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Item:
    """One image: a file (``Path``) or a TFDS example (``"tfds:NAME/SPLIT/INDEX"``), its label, the name
    the split hash uses, and the split the source fixes (None: decided by the hash)."""

    origin: Path | str
    label: int
    key: str
    split: str | None = None


@dataclass
class Listing:
    """Everything a source offers: class names in label order, usable-looking items, and files it skipped."""

    source: str
    kind: str
    root: Path
    class_names: list[str]
    items: list[Item]
    skipped: list[tuple[Path | str, str]] = field(default_factory=list)

    def payloads(self, origins: list) -> Iterator[tuple[int, Path | bytes]]:
        """``(position, file path or encoded bytes)`` for each origin, in any order."""
        return enumerate(origins)

    def identity(self, origin) -> list | str:
        """What an image's pixels depend on: its path (relative to ``root`` when inside it), size and mtime;
        both caches key on it."""
        stat = origin.stat()
        name = origin.relative_to(self.root).as_posix() if origin.is_relative_to(self.root) else str(origin)
        return [name, stat.st_size, stat.st_mtime_ns]


def split_key(text: str) -> str:
    """The name hashed for a split, Unicode-normalised so a folder copied between systems splits the same."""
    return unicodedata.normalize("NFC", text)


def list_source(source: str | Path) -> Listing:
    """Detect what ``--data`` names and list it."""
    text = str(source)
    if text.startswith("tfds:"):
        return list_tfds(text)
    path = Path(text).expanduser().absolute()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise TlkitError(f"--data {path} is a file but not a .csv; pass a folder, a CSV of path,label, "
                             "or tfds:NAME[:SPLIT]")
        return list_csv(path)
    if not path.is_dir():
        raise TlkitError(f"data not found: {path} (pass --data with a folder of class sub-folders, a CSV of "
                         "path,label, or tfds:NAME[:SPLIT])")
    split_dirs = _split_dirs(path)
    return list_split_folders(path, split_dirs) if split_dirs else list_class_folders(path)


# === Folders ===

def _split_dirs(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` holds ``train/`` and only split folders beside it, else empty."""
    dirs = visible_dirs(root)
    names = [d.name.lower() for d in dirs]
    if "train" not in names or not all(n in SPLIT_NAMES for n in names) or len(dirs) < 2:
        return {}
    if "val" in names and "validation" in names:
        raise TlkitError(f"{root} has both val/ and validation/; keep one of them")
    return {SPLIT_NAMES[d.name.lower()]: d for d in dirs}


def scan_folder(root: Path, walker: Walker | None = None
                ) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Class names (sorted sub-folder names), every file in them with its label, and what was skipped:
    files outside the class folders and whatever the (given or a new) ``walker`` skipped."""
    root = Path(root)
    if not root.is_dir():
        raise TlkitError(f"data folder not found: {root} (pass --data with a folder of class sub-folders)")
    class_dirs = visible_dirs(root)
    if len(class_dirs) < 2:
        raise TlkitError(f"{root} needs at least two class sub-folders; found {len(class_dirs)} "
                         "(lay images out as DATA/CLASS_NAME/IMAGE)")
    walker = walker or Walker()
    skipped = [(p, "outside any class folder") for p in loose_files(root)]
    files = [(path, label) for label, d in enumerate(class_dirs) for path in walker.files(d)]
    empty = [d.name for i, d in enumerate(class_dirs) if not any(label == i for _, label in files)]
    if empty:
        raise TlkitError(f"class folder(s) without images in {root}: {', '.join(empty)} "
                         "(add images or remove the folder)")
    return [d.name for d in class_dirs], files, skipped + walker.skipped


def list_class_folders(root: Path) -> Listing:
    """DATA/CLASS/IMAGE: every file is hash-split into train/val/test by its path inside its class folder."""
    class_names, files, skipped = scan_folder(root)
    items = [Item(path, label, split_key(path.relative_to(root / class_names[label]).as_posix()))
             for path, label in files]
    return Listing(str(root), "class folders", root, class_names, items, skipped)


def list_split_folders(root: Path, split_dirs: dict[str, Path]) -> Listing:
    """DATA/{train,val|validation,test}/CLASS/IMAGE: the classes are train's; the folders fix the splits."""
    walker = Walker()
    class_names, files, skipped = scan_folder(split_dirs["train"], walker)
    skipped += [(p, "outside any split folder") for p in loose_files(root)]
    labels = {name: i for i, name in enumerate(class_names)}
    by_split = {"train": files}
    for name, folder in split_dirs.items():
        if name == "train":
            continue
        by_split[name] = []
        skipped += [(p, "outside any class folder") for p in loose_files(folder)]
        walked = len(walker.skipped)
        for class_dir in visible_dirs(folder):
            if class_dir.name not in labels:
                raise TlkitError(f"{class_dir} is a class that {split_dirs['train']} does not have; "
                                 f"train classes: {', '.join(class_names)} (rename or remove the folder)")
            by_split[name] += [(path, labels[class_dir.name]) for path in walker.files(class_dir)]
        skipped += walker.skipped[walked:]
    items = [Item(path, label, split_key(path.relative_to(split_dirs[name] / class_names[label]).as_posix()), name)
             for name, files_ in by_split.items() for path, label in files_]
    return Listing(str(root), "split folders", root, class_names, items, skipped)


# === CSV ===

CSV_ACTIONS = ("keep", "drop", "relabel")


def list_csv(file: Path) -> Listing:
    """Rows of ``path,label`` (optionally ``split``, and ``action`` with ``suggested_label`` as `tlkit data
    audit` writes them), header optional; paths relative to the CSV's folder. ``action`` is ``keep`` (or
    empty), ``drop`` (the row is skipped, and listed) or ``relabel`` (the image takes ``suggested_label``)."""
    with open(file, newline="", encoding="utf-8-sig") as f:
        rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(csv.reader(f), 1) if any(row)]
    if not rows:
        raise TlkitError(f"{file} is empty; write one `path,label` row per image")
    header = [cell.lower() for cell in rows[0][1]]
    if "path" in header and "label" in header:
        columns = {name: header.index(name) for name in ("path", "label", "split", "action", "suggested_label")
                   if name in header}
        rows = rows[1:]
    else:
        columns = {"path": 0, "label": 1}
    width = max(columns.values()) + 1
    entries, seen, skipped = [], {}, []
    for line, cells in rows:
        row = cells + [""] * (width - len(cells))  # trailing empty cells may be left out
        if not row[columns["path"]] or not row[columns["label"]]:
            raise TlkitError(f"{file} line {line}: expected {','.join(columns)} with a path and a label; "
                             f"found {','.join(cells)!r}")
        name, label = row[columns["path"]], _csv_label(file, line, row, columns)
        split = row[columns["split"]].lower() if "split" in columns and row[columns["split"]] else None
        if split is not None and split not in SPLIT_NAMES:
            raise TlkitError(f"{file} line {line}: split must be train, val, validation or test; found {split!r}")
        path = Path(name).expanduser()
        path = path if path.is_absolute() else file.parent / path
        if label is None:
            skipped.append((path, f"action=drop in {file.name} (line {line})"))
            continue
        if name in seen:
            first_line, first_label = seen[name]
            if first_label != label:
                raise TlkitError(f"{file} line {line}: {name} is labelled {label!r} here and {first_label!r} "
                                 f"on line {first_line}; keep one")
            skipped.append((path, f"listed again in {file.name} (first on line {first_line})"))
            continue
        seen[name] = (line, label)
        if not path.is_file():
            skipped.append((path, "file not found"))
            continue
        entries.append((path, label, split_key(Path(name).as_posix()), SPLIT_NAMES.get(split)))
    class_names = sorted({label for _, label in seen.values()})
    if len(class_names) < 2:
        raise TlkitError(f"{file} needs at least two classes in its label column; found {len(class_names)}")
    labels = {name: i for i, name in enumerate(class_names)}
    items = [Item(path, labels[label], key, split) for path, label, key, split in entries]
    return Listing(str(file), "csv", file.parent, class_names, items, skipped)


def _csv_label(file: Path, line: int, row: list[str], columns: dict[str, int]) -> str | None:
    """The label a CSV row gives its image after its ``action``; None when the row is dropped."""
    action = row[columns["action"]].lower() if "action" in columns else ""
    if action not in ("",) + CSV_ACTIONS:
        raise TlkitError(f"{file} line {line}: action must be keep, drop or relabel (or empty); found {action!r}")
    if action == "drop":
        return None
    if action == "relabel":
        suggested = row[columns["suggested_label"]] if "suggested_label" in columns else ""
        if not suggested:
            raise TlkitError(f"{file} line {line}: action=relabel needs the new label in the suggested_label "
                             "column; fill it in or set the action to keep")
        return suggested
    return row[columns["label"]]


# === TensorFlow Datasets ===

@dataclass
class TfdsListing(Listing):
    """Examples of a TFDS dataset; pixels come from its records, not from files."""

    builder: object = None
    dataset: str = ""  # NAME as given (may include /CONFIG and /VERSION)
    image_key: str = "image"
    label_key: str = "label"

    def records(self, split: str):
        import tensorflow_datasets as tfds
        return self.builder.as_dataset(split=split, shuffle_files=False,
                                       decoders={self.image_key: tfds.decode.SkipDecoding()})

    def payloads(self, origins):
        wanted = {origin: position for position, origin in enumerate(origins)}
        for split in dict.fromkeys(origin.rsplit("/", 2)[1] for origin in origins):
            images = self.records(split).map(lambda example: example[self.image_key])
            for index, data in enumerate(images.as_numpy_iterator()):
                position = wanted.get(self._id(split, index))
                if position is not None:
                    yield position, data

    def identity(self, origin):
        return origin

    def _id(self, split: str, index: int) -> str:
        return f"tfds:{self.dataset}/{split}/{index}"


def list_tfds(source: str) -> TfdsListing:
    """``tfds:NAME[:SPLIT]``: the dataset's train/validation/test splits, or the one split named."""
    import tensorflow_datasets as tfds

    name, _, split = source.removeprefix("tfds:").partition(":")
    data_dir = os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise TlkitError(f"unknown TFDS dataset {name!r} in --data {source} "
                         "(names as in tfds.list_builders(), e.g. tfds:tf_flowers)") from None
    image_key = _feature(builder, tfds.features.Image, "image", source)
    label_key = _feature(builder, tfds.features.ClassLabel, "label", source)
    if not (builder.data_path / "dataset_info.json").exists():  # as is_prepared(), without its warning
        _prepare(builder, source)
    class_names = list(builder.info.features[label_key].names)
    if split:
        origins = {split: None}
    else:
        available = list(builder.info.splits)
        origins = {s: SPLIT_NAMES[s] for s in available if s in SPLIT_NAMES}
        if "train" not in origins:
            raise TlkitError(f"{source} has no train split (splits: {', '.join(available) or 'none'}); "
                             f"name one: tfds:{name}:SPLIT")
        unused = [s for s in available if s not in origins]
        if unused:
            log.info("%s: using splits %s; not using %s", source, ", ".join(origins), ", ".join(unused))
    listing = TfdsListing(source, "tfds", Path(builder.data_dir), class_names, [], builder=builder,
                          dataset=name, image_key=image_key, label_key=label_key)
    for split_name, fixed in origins.items():
        try:
            labels = listing.records(split_name).map(lambda example: example[label_key]).as_numpy_iterator()
            listing.items += [Item(listing._id(split_name, i), int(label), split_key(f"{split_name}/{i}"), fixed)
                              for i, label in enumerate(labels)]
        except (ValueError, KeyError) as error:
            raise TlkitError(f"{source}: cannot read split {split_name!r} ({str(error).splitlines()[0]}); "
                             f"splits: {', '.join(builder.info.splits)}") from None
    return listing


def _feature(builder, kind, preferred: str, source: str) -> str:
    """The key of the dataset's one feature of ``kind`` (``preferred`` if several)."""
    keys = [k for k, f in builder.info.features.items() if isinstance(f, kind)]
    if preferred in keys or len(keys) == 1:
        return preferred if preferred in keys else keys[0]
    raise TlkitError(f"{source} is not an image-classification dataset tlkit can read: it needs one "
                     f"{kind.__name__} feature, found {len(keys)} ({', '.join(keys) or 'none'}) among "
                     f"{', '.join(builder.info.features)}")


def _online(host: str = "storage.googleapis.com") -> bool:
    """Whether downloads can work: a proxy is configured or a public host name resolves."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _prepare(builder, source: str) -> None:
    """Download and prepare a TFDS dataset, or fail at once (offline) with where tlkit looked and the fix."""
    name = builder.name
    fix = (f"prepare it on a machine with internet (`tfds build {name} --data_dir DIR`), copy DIR here and set "
           "TFDS_DATA_DIR=DIR")
    if not _online():
        raise TlkitError(f"{source} is not prepared in data_dir {builder.data_dir} and cannot be downloaded "
                         f"(offline); {fix}")
    log.info("downloading and preparing %s into %s", name, builder.data_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # any failure here means: not obtainable now
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise TlkitError(f"{source} is not prepared in data_dir {builder.data_dir} and preparing it failed "
                         f"({reason}); {fix}") from None

