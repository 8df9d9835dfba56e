"""Where images come from, chosen by ``--data``: a folder of class folders, a folder of ``train/``, ``val/``
(or ``validation/``) and ``test/`` folders, a CSV of ``path,label[,split]``, or ``tfds:NAME[:SPLIT]``.

Each source is listed as :class:`Item` s (where the image is, its label, the split the source fixes if any)
plus the files it could not use; :mod:`tlkit.data` splits and decodes them.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import socket
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tlkit.errors import TlkitError
from tlkit.files import Walker, visible_dirs
from tlkit.recipe import Data

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
    """Everything a source offers: class names in label order, usable-looking items, files it skipped, and
    warnings about the source as a whole."""

    source: str
    kind: str
    root: Path
    class_names: list[str]
    items: list[Item]
    skipped: list[tuple[Path | str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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


def list_source(source: str | Path, spec: Data | None = None) -> Listing:
    """Detect what ``--data`` names and list it (``spec``: how to read a CSV)."""
    text = str(source)
    if text.startswith("tfds:"):
        return list_tfds(text)
    path = Path(text).expanduser().absolute()
    try:
        if path.is_file():
            if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
                raise TlkitError(f"--data {path} is a file but not a .csv; pass a folder, a CSV of path,label, "
                                 "or tfds:NAME[:SPLIT]")
            return list_csv(path, spec or Data())
        if not path.is_dir():
            raise TlkitError(f"data not found: {path} (pass --data with a folder of class sub-folders, a CSV of "
                             "path,label, or tfds:NAME[:SPLIT])")
        split_dirs = _split_dirs(path)
        return list_split_folders(path, split_dirs) if split_dirs else list_class_folders(path)
    except PermissionError as error:
        raise TlkitError(f"cannot read --data {error.filename or path}: permission denied; "
                         "fix its permissions or pass another --data") from None


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


def scan_folder(root: Path, walker: Walker) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Class names (sorted sub-folder names), every file in them with its label, and the files outside them;
    ``walker`` keeps what it skipped (class folders that repeat another, loops, dangling links, ...)."""
    root = Path(root)
    if not root.is_dir():
        raise TlkitError(f"data folder not found: {root} (pass --data with a folder of class sub-folders)")
    walker.claim(root)
    dirs, loose = walker.entries(root)
    class_dirs = [d for d in dirs if walker.claim(d)]
    if len(class_dirs) < 2:
        raise TlkitError(f"{root} needs at least two class sub-folders; found {len(class_dirs)} "
                         "(lay images out as DATA/CLASS_NAME/IMAGE)")
    files = [(path, label) for label, d in enumerate(class_dirs) for path in walker.files(d)]
    present = {label for _, label in files}
    empty = [d for i, d in enumerate(class_dirs) if i not in present]
    if empty:
        problems = [f"{p}: {r}" for p, r in walker.skipped if p.parent in empty][:3]
        raise TlkitError(f"class folder(s) without images in {root}: {', '.join(d.name for d in empty)} "
                         f"({'; '.join(problems) + '; ' if problems else ''}add images or remove the folder)")
    return [class_name(d.name) for d in class_dirs], files, [(p, "outside any class folder") for p in loose]


def class_name(folder_name: str) -> str:
    """A class folder's name as text that every output takes (labels.txt, the exported model): a name that is
    not UTF-8 keeps its odd bytes as backslash escapes."""
    return folder_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _key(path: Path, root: Path) -> str:
    """The name a file's split is hashed from: its path inside its class folder (``root/CLASS/...``)."""
    return split_key("/".join(path.relative_to(root).parts[1:]))


def list_class_folders(root: Path) -> Listing:
    """DATA/CLASS/IMAGE: every file is hash-split into train/val/test by its path inside its class folder."""
    walker = Walker()
    class_names, files, outside = scan_folder(root, walker)
    items = [Item(path, label, _key(path, root)) for path, label in files]
    return Listing(str(root), "class folders", root, class_names, items, outside + walker.skipped)


def list_split_folders(root: Path, split_dirs: dict[str, Path]) -> Listing:
    """DATA/{train,val|validation,test}/CLASS/IMAGE: the classes are train's; the folders fix the splits."""
    walker = Walker()
    walker.claim(root)
    outside = [(p, "outside any split folder") for p in walker.entries(root)[1]]
    class_names, files, loose = scan_folder(split_dirs["train"], walker)
    outside += loose
    labels = {name: i for i, name in enumerate(class_names)}
    by_split = {"train": files}
    for name, folder in split_dirs.items():
        if name == "train" or not walker.claim(folder):
            continue
        class_dirs, loose = walker.entries(folder)
        outside += [(p, "outside any class folder") for p in loose]
        by_split[name] = []
        for class_dir in class_dirs:
            if class_name(class_dir.name) not in labels:
                raise TlkitError(f"{class_dir} is a class that {split_dirs['train']} does not have; "
                                 f"train classes: {', '.join(class_names)} (rename or remove the folder)")
            by_split[name] += [(path, labels[class_name(class_dir.name)]) for path in walker.files(class_dir)]
    items = [Item(path, label, _key(path, split_dirs[name]), name) for name, files_ in by_split.items()
             for path, label in files_]
    return Listing(str(root), "split folders", root, class_names, items, outside + walker.skipped)


# === CSV ===

PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path",
                "image_name", "img", "id", "image_id")  # recognised by name, in this order of preference
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target")
DELIMITERS = ",;\t|"
MOSTLY_MISSING = 0.5  # more rows than this fraction naming files that do not exist: a loud warning
CSV_ACTIONS = ("keep", "drop", "relabel")  # the `action` column `tlkit data audit` writes


def _read_rows(file: Path) -> list[tuple[int, list[str]]]:
    """The non-empty rows of a CSV with their line numbers, cells stripped; the delimiter (comma, semicolon,
    tab or bar) is the one the first line uses most, a byte-order mark is ignored."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise TlkitError(f"{file} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8 "
                         "(in Excel: CSV UTF-8)") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return [(reader.line_num, [cell.strip() for cell in row]) for row in reader if any(c.strip() for c in row)]


def _columns(file: Path, header: list[str], spec: Data, rows) -> tuple[dict[str, int], bool]:
    """Which column holds the path, the label and the split, and whether the first row is a header: named by
    ``spec.path_column`` / ``spec.label_column``, else recognised by name, else ``path,label`` by position."""
    names = [cell.lower() for cell in header]
    wanted = {"path": spec.path_column, "label": spec.label_column}
    given = {role: name for role, name in wanted.items() if name}
    missing = [f"{name!r} ({ROLE_FLAG[role]})" for role, name in given.items() if name.lower() not in names]
    if missing:
        raise TlkitError(f"{file} has no column {' or '.join(missing)}; its first line has: {', '.join(header)}")
    recognised = set(names) & set(PATH_COLUMNS + LABEL_COLUMNS)
    if not given and not recognised:
        if not _looks_like_header(file, header, rows, spec):
            return {"path": 0, "label": 1}, False
        if len(header) > 2:
            raise TlkitError(f"{file}: which columns hold the path and the label? its header has "
                             f"{', '.join(header)}; name them with {ROLE_FLAG['path']} and {ROLE_FLAG['label']}")
        log.info("%s: first line %r read as a header (path, label by position)", file, ",".join(header))
        return {"path": 0, "label": 1}, True
    columns = {}
    for role, known in (("path", PATH_COLUMNS), ("label", LABEL_COLUMNS)):
        name = (given.get(role) or next((n for n in known if n in names), "")).lower()
        if name:
            columns[role] = names.index(name)
    for optional in ("split", "action", "suggested_label"):
        if optional in names:
            columns[optional] = names.index(optional)
    others = [i for i in range(len(names)) if i not in columns.values()]
    for role in ("path", "label"):
        if role not in columns:
            if len(others) != 1:
                raise TlkitError(f"{file}: which column holds the {role}? its header has {', '.join(header)}; "
                                 f"name it with {ROLE_FLAG[role]}")
            columns[role] = others.pop()
    return columns, True


ROLE_FLAG = {"path": "--path-column (data.path_column)", "label": "--label-column (data.label_column)"}


def _looks_like_header(file: Path, first: list[str], rows, spec: Data) -> bool:
    """A first row of names tlkit does not know is a header when its "path" names no file and does not look
    like a path (no folder, no extension), and its "label" is on no other row."""
    name = first[0] if first else ""
    if len(first) < 2 or "/" in name or "\\" in name or Path(name).suffix or _image_path(file, name, spec).is_file():
        return False
    return all(len(row) < 2 or row[1] != first[1] for _, row in rows[1:])


def _image_path(file: Path, name: str, spec: Data) -> Path:
    """Where a CSV's path or id points: relative to ``spec.image_dir`` (default: the CSV's folder), with
    ``spec.suffix`` appended unless it already ends so; Windows separators work too."""
    if spec.suffix and not name.lower().endswith(spec.suffix.lower()):
        name += spec.suffix
    folder = Path(spec.image_dir or file.parent).expanduser()
    path = folder / Path(name).expanduser()  # an absolute path stays as it is
    if "\\" in name and not path.exists():
        path = folder / Path(name.replace("\\", "/"))
    return path


def list_csv(file: Path, spec: Data | None = None) -> Listing:
    """Rows of a path (or id) and a label, optionally a split, header recognised by name (or optional for
    ``path,label``); paths relative to ``spec.image_dir`` or the CSV's folder. Rows naming missing files are
    skipped and counted; when most are missing, a warning says so. An ``action`` column (with
    ``suggested_label``, as `tlkit data audit` writes them) is ``keep`` (or empty), ``drop`` (the row is skipped,
    and listed) or ``relabel`` (the image takes ``suggested_label``)."""
    spec = spec or Data()
    rows = _read_rows(file)
    if not rows:
        raise TlkitError(f"{file} is empty; write one `path,label` row per image")
    columns, has_header = _columns(file, rows[0][1], spec, rows)
    if has_header:
        rows = rows[1:]
    width = max(columns.values()) + 1
    entries, seen, skipped, missing = [], {}, [], 0
    for line, cells in rows:
        row = cells + [""] * (width - len(cells))  # trailing empty cells may be left out
        if not row[columns["path"]] or not row[columns["label"]]:
            raise TlkitError(f"{file} line {line}: expected {','.join(columns)} with a path and a label; "
                             f"found {','.join(cells)!r}")
        name, label = row[columns["path"]], _csv_label(file, line, row, columns)
        split = row[columns["split"]].lower() if "split" in columns and row[columns["split"]] else None
        if split is not None and split not in SPLIT_NAMES:
            raise TlkitError(f"{file} line {line}: split must be train, val, validation or test; found {split!r}")
        path = _image_path(file, name, spec)
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
            missing += 1
            continue
        entries.append((path, label, split_key(Path(name).as_posix()), SPLIT_NAMES.get(split)))
    class_names = sorted({label for _, label in seen.values()})
    if len(class_names) < 2:
        raise TlkitError(f"{file} needs at least two classes in its label column; found {len(class_names)}")
    warnings = []
    folder = Path(spec.image_dir).expanduser() if spec.image_dir else file.parent
    if missing > MOSTLY_MISSING * len(seen):
        example = next(p for p, r in skipped if r == "file not found")
        hint = (f"paths are read relative to {folder}{' with suffix ' + spec.suffix if spec.suffix else ''} "
                f"(first missing: {example}); point at the images with --image-dir (data.image_dir), add an "
                "extension to ids with --suffix (data.suffix)")
        if missing == len(seen):
            raise TlkitError(f"{file}: none of its {len(seen)} rows names a file that exists; {hint}")
        warnings.append(f"{missing} of {len(seen)} rows of {file} name files that do not exist; {hint}")
    labels = {name: i for i, name in enumerate(class_names)}
    items = [Item(path, labels[label], key, split) for path, label, key, split in entries]
    return Listing(str(file), "csv", folder, class_names, items, skipped, warnings)


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

