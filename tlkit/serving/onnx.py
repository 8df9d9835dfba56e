"""ONNX export through tf2onnx (the optional ``onnx`` extra): float32 pixels in, calibrated probabilities and the
confidence score out."""
from __future__ import annotations

import logging
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.serving.signatures import Confidence, pixel_function, write_labels

OPSET = 17


def onnx_missing() -> str | None:
    """Why ONNX export cannot run here, with the install command; None when it can."""
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        return f"ONNX export needs tf2onnx and onnxruntime ({error}); install them with: pip install 'tlkit[onnx]'"
    return None


def require_onnx() -> None:
    """Fail early, in one line, when the optional packages are missing."""
    missing = onnx_missing()
    if missing:
        raise TlkitError(missing)


def export_onnx(model, class_names: list[str], size: int, folder: Path, name: str, confidence: Confidence) -> Path:
    """Write ``NAME.onnx``, ``labels.txt`` and ``confidence.json`` into ``folder``."""
    require_onnx()
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    predict = pixel_function(model, size, confidence)
    path = folder / f"{name}.onnx"
    tf2onnx.convert.from_function(predict, input_signature=predict.input_signature, opset=OPSET,
                                  output_path=str(path))
    write_labels(folder, class_names, confidence)
    return path
