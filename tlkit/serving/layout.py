"""Where exports live inside a run folder, and the one place that finds them again:

    export/NAME/VERSION/                     SavedModel, as TF Serving expects (model_base_path=RUN/export/NAME)
    export/tflite/NAME/VERSION/NAME_*.tflite float32, float16, dynamic, int8 variants, with labels.txt
    export/onnx/NAME/VERSION/NAME.onnx       with labels.txt
    export/manifest.json                     every export: files, sizes and, after a check, agreement with Keras

One version number covers one export call across formats (the next free one unless given).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.runfolder import RunFolder
from tlkit.storage import write_json_atomic

FORMATS = ("savedmodel", "tflite", "onnx")


def format_dir(export_root: Path, fmt: str, name: str) -> Path:
    """Where versions of one format live: TF Serving's model_base_path for a SavedModel."""
    return export_root / name if fmt == "savedmodel" else export_root / fmt / name


def next_version(export_root: Path, name: str) -> int:
    """One more than the highest version of ``name`` in any format."""
    versions = [int(p.name) for fmt in FORMATS for p in format_dir(export_root, fmt, name).glob("*")
                if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def refuse_existing(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise TlkitError(f"{target} exists; choose another --version or pass --force to replace it")


@dataclass
class Export:
    """One exported artefact: its format, folder and files (variant -> path relative to the run folder)."""

    name: str
    version: int
    format: str
    path: str
    files: dict[str, dict] = field(default_factory=dict)
    created: str = ""
    check: dict[str, dict] = field(default_factory=dict)


def file_entry(run_path: Path, path: Path) -> dict:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return {"path": path.relative_to(run_path).as_posix(), "bytes": size}


def manifest_file(folder: RunFolder) -> Path:
    return folder.export_dir / "manifest.json"


def read_manifest(folder: RunFolder) -> list[dict]:
    path = manifest_file(folder)
    return json.loads(path.read_text()) if path.is_file() else []


def record(folder: RunFolder, exports: list[Export]) -> None:
    """Add exports to the manifest (replacing entries for the same folder), written atomically."""
    if not exports:
        return
    new = {e.path: asdict(e) for e in exports}
    entries = [e for e in read_manifest(folder) if e["path"] not in new] + list(new.values())
    write_json_atomic(manifest_file(folder), entries)


def find_savedmodel(path: Path) -> Path | None:
    """The SavedModel a path names: the folder itself (``export/NAME/VERSION``), the highest version of a TF
    Serving model folder (``export/NAME``), or a run folder's most recent SavedModel export (its manifest);
    None when it names none of these."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = [p for p in path.glob("*") if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if versions:
        return max(versions, key=lambda p: int(p.name))
    folder = RunFolder(path)
    if not folder.model_file.is_file():
        return None
    entries = [e for e in read_manifest(folder) if e["format"] == "savedmodel" and (path / e["path"]).is_dir()]
    if not entries:
        raise TlkitError(f"{path} has no SavedModel export; create one with: tlkit export {path}")
    return path / max(entries, key=lambda e: (e["created"], e["version"]))["path"]
