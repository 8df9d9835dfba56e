"""Image files and bytes to pixels, one definition for every command: Pillow decoding by content (EXIF
orientation applied, RGB out), the one resize shared with the exported model, and parallel batch decoding that
turns every failure into a listed reason."""
from __future__ import annotations

import functools
import io
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tlkit.ui import progress

DECODER_VERSION = 1  # bump when decoding changes what pixels a file gives: old decoded caches are then unused
DECODE_BATCH = 16  # images one thread decodes at a time (those of one shape are resized together)
LARGE_IMAGE = 2**20  # pixels; larger images are resized right after decoding, so memory in flight stays small


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
    same pixels as one by one, and faster), large ones right away so little memory is held."""
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


def decode_all(origins: list, size: int, what: str, payloads: Iterable[tuple[int, Path | bytes]] | None = None
               ) -> tuple[np.ndarray, list[tuple[Path | str, str]], np.ndarray]:
    """Decode files in parallel (or, given ``payloads``, the ``(position, bytes)`` a source yields for
    ``origins``): pixels of those that decoded, failures with reasons, and the ok mask."""
    images = np.zeros((len(origins), size, size, 3), np.uint8)
    ok = np.zeros(len(origins), bool)
    failures = []
    with progress(total=len(origins), desc=f"decode {what}", unit="img") as bar:
        for i, pixels, reason in decode_stream(enumerate(origins) if payloads is None else payloads, size):
            bar.update(1)
            if reason:
                failures.append((origins[i], reason))
            else:
                images[i], ok[i] = pixels, True
    return images[ok], failures, ok
