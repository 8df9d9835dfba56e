"""TFLite metadata (the schema of tflite-support and MediaPipe, ``metadata_schema.fbs``) written into a ``.tflite``
file, so MediaPipe Tasks, the Task Library and Model Maker read the labels, the normalisation and the threshold from
the model itself: the metadata flatbuffer in a model buffer named ``TFLITE_METADATA``, the labels file zipped onto
the end of the file (where those readers look for associated files).

Only the tables tlkit fills are built here, field by field, with their slot numbers in the schema."""
from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np

from tlkit.serving.signatures import LABELS_FILE, Confidence

METADATA_NAME = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.1"  # ScoreThresholdingOptions
_FEATURE, _IMAGE = 1, 2  # ContentProperties union
_NORMALIZATION, _THRESHOLDING = 1, 3  # ProcessUnitOptions union
_RGB, _AXIS_LABELS = 1, 2


class _Tables:
    """Flatbuffer tables bottom-up: each method returns the offset of what it built."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def table(self, fields: list[tuple[int, str, object]]) -> int:
        """A table of ``(slot, kind, value)``; kinds: offset (already built), float, uint, byte."""
        b = self.b
        b.StartObject(max(slot for slot, _, _ in fields) + 1)
        for slot, kind, value in fields:
            if value is None:
                continue
            {"offset": b.PrependUOffsetTRelativeSlot, "float": b.PrependFloat32Slot,
             "uint": b.PrependUint32Slot, "byte": b.PrependInt8Slot}[kind](slot, value, 0)
        return b.EndObject()

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def vector(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def floats(self, values) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, np.float32))

    def tensor(self, name: str, description: str, content: int, units: list[int] = (), stats: int | None = None,
               files: list[int] = ()) -> int:
        name, description = self.string(name), self.string(description)
        units = self.vector(list(units)) if units else None
        files = self.vector(list(files)) if files else None
        return self.table([(0, "offset", name), (1, "offset", description), (3, "offset", content),
                           (4, "offset", units), (5, "offset", stats), (6, "offset", files)])

    def content(self, kind: int, properties: int) -> int:
        return self.table([(0, "byte", kind), (1, "offset", properties)])

    def unit(self, kind: int, options: int) -> int:
        return self.table([(0, "byte", kind), (1, "offset", options)])

    def stats(self, low, high) -> int:
        high, low = self.floats(high), self.floats(low)
        return self.table([(0, "offset", high), (1, "offset", low)])


def metadata_buffer(name: str, description: str, size: int, output_names: list[str], class_names: list[str],
                    confidence: Confidence, version: str) -> bytes:
    """The ``ModelMetadata`` flatbuffer (file identifier ``M001``) of a tlkit classifier's TFLite file."""
    t = _Tables()
    outputs = []
    for output in output_names:  # in the subgraph's output order
        if output == "probabilities":
            labels = t.table([(0, "offset", t.string(LABELS_FILE)),
                              (1, "offset", t.string("class names in output order")), (2, "byte", _AXIS_LABELS)])
            units = []
            if confidence.score == "max_probability" and confidence.threshold is not None:
                units.append(t.unit(_THRESHOLDING, t.table([(0, "float", float(confidence.threshold))])))
            outputs.append(t.tensor("probabilities", f"calibrated probabilities of {len(class_names)} classes "
                                    f"(temperature {confidence.temperature:.4g} applied)",
                                    t.content(_FEATURE, t.table([(0, "offset", None)])), units,
                                    t.stats([0.0], [1.0]), [labels]))
        else:
            rule = ("always answered" if confidence.threshold is None else
                    f"answer '{confidence.unknown_label}' below {confidence.threshold:.6g}")
            outputs.append(t.tensor(output, f"confidence score ({confidence.score}): {rule}",
                                    t.content(_FEATURE, t.table([(0, "offset", None)]))))
    normalization = t.table([(0, "offset", t.floats([0.0])), (1, "offset", t.floats([1.0]))])
    image_size = t.table([(0, "uint", size), (1, "uint", size)])
    image = t.tensor("pixels", f"RGB image, {size}x{size}, raw 0-255 values (the model normalises inside)",
                     t.content(_IMAGE, t.table([(0, "byte", _RGB), (1, "offset", image_size)])),
                     [t.unit(_NORMALIZATION, normalization)], t.stats([0.0], [255.0]))
    inputs, outputs = t.vector([image]), t.vector(outputs)
    subgraph = t.table([(2, "offset", inputs), (3, "offset", outputs)])
    subgraphs = t.vector([subgraph])
    name, description, version = t.string(name), t.string(description), t.string(version)
    author, parser = t.string("tlkit"), t.string(MIN_PARSER_VERSION)
    root = t.table([(0, "offset", name), (1, "offset", description), (2, "offset", version),
                    (3, "offset", subgraphs), (4, "offset", author), (7, "offset", parser)])
    t.b.Finish(root, file_identifier=b"M001")
    return bytes(t.b.Output())


def with_metadata(model: bytes, metadata: bytes, files: dict[str, bytes]) -> bytes:
    """The TFLite flatbuffer ``model`` with ``metadata`` in a buffer named TFLITE_METADATA and ``files`` (name ->
    content) zipped onto its end."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if m.name != METADATA_NAME] + [entry]
    out = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(tree)))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def output_names(model: bytes) -> list[str]:
    """The names of the subgraph's outputs, in its order (a converted function keeps no names): the probabilities
    ``(N, classes)`` and the score ``(N,)``."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(model)).subgraphs[0]
    return [output_name(len(graph.tensors[i].shape)) for i in graph.outputs]


def output_name(rank: int) -> str:
    return "probabilities" if rank == 2 else "score"
