"""Serving exports of a run folder, written atomically under ``RUN/export/``:

    NAME/VERSION/                     SavedModel, laid out as TF Serving expects (model_base_path=RUN/export/NAME)
    tflite/NAME/VERSION/NAME_*.tflite float32, float16, dynamic, int8 variants, with labels.txt
    onnx/NAME/VERSION/NAME.onnx       with labels.txt (needs the `onnx` extra)
    manifest.json                     every export: files, sizes and, after a check, agreement with Keras

One version number covers one export call across formats (the next free one unless given).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit.data import decode_all, resize_tensor
from tlkit.errors import TlkitError
from tlkit.runfolder import RunFolder

log = logging.getLogger(__name__)

TOP_K = 5
FORMATS = ("savedmodel", "tflite", "onnx")
LABELS_FILE = "labels.txt"
_EXIF_WINDOW = 1024  # bytes of the EXIF block searched for the orientation tag (IFD0 sits at its start)


def parse_formats(text: str) -> tuple[str, ...]:
    """``savedmodel``, ``tflite``, ``onnx``, comma-separated, or ``all`` / ``none``."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return FORMATS
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise TlkitError(f"unknown export format {', '.join(unknown) or repr(text)}; "
                         f"choose from {', '.join(FORMATS)}, all or none (comma-separated)")
    return tuple(dict.fromkeys(names))


def probabilities(outputs):
    """Class probabilities from the model's output (a single sigmoid unit becomes two columns)."""
    if outputs.shape[-1] == 1:
        return tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


def pixel_function(model, size: int, dtype=tf.float32):
    """``pixels (N, size, size, 3) -> {"probabilities"}``, inference mode: what TFLite and ONNX convert."""
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], dtype, name="pixels")])
    def predict(pixels):
        return {"probabilities": probabilities(tf.cast(model(tf.cast(pixels, tf.float32), training=False),
                                                       tf.float32))}
    return predict


def exif_orientation(data):
    """The EXIF orientation (1-8) of encoded image bytes, 1 when there is none; graph ops only."""
    parts = tf.strings.split(data, sep="Exif\x00\x00", maxsplit=1)
    tiff = tf.cond(tf.size(parts) > 1, lambda: parts[-1], lambda: tf.constant(b""))
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(tiff, 0, _EXIF_WINDOW), tf.uint8), tf.int32)
    b = tf.pad(raw, [[0, _EXIF_WINDOW + 16 - tf.size(raw)]])
    little = tf.equal(b[0], ord("I"))  # "II": little-endian TIFF, "MM": big-endian

    def u16(i):
        lo, hi = tf.gather(b, i), tf.gather(b, i + 1)
        return tf.where(little, lo + 256 * hi, 256 * lo + hi)

    def u32(i):
        return tf.where(little, u16(i) + 65536 * u16(i + 2), 65536 * u16(i) + u16(i + 2))

    ifd = tf.clip_by_value(u32(4), 0, _EXIF_WINDOW - 2)
    entries = tf.minimum(ifd + 2 + 12 * tf.range(64), _EXIF_WINDOW)  # 12-byte entries: tag, type, count, value
    hit = (tf.range(64) < u16(ifd)) & tf.equal(u16(entries), 0x0112)
    value = tf.reduce_max(tf.where(hit, u16(entries + 8), 0))
    return tf.where((value >= 1) & (value <= 8), value, 1)


def orient(image, orientation):
    """Turn decoded pixels upright for an EXIF orientation, as Pillow's ``ImageOps.exif_transpose``."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        transposed,
        lambda: tf.image.rot90(image, 3),
        lambda: tf.reverse(transposed(), [0, 1]),
        lambda: tf.image.rot90(image, 1),
    ])


def decode_tensor(data, size: int):
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes to uint8 ``(size, size, 3)``, pixel for pixel as
    :func:`tlkit.data.decode_image` (Pillow) does in training: accurate IDCT, EXIF orientation, same resize."""
    def jpeg():
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        return orient(image, exif_orientation(data))

    def other():
        return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    return resize_tensor(image, size)


def serving_functions(model, class_names: list[str], size: int):
    """The two signatures: ``serving_default`` (encoded images) and ``serving_pixels`` (uint8 pixels)."""
    names = tf.constant(class_names)
    k = min(TOP_K, len(class_names))

    def answer(pixels):
        probs = probabilities(tf.cast(model(tf.cast(pixels, tf.float32), training=False), tf.float32))
        top = tf.math.top_k(probs, k)
        ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_ids": ids, "class_names": tf.gather(names, ids),
                "top_k_class_ids": top.indices, "top_k_probabilities": top.values,
                "top_k_class_names": tf.gather(names, top.indices)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        pixels = tf.map_fn(lambda data: decode_tensor(data, size), images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return answer(pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="pixels")])
    def serve_pixels(pixels):
        return answer(resize_tensor(pixels, size))

    return serve_images, serve_pixels


def write_labels(folder: Path, class_names: list[str]) -> Path:
    path = folder / LABELS_FILE
    path.write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")
    return path


def write_savedmodel(model, class_names: list[str], size: int, target: Path) -> None:
    """Write a SavedModel with both signatures, the class names and the image size into ``target``."""
    import keras

    serve_images, serve_pixels = serving_functions(model, class_names, size)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serve_images)
    archive.add_endpoint("serving_pixels", serve_pixels)
    archive.add_variable_collection("image_size", [tf.Variable(size, trainable=False, name="image_size")])
    archive.write_out(str(target), verbose=False)
    (target / "assets").mkdir(exist_ok=True)
    write_labels(target / "assets", class_names)


def export_savedmodel(model, class_names: list[str], size: int, export_root: Path, name: str,
                      version: int | None = None, force: bool = False) -> Path:
    """Write ``export_root/name/version`` atomically (the next free version by default); return its path."""
    target = format_dir(Path(export_root), "savedmodel", name) / str(version or next_version(Path(export_root), name))
    with atomic_dir(target, force) as tmp:
        write_savedmodel(model, class_names, size, tmp)
    log.info("exported SavedModel to %s", target)
    return target


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


@contextmanager
def atomic_dir(target: Path, force: bool):
    """Yield a temporary sibling folder and rename it to ``target`` once filled: never a half-written export."""
    refuse_existing(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _file_entry(run_path: Path, path: Path) -> dict:
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return {"path": path.relative_to(run_path).as_posix(), "bytes": size}


def representative_pixels(folder: RunFolder, size: int, count: int = 100, seed: int = 0) -> np.ndarray:
    """Up to ``count`` training images (split.csv, drawn at random with ``seed``) as uint8 pixels."""
    paths = [Path(r["path"]) for r in folder.read_csv(folder.split_file) if r["split"] == "train"]
    if not paths:
        raise TlkitError(f"{folder.split_file} lists no training images; int8 calibration needs some")
    chosen = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:count]]
    pixels, failures, _ = decode_all(chosen, size, "calibration")
    for path, reason in failures:
        log.warning("calibration skips %s: %s", path, reason)
    if not len(pixels):
        raise TlkitError(f"none of the training images in {folder.split_file} can be read any more; "
                         "int8 calibration needs them (restore the data folder)")
    return pixels


def export_run(folder: RunFolder, formats=("savedmodel",), name: str = "model", version: int | None = None,
               force: bool = False, check: bool = False, model=None) -> list[Export]:
    """Export a finished run in each format and record it in ``export/manifest.json``; ``check`` also
    measures agreement with the Keras model on the validation split. ``model``: the loaded Keras model."""
    from tlkit.tflite import export_tflite

    if not formats:
        return []
    if "onnx" in formats:
        from tlkit.onnx_export import export_onnx, require_onnx
        require_onnx()
    if not name or name != Path(name).name or name in FORMATS or name.startswith("."):
        raise TlkitError(f"--name {name!r} must be a plain folder name other than {', '.join(FORMATS)}")
    root = folder.export_dir
    version = version or next_version(root, name)
    targets = {fmt: format_dir(root, fmt, name) / str(version) for fmt in formats}
    for target in targets.values():
        refuse_existing(target, force)
    model = folder.load_model() if model is None else model
    class_names, size = folder.class_names(), folder.recipe().size
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    exports = []
    try:
        for fmt, target in targets.items():
            with atomic_dir(target, force) as tmp:
                if fmt == "savedmodel":
                    write_savedmodel(model, class_names, size, tmp)
                    files = {"savedmodel": target}
                elif fmt == "tflite":
                    files = {variant: target / path.name for variant, path in export_tflite(
                        model, class_names, size, tmp, name, representative_pixels(folder, size)).items()}
                else:
                    files = {"onnx": target / export_onnx(model, class_names, size, tmp, name).name}
            log.info("exported %s to %s", fmt, target)
            exports.append(Export(name, version, fmt, target.relative_to(folder.path).as_posix(),
                                  {v: _file_entry(folder.path, p) for v, p in files.items()}, created))
        if check:
            from tlkit.predict import check_exports
            check_exports(folder, exports, model)
    finally:
        _record(folder, exports)
    return exports


def manifest_file(folder: RunFolder) -> Path:
    return folder.export_dir / "manifest.json"


def read_manifest(folder: RunFolder) -> list[dict]:
    path = manifest_file(folder)
    return json.loads(path.read_text()) if path.is_file() else []


def _record(folder: RunFolder, exports: list[Export]) -> None:
    """Add exports to the manifest (replacing entries for the same folder), written atomically."""
    if not exports:
        return
    new = {e.path: asdict(e) for e in exports}
    entries = [e for e in read_manifest(folder) if e["path"] not in new] + list(new.values())
    tmp = manifest_file(folder).with_suffix(".json.tmp")
    folder.write_json(tmp, entries)
    tmp.replace(manifest_file(folder))
