"""Export orchestration: a finished run folder in each requested format, written atomically into the layout of
:mod:`tlkit.serving.layout`, recorded in the manifest, optionally checked against the Keras model."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.runfolder import RunFolder
from tlkit.serving.card import write_model_card
from tlkit.serving.check import check_exports
from tlkit.serving.layout import FORMATS, Export, file_entry, format_dir, next_version, record, refuse_existing
from tlkit.serving.onnx import export_onnx, onnx_missing, require_onnx
from tlkit.serving.savedmodel import write_savedmodel
from tlkit.serving.signatures import Confidence
from tlkit.serving.tflite import export_tflite
from tlkit.storage import atomic_dir

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 100  # training images the int8 TFLite variant is calibrated on


def parse_formats(text: str) -> tuple[str, ...]:
    """``savedmodel``, ``tflite``, ``onnx``, comma-separated, or ``none``; ``all`` is every format whose
    packages are installed, and each one skipped is named in a warning with its install command."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        missing = {"onnx": onnx_missing()}
        for fmt, why in missing.items():
            if why:
                log.warning("export all: skipping %s: %s", fmt, why)
        return tuple(fmt for fmt in FORMATS if not missing.get(fmt))
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise TlkitError(f"unknown export format {', '.join(unknown) or repr(text)}; "
                         f"choose from {', '.join(FORMATS)}, all or none (comma-separated)")
    return tuple(dict.fromkeys(names))


def export_run(folder: RunFolder, formats=("savedmodel",), name: str = "model", version: int | None = None,
               force: bool = False, check: bool = False, model=None) -> list[Export]:
    """Export a finished run in each format and record it in ``export/manifest.json``; ``check`` also
    measures agreement with the Keras model on the validation split. ``model``: the loaded Keras model. Every
    export answers with the run's calibration and threshold (``confidence.json``) and has a MODEL_CARD.md."""
    if not formats:
        return []
    if "onnx" in formats:
        require_onnx()
    if not name or name != Path(name).name or name in FORMATS or name.startswith("."):
        raise TlkitError(f"--name {name!r} must be a plain folder name other than {', '.join(FORMATS)}")
    with folder.lock():  # one writer: a run exporting at its end, or another `tlkit export`
        return _export(folder, formats, name, version, force, check, model)


def _export(folder: RunFolder, formats, name: str, version: int | None, force: bool, check: bool,
            model) -> list[Export]:
    root = folder.export_dir
    version = version or next_version(root, name)
    targets = {fmt: format_dir(root, fmt, name) / str(version) for fmt in formats}
    for target in targets.values():
        refuse_existing(target, force)
    model = folder.load_model() if model is None else model
    class_names, size = folder.class_names(), folder.recipe().size
    confidence = Confidence.read(folder.path)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    exports = []
    try:
        for fmt, target in targets.items():
            with atomic_dir(target, replace=force) as tmp:
                if fmt == "savedmodel":
                    write_savedmodel(model, class_names, size, tmp, confidence)
                    files = {"savedmodel": target}
                elif fmt == "tflite":
                    calibration = folder.split_pixels("train", size, "calibration", CALIBRATION_IMAGES)
                    files = {variant: target / path.name for variant, path in export_tflite(
                        model, class_names, size, tmp, name, calibration, confidence, version=str(version)).items()}
                else:
                    files = {"onnx": target / export_onnx(model, class_names, size, tmp, name, confidence).name}
                write_model_card(folder, tmp, fmt, confidence)
            log.info("exported %s to %s", fmt, target)
            exports.append(Export(name, version, fmt, target.relative_to(folder.path).as_posix(),
                                  {v: file_entry(folder.path, p) for v, p in files.items()}, created))
        if check:
            check_exports(folder, exports, model)
    finally:
        record(folder, exports)
    return exports
