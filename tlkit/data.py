"""Image folders in, decoded splits out: class discovery, stable hash splits, decoding, skipped files."""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.progress import progress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split's files, labels and (once decoded) their pixels as uint8 ``(N, size, size, 3)``."""

    paths: list[Path]
    labels: np.ndarray
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ImageData:
    """A dataset ready for training: class names in label order, splits, and every file not used."""

    root: Path
    class_names: list[str]
    splits: dict[str, Split]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def fingerprint(self) -> dict:
        """Identity of every file per split (relative path, size, mtime): cached features depend on it."""
        def file_id(path):
            stat = path.stat()
            return [path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns]
        return {"root": str(self.root.resolve()),
                "files": {name: [file_id(p) for p in split.paths] for name, split in self.splits.items()}}


def split_of(relative_path: str, val_fraction: float, test_fraction: float) -> str:
    """The split a file belongs to, from a hash of its path inside its class folder.

    Adding or removing other files never moves a file to another split (TF Hub's retrain.py scheme).
    """
    bucket = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8], 16) / 16**8
    if bucket < val_fraction:
        return "val"
    if bucket < val_fraction + test_fraction:
        return "test"
    return "train"


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini")


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Class names (sorted sub-folder names), image files with labels, and files that are not images."""
    if not root.is_dir():
        raise TlkitError(f"data folder not found: {root} (pass --data with a folder of class sub-folders)")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not _is_hidden(d))
    if len(class_dirs) < 2:
        raise TlkitError(f"{root} needs at least two class sub-folders; found {len(class_dirs)} "
                         "(lay images out as DATA/CLASS_NAME/IMAGE)")
    files, skipped = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if any(_is_hidden(part) for part in path.relative_to(root).parents) or _is_hidden(path):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((path, label))
            else:
                skipped.append((path, f"not an image file (extension {path.suffix or 'none'})"))
    empty = [d.name for i, d in enumerate(class_dirs) if not any(lab == i for _, lab in files)]
    if empty:
        raise TlkitError(f"class folder(s) without images in {root}: {', '.join(empty)} "
                         "(add images or remove the folder)")
    return [d.name for d in class_dirs], files, skipped


def read_pixels(path: Path) -> np.ndarray:
    """A file's pixels as uint8 RGB ``(height, width, 3)`` at their own size, EXIF orientation applied."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"))


def decode_image(path: Path, size: int) -> np.ndarray:
    """A file's pixels as uint8 RGB ``(size, size, 3)``: EXIF orientation applied, resized as serving does."""
    return resize_pixels(read_pixels(path), size)


def decode_failure(error: Exception) -> str:
    """Why a file could not be decoded, on one line (the reason listed for skipped files)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot decode: {message}"


def resize_pixels(pixels, size: int):
    """Resize uint8 pixels to ``size`` x ``size`` exactly as the exported model does (shared code)."""
    import tensorflow as tf
    return resize_tensor(tf.convert_to_tensor(pixels), size).numpy()


def resize_tensor(images, size: int):
    """Bilinear, antialiased resize to a square, rounded back to uint8: one definition for train and serve."""
    import tensorflow as tf
    resized = tf.image.resize(images, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def decode_all(paths: list[Path], size: int, what: str) -> tuple[np.ndarray, list[tuple[Path, str]], np.ndarray]:
    """Decode files in parallel: pixels of those that decoded, failures with reasons, and the ok mask."""
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    failures = []

    def work(i):
        try:
            images[i] = decode_image(paths[i], size)
            ok[i] = True
        except Exception as error:
            failures.append((paths[i], decode_failure(error)))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for _ in progress(pool.map(work, range(len(paths))), total=len(paths), desc=f"decode {what}", unit="img"):
            pass
    return images[ok], failures, ok


def load_folder(root: str | Path, size: int, val_fraction: float, test_fraction: float = 0.0) -> ImageData:
    """Scan, split and decode a folder of class sub-folders."""
    root = Path(root).expanduser()
    class_names, files, skipped = scan_folder(root)
    by_split: dict[str, list[tuple[Path, int]]] = {name: [] for name in SPLITS}
    for path, label in files:
        relative = path.relative_to(root / class_names[label]).as_posix()
        by_split[split_of(relative, val_fraction, test_fraction)].append((path, label))
    splits = {}
    for name in SPLITS:
        if not by_split[name] and (name != "test" or test_fraction > 0):
            raise TlkitError(f"the {name} split of {root} is empty; add images or change the split fractions")
        if not by_split[name]:
            continue
        paths = [p for p, _ in by_split[name]]
        images, failures, ok = decode_all(paths, size, name)
        skipped.extend(failures)
        labels = np.array([lab for _, lab in by_split[name]], np.int32)[ok]
        splits[name] = Split([p for p, good in zip(paths, ok) if good], labels, images)
    data = ImageData(root, class_names, splits, sorted(skipped))
    for path, reason in data.skipped:
        log.warning("skipped %s: %s", path, reason)
    return data
